"""Small network helpers shared by validation, bootstraps and readiness."""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=65536)  # readiness asks about every pod IP on every status pass
def is_ip(host: str) -> bool:
    """Whether host is an IPv4 or IPv6 address literal (not a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
