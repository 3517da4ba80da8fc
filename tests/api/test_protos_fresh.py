"""The committed generated code matches protos/ (the API's one source of truth)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from xds_operator.api import build_protos


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The proto code generated now from protos/, by file name."""
    out = tmp_path_factory.mktemp("protos")
    return {path.name: path.read_bytes() for path in build_protos.generate(out)}


@pytest.mark.parametrize("name", build_protos.OUTPUTS)
def test_generated_code_is_fresh(regenerated: dict[str, bytes], name: str) -> None:
    committed_path = build_protos.TARGET_DIR / name
    committed = committed_path.read_bytes()
    fresh = regenerated[name]
    if committed != fresh:
        diff = "".join(
            difflib.unified_diff(
                committed.decode(errors="replace").splitlines(keepends=True),
                fresh.decode(errors="replace").splitlines(keepends=True),
                fromfile=f"committed {name}",
                tofile=f"generated from {build_protos.SOURCE}",
                n=1,
            )
        )
        pytest.fail(
            f"{Path(committed_path).relative_to(build_protos.REPO)} is stale: "
            f"{build_protos.SOURCE} changed without regenerating. "
            f"Run `make protos` and commit the result.\n{diff[:4000]}"
        )
