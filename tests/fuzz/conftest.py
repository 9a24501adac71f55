"""Fixtures of the fuzz suite: a service of its own (completions capped at 16 tokens, so
that valid generated requests stay fast) and the schemathesis schema."""
from __future__ import annotations

import pytest

from ..conftest import Service

FUZZ_MODEL_OPTIONS = "max_output_tokens = 16\n"


@pytest.fixture(scope="session")
def fuzz_service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("fuzz"), "fuzz", model_options=FUZZ_MODEL_OPTIONS).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def fuzz_schema():
    pytest.importorskip("schemathesis")
    from tools import fuzz

    return fuzz.load_schema()
