"""Builds carry the generated gRPC stubs: build_py runs tools/gen_stubs.py, so a wheel
(`pip wheel .`, `pip install .`) has genapi/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py.
They are generated into the build directory (build/lib/genapi/v1), never into the
checkout, whose stubs stay as build.sh made them. An editable install (`pip install -e
.`) is the checkout itself: there the stubs are generated beside the sources, and only
when they are missing or older than a proto. Everything else is in pyproject.toml;
grpcio-tools and mypy-protobuf are build-system requirements, not runtime ones."""
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        sys.path.insert(0, str(ROOT))
        from tools.gen_stubs import generate, is_stale

        if getattr(self, "editable_mode", False):
            if is_stale(ROOT):
                generate(ROOT)
        else:
            generate(ROOT, Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithStubs})
