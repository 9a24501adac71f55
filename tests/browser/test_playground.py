"""The playground in a real browser (headless Debian chromium, Playwright) against the
real `genapi serve`: streamed answers with their token and timing line, settings that reach
the API, View code snippets that run, stop, errors in the conversation, inert markdown, and
a narrow screen. The key prompt is in test_playground_keys.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from ..conftest import MODEL, ROOT, TINY_MODEL, Service, wait_until

MODEL_B = "genapi-tiny-chat-b"
EOS = 2  # <|im_end|> of the tiny model: banned with logit_bias, an answer runs to max_tokens
NO_EOS = json.dumps({str(EOS): -100})
SECOND_MODEL = f"""
    [[models]]
    name = "{MODEL_B}"
    path = "{TINY_MODEL}"
    [models.options]
    max_batch = 8
    """


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("playground"), "playground", model_options=SECOND_MODEL).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Where screenshots go: $GENAPI_ARTIFACTS when set (CI keeps it), else a tmp dir."""
    path = os.environ.get("GENAPI_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("artifacts")


def set_field(page, name: str, value: str):
    page.fill(f"#{name}", value)


def send(page, text: str):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_answer(page, timeout_ms: int = 60_000):
    """Waits for the last answer to finish; returns (text, stats element)."""
    page.wait_for_selector("#send:not([hidden])", timeout=timeout_ms)
    answer = page.locator(".msg.assistant").last
    return answer.locator(".content").inner_text(), answer.locator(".stats")


# --- chat ------------------------------------------------------------------------------

def test_streamed_answer_with_token_and_timing_line(service, open_page, artifacts):
    page = open_page(service)
    assert page.locator("#model option").all_inner_texts() == [MODEL, MODEL_B]
    set_field(page, "max_tokens", "48")
    set_field(page, "logit_bias", NO_EOS)
    # Every repaint of the answer while it streams: the text must grow in several steps.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const c = document.querySelector('.msg.assistant .content');
            if (c) window.__lengths.push(c.textContent.length);
        }).observe(document.getElementById('conversation'), {subtree: true, childList: true, characterData: true});
    }""")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        send(page, "Tell me about harbours.")
    resp = info.value
    assert resp.headers["content-type"].startswith("text/event-stream")
    body = json.loads(resp.request.post_data)
    assert body["stream"] is True and body["max_tokens"] == 48 and body["logit_bias"] == {str(EOS): -100}
    assert "temperature" not in body  # defaults are left to the API

    text, stats = last_answer(page)
    assert text.strip()
    assert stats.get_attribute("data-tokens") == "48"
    assert stats.get_attribute("data-finish") == "length"
    line = stats.inner_text()
    assert re.fullmatch(r"48 tokens · TTFT \d+ ms · \d+\.\d tokens/s · finish: length", line), line
    lengths = [n for n in page.evaluate("window.__lengths") if n]
    assert len(set(lengths)) >= 2 and lengths == sorted(lengths), lengths
    assert page.locator(".msg.user .content").inner_text() == "Tell me about harbours."
    page.screenshot(path=f"{artifacts}/playground-answer.png", full_page=True)
