"""Connecting to the Kubernetes API: in-cluster config, or a kubeconfig outside a cluster."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


class NoKubernetesConfig(Exception):
    pass


def api_client(kubeconfig: Path | None = None, connections: int = 8) -> client.ApiClient:
    """An ApiClient for the cluster: --kubeconfig, else in-cluster, else $KUBECONFIG or ~/.kube/config.

    `connections` sizes the HTTP pool: every watch holds one connection open.
    """
    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None, client_configuration=configuration
            )
    except (ConfigException, OSError) as error:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config, $KUBECONFIG or ~/.kube/config"
        raise NoKubernetesConfig(
            f"cannot load Kubernetes credentials from {where}: {error}. "
            "Run inside a cluster, pass --kubeconfig FILE, or serve files with --dir DIR."
        ) from error
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, connections)
    return client.ApiClient(configuration)
