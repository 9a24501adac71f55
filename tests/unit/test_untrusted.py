"""genapi.untrusted: the one helper that quotes client text in messages and log lines."""
from __future__ import annotations

import logging

import pytest

from genapi.untrusted import cap_utf8, clip


@pytest.mark.parametrize("value, shown", [
    ("plain name", "plain name"),
    ("a\nb", "a\\nb"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("back\\slash", "back\\\\slash"),
    ("nul\x00 esc\x1b del\x7f c1\x85", "nul\\x00 esc\\x1b del\\x7f c1\\x85"),
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
    ("lone\ud800", "lone\\ud800"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("emoji 😀 é 中", "emoji 😀 é 中"),
    (42, "42"),
    (None, "None"),
])
def test_clip_escapes(value, shown):
    assert clip(value) == shown


def test_clip_truncates_and_says_how_much():
    assert clip("x" * 300, 10) == "x" * 10 + "...(+290 chars)"
    assert clip("x" * 10, 10) == "x" * 10


def test_clip_is_bounded_whatever_the_input():
    worst = "\U000e0041" * 100_000
    assert len(clip(worst, 256)) <= 10 * 256 + 24
    assert clip(10 ** 5000).startswith("<a int")


def test_one_value_is_one_log_line(caplog):
    forged = "m\n2026-01-01 00:00:00 INFO [genapi.core] admin logged in\r\u2028x"
    with caplog.at_level(logging.INFO, logger="genapi.test"):
        logging.getLogger("genapi.test").info("request %s model=%s", clip("r"), clip(forged))
    (record,) = caplog.records
    assert len(record.getMessage().splitlines()) == 1


@pytest.mark.parametrize("text", ["a" * 5000, "é" * 5000, "😀" * 5000, "short"])
def test_cap_utf8(text):
    out = cap_utf8(text, 1024)
    assert len(out.encode("utf-8")) <= 1024
    assert out == text if len(text.encode("utf-8")) <= 1024 else out.endswith("...")
