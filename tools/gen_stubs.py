"""Generates the Python gRPC stubs (genapi/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) from
protos/genapi/v1/*.proto with grpcio-tools' protoc and mypy-protobuf's protoc-gen-mypy,
both build-time dependencies only. Used by build.sh (when a proto or this file changed)
and by setup.py (into the build directory, so a built wheel carries the stubs).

The .pyi type stubs come from mypy-protobuf rather than protoc's own --pyi_out: that one
writes a field's type by its bare builtin name, so a field named like a builtin
(`TopLogprob.bytes`, `bytes bytes = 3`) shadows it inside its class and the stub is
invalid for mypy and pyright; mypy-protobuf writes `builtins.bytes`.

    python -m tools.gen_stubs [--if-stale] [ROOT [OUT]]

ROOT holds protos/ (default: this repository); OUT is where genapi/v1/ is written
(default: ROOT). --if-stale does nothing when every stub is newer than its proto and
this file.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def protos_of(root: Path) -> list[Path]:
    """The .proto files under root/protos/genapi/v1, sorted."""
    return sorted((root / "protos").glob("genapi/v1/*.proto"))


def stubs_of(out: Path) -> list[Path]:
    """The generated stubs present under out/genapi/v1."""
    v1 = out / "genapi" / "v1"
    return sorted(p for suffix in SUFFIXES for p in v1.glob(f"*{suffix}"))


def is_stale(root: Path = ROOT, out: Path | None = None) -> bool:
    """True when a stub under `out` (default root) is missing, older than its proto or
    than this generator, or left over from a removed proto."""
    out = out or root
    protos = protos_of(root)
    names = {p.stem for p in protos}
    inputs = [Path(__file__).resolve()]
    for proto in protos:
        for suffix in SUFFIXES:
            stub = out / "genapi" / "v1" / f"{proto.stem}{suffix}"
            if not stub.is_file() or any(stub.stat().st_mtime < p.stat().st_mtime for p in (proto, *inputs)):
                return True
    return any(proto_stem(stub) not in names for stub in stubs_of(out))


def proto_stem(stub: Path) -> str:
    """`generation_service` for generation_service_pb2.py, _pb2.pyi or _pb2_grpc.py."""
    return next(stub.name.removesuffix(s) for s in SUFFIXES if stub.name.endswith(s))


def mypy_plugin() -> str:
    """Path of protoc-gen-mypy (mypy-protobuf): on PATH or beside this interpreter.
    Raises RuntimeError naming the package when it is not installed."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("protoc-gen-mypy", path=search)
    if not found:
        raise RuntimeError("protoc-gen-mypy not found: pip install mypy-protobuf (the .pyi type stubs need it)")
    return found


def generate(root: Path = ROOT, out: Path | None = None) -> list[Path]:
    """Regenerates every stub from scratch under `out` (default root; out/genapi/v1 must
    exist); returns the proto files. Raises RuntimeError when there are no protos, when
    protoc-gen-mypy is missing, or when protoc fails (its message is on stderr)."""
    import grpc_tools
    from grpc_tools import protoc

    out = out or root
    proto_root = root / "protos"
    protos = protos_of(root)
    if not protos:
        raise RuntimeError(f"no .proto files in {proto_root / 'genapi/v1'}")
    plugin = mypy_plugin()
    for old in stubs_of(out):
        old.unlink()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_root}", f"-I{well_known}", f"--plugin=protoc-gen-mypy={plugin}",
            f"--python_out={out}", f"--mypy_out={out}", "--mypy_opt=quiet", f"--grpc_python_out={out}", *map(str, protos)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return protos


def main(argv: list[str]) -> int:
    if_stale = "--if-stale" in argv
    paths = [Path(a).resolve() for a in argv if a != "--if-stale"]
    root = paths[0] if paths else ROOT
    out = paths[1] if len(paths) > 1 else root
    if if_stale and not is_stale(root, out):
        print("[build] gRPC stubs up to date")
        return 0
    done = generate(root, out)
    print(f"[build] generated gRPC stubs from {len(done)} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
