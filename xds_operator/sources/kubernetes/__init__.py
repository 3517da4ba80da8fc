"""Kubernetes mode: VirtualService and Pod watches, proxy identity from pods, leader election."""
