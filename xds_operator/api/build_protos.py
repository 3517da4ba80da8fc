"""Compile protos/ into xds_operator/api/ with grpcio-tools (`make protos`).

Our proto imports only google/protobuf/descriptor.proto, so the generated module can live
inside our package without a top-level `servicemesh` import package.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
SOURCE = "servicemesh/v1/virtualservice.proto"
TARGET_DIR = Path(__file__).resolve().parent
OUTPUTS = ("virtualservice_pb2.py", "virtualservice_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Compile the API proto into out_dir; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}", SOURCE]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {SOURCE}")
        generated = Path(tmp) / "servicemesh" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            shutil.copyfile(generated / name, out_dir / name)
    return [out_dir / name for name in OUTPUTS]


def main() -> int:
    for path in generate(TARGET_DIR):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
