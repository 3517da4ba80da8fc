"""What each VirtualService's status says: proxies' progress, readiness, conditions, replicas' reports."""
