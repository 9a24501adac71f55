"""The Python stubs work outside the repository: a wheel built from a copy of the
sources (as `pip install .` builds it) carries genapi/v1/*_pb2.py, *_pb2_grpc.py and the
*_pb2.pyi type stubs with genapi/py.typed (PEP 561, so type checkers read them), and
installed on its own it imports genapi.v1 from the install, not from this tree."""
from __future__ import annotations

import os
import shutil
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


def test_installed_wheel_imports_genapi_v1_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = ("import genapi.v1, genapi.v1.generation_service_pb2 as pb, genapi.v1.generation_service_pb2_grpc as g;"
             "print(genapi.v1.__file__); print(pb.GenerateRequest(model='m').model, g.GenerationServiceStub.__name__)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    location, values = r.stdout.splitlines()
    assert Path(location).is_relative_to(target)
    assert values == "m GenerationServiceStub"
