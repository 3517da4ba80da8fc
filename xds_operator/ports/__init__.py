"""Listener ports the control plane assigns (serve --listener-ports): the assigner and directory mode's state file."""
