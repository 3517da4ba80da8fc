"""Builders for the pure status tests: a pod as the pod index reads it, and conditions by type."""

from __future__ import annotations


def pod(name, labels, ip="10.0.0.1", ready=True, namespace="media", uid=None, terminating=False):
    metadata = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "labels": labels}
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def conditions(status):
    return {c["type"]: c for c in status["conditions"]}
