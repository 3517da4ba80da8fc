"""The local demo (`python -m xds_operator.demo`): a real Envoy, echo workers, the control plane."""
