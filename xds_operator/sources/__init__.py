"""Where VirtualServices come from: a directory of files, or the Kubernetes API."""
