"""The benchmark smoke tests import bench/*.py as top-level modules, and run one at a time.

bench/calls.py and bench/calls_kube.py take UDP ports in order from fixed ranges below the kernel's
ephemeral range (tests/support/ports.py's ports come from inside it), and every smoke test puts a
burst of load on the machine: under pytest-xdist (`--dist loadgroup`) they all go to one worker.
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
