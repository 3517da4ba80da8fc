"""The Kubernetes side: VirtualService and Pod watches, proxy identity from pods, status."""
