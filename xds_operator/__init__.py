"""xds-operator: an Envoy xDS control plane for UDP VirtualServices."""

__version__ = "0.1.0"
