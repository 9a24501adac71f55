"""The Python stubs work outside the repository: a wheel built from a copy of the
sources (as `pip install .` builds it) carries genapi/v1/*_pb2.py, *_pb2_grpc.py and the
*_pb2.pyi type stubs with genapi/py.typed (PEP 561, so type checkers read them); installed
on its own it imports genapi.v1 from the install, not from this tree, and code using the
stubs passes mypy (a field named like a builtin, `TopLogprob.bytes`, does not shadow it).
`pip wheel .` in this checkout leaves the checkout's own stubs as they were."""
from __future__ import annotations

import os
import shutil
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What an sdist holds (MANIFEST.in, packages in pyproject.toml): enough to build the wheel.
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "ARCHITECTURE.md", "genapi", "server", "shim", "protos",
           "tools/__init__.py", "tools/gen_stubs.py"]
PROTOS = sorted(p.stem for p in (ROOT / "protos" / "genapi" / "v1").glob("*.proto"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built with this venv's setuptools and grpcio-tools (no isolated build env: no
    download), from a copy, so the build cannot touch this tree's stubs."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    skip = shutil.ignore_patterns("__pycache__", "*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*.egg-info")
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    [built] = out.glob("genapi-*.whl")
    return built


def test_wheel_carries_the_stubs_and_their_type_stubs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "genapi/py.typed" in names
    for stem in PROTOS:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"genapi/v1/{stem}{suffix}" in names, f"{stem}{suffix} missing from {wheel.name}"
    assert not any(n.startswith(("tools/", "tests/", "protos/")) for n in names)
    assert {"shim/playground/index.html", "shim/playground/js/main.js"} <= names  # the playground's page


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed on its own into a target folder (PYTHONPATH for it)."""
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return target


def test_installed_wheel_imports_genapi_v1_outside_the_repository(installed, tmp_path):
    probe = ("import genapi.v1, genapi.v1.generation_service_pb2 as pb, genapi.v1.generation_service_pb2_grpc as g;"
             "print(genapi.v1.__file__); print(pb.GenerateRequest(model='m').model, g.GenerationServiceStub.__name__)")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    location, values = r.stdout.splitlines()
    assert Path(location).is_relative_to(installed)
    assert values == "m GenerationServiceStub"


# Uses the fields named like builtins (TopLogprob.bytes is `bytes bytes = 3`, File.bytes
# a uint64), a message imported publicly (ChatMessage through generation_service) and an
# enum; the last line is a type error that mypy must report, so the stubs were read.
TYPED_PROBE = """\
from genapi.v1 import content_pb2, file_service_pb2, generation_service_pb2 as pb

top = pb.TopLogprob(token="a", logprob=-0.5, bytes=b"a")
raw: bytes = top.bytes
size: int = file_service_pb2.File(id="file-1", bytes=3).bytes
message = pb.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hi")])
role: int = message.role
wrong: str = top.bytes
"""


def test_installed_type_stubs_pass_mypy(installed, tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev extra (./build.sh installs it)")
    (tmp_path / "probe.py").write_text(TYPED_PROBE)
    env = {**os.environ, "MYPYPATH": str(installed)}
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                        "probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("probe.py:8: error: Incompatible types in assignment"), r.stdout


def stub_state(folder: Path) -> dict[str, tuple[int, str]]:
    """{file name: (mtime in ns, sha256)} of the generated stubs in `folder`."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.glob("*_pb2*.py*"))}


def test_pip_wheel_in_the_checkout_leaves_its_stubs_alone(tmp_path):
    """`pip wheel .` here generates the wheel's stubs in the build directory: the
    checkout's genapi/v1 stubs keep their bytes and their mtimes."""
    v1 = ROOT / "genapi" / "v1"
    before = stub_state(v1)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stub_state(v1) == before
    [built] = tmp_path.glob("genapi-*.whl")
    assert {f"genapi/v1/{stem}_pb2.pyi" for stem in PROTOS} <= set(zipfile.ZipFile(built).namelist())
