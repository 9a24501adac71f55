"""Generates the Python gRPC stubs (genapi/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) from
protos/genapi/v1/*.proto with grpcio-tools, a build-time dependency only. Used by
build.sh (when a proto changed) and by setup.py (so a built wheel carries the stubs).

    python -m tools.gen_stubs [ROOT]
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(root: Path = ROOT) -> list[Path]:
    """Regenerates every stub from scratch; returns the proto files. Raises RuntimeError
    when protoc fails (its message is on stderr)."""
    import grpc_tools
    from grpc_tools import protoc

    proto_root = root / "protos"
    protos = sorted(proto_root.glob("genapi/v1/*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files in {proto_root / 'genapi/v1'}")
    out = root / "genapi" / "v1"
    for old in [*out.glob("*_pb2.py"), *out.glob("*_pb2.pyi"), *out.glob("*_pb2_grpc.py")]:
        old.unlink()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={root}", f"--pyi_out={root}",
            f"--grpc_python_out={root}", *map(str, protos)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return protos


if __name__ == "__main__":
    done = generate(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    print(f"[build] generated gRPC stubs from {len(done)} protos")
