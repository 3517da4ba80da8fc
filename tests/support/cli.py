"""The command line in process, as the command tests drive it."""

from __future__ import annotations

import pytest

from tests.support.paths import SAMPLES_DIR
from xds_operator.cli import main

SAMPLES = sorted(SAMPLES_DIR.glob("*.yaml"))  # config/samples' VirtualService files


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: --help, usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err
