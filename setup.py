"""Builds carry the generated gRPC stubs: build_py runs tools/gen_stubs.py first, so a
wheel (or an editable install) has genapi/v1/*_pb2*.py. Everything else is in
pyproject.toml; grpcio-tools is a build-system requirement, not a runtime one."""
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    def run(self):
        sys.path.insert(0, str(ROOT))
        from tools.gen_stubs import generate

        generate(ROOT)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
