"""The benchmark smoke tests import bench/*.py as top-level modules, and run one at a time.

Each smoke test puts a burst of load on the machine: under pytest-xdist (`--dist loadgroup`) they all go
to one worker. Their ports come from tests/support/ports.py (bench/harness.py picks them there), so they
never meet a port another test of this process handed out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import import_bench

import_bench()

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("bench"))
