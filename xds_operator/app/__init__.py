"""The running process: the composition root that builds the control plane, and shutdown."""
