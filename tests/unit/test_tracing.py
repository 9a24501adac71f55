"""Trace context and log formats without servers: traceparent parsing on both tiers, the
shim continuing a caller's trace, log lines carrying request and trace ids (text, JSON)."""
from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from genapi import logs
from genapi.traceparent import parse_traceparent
from shim.tracing import continue_trace

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("value, expected", [
    (GOOD, ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
    ("garbage", None), ("", None), (None, None),
    (GOOD.upper(), None),  # hex is lowercase
    (GOOD + "-extra", None),  # version 00 has nothing after its flags
    # A later version's first four fields are read as version 00's; what follows a `-` is skipped.
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")),
    ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds",
     ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")),
    ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xyz", None),
])
def test_traceparent_parsing(value, expected):
    assert parse_traceparent(value) == expected


def test_the_shim_continues_the_callers_trace_with_a_span_of_its_own():
    trace_id, sent = continue_trace(GOOD)
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parse_traceparent(sent)[0] == trace_id and parse_traceparent(sent)[1] != "00f067aa0ba902b7"
    new_id, new = continue_trace("not-a-traceparent")
    assert len(new_id) == 32 and parse_traceparent(new) == (new_id, new[36:52], "01")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_carry_the_request_and_trace_ids(fmt):
    logger = logging.getLogger(f"genapi.test.{fmt}")
    logger.propagate = False
    logs.setup("INFO", fmt, lambda: {"request_id": "req-1", "trace_id": "ab" * 16}, logger=logger)
    stream = io.StringIO()
    logger.handlers[0].stream = stream
    logger.info("hello %s", "world")
    logger.info("POST / 200", extra={"access": {"method": "POST", "status": 200}})
    first, second = stream.getvalue().splitlines()
    if fmt == "json":
        a, b = json.loads(first), json.loads(second)
        assert (a["message"], a["request_id"], a["trace_id"], a["level"]) == ("hello world", "req-1", "ab" * 16, "info")
        assert (b["method"], b["status"], b["trace_id"]) == ("POST", 200, "ab" * 16) and "message" not in b
    else:
        assert first.endswith("hello world request_id=req-1 trace_id=" + "ab" * 16)


def test_otlp_export_without_the_extra_names_it(monkeypatch):
    """OpenTelemetry is an optional extra: without it (hidden here), the error names it."""
    from server.tracing import otel_tracer
    for name in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.sdk.trace"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of a None entry raises ImportError
    with pytest.raises(ImportError, match=r"genapi\[otel\]"):
        otel_tracer("http://127.0.0.1:4317")
