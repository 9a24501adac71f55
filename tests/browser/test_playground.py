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


# --- View code -------------------------------------------------------------------------

def run_snippet(args: list[str], code: str, env_key: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GENAPI_API_KEY", "OPENAI_API_KEY")}
    if env_key is not None:
        env["GENAPI_API_KEY"] = env_key
    out = subprocess.run([*args], input=code, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, f"{args} failed:\n{code}\n--- stderr:\n{out.stderr}"
    return out.stdout


def open_code(page, language: str) -> str:
    """Opens View code on `language`'s tab, copies the snippet; returns the clipboard."""
    if not page.locator("#code-dialog[open]").count():
        page.click("#view-code")
    page.get_by_role("tab", name=language).click()
    page.click("#copy-code")
    page.wait_for_selector("#copy-status:has-text('Copied.')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#code").inner_text()
    return copied


def test_view_code_snippets_run_with_the_page_settings(service, open_page):
    page = open_page(service)
    page.select_option("#model", MODEL_B)
    set_field(page, "temperature", "0.7")
    set_field(page, "max_tokens", "12")
    set_field(page, "seed", "42")
    set_field(page, "stop", "zzz-never")
    page.click(".system-prompt summary")
    set_field(page, "system", 'Answer "briefly".')
    page.fill("#prompt", "Name a fruit.")  # the draft is the snippet's last message

    python = open_code(page, "Python")
    base_url = f"{service.base_url}/v1"
    for expected in (f'base_url="{base_url}"', 'api_key=os.environ.get("GENAPI_API_KEY", "unused")',
                     f'model="{MODEL_B}"', "temperature=0.7", "max_tokens=12", "seed=42", 'stop=["zzz-never"]',
                     '{"role": "system", "content": "Answer \\"briefly\\"."}',
                     '{"role": "user", "content": "Name a fruit."}', "stream=True"):
        assert expected in python, (expected, python)
    for default in ("top_p", "presence_penalty", "frequency_penalty", "response_format"):
        assert default not in python
    node = open_code(page, "Node.js")
    assert f'baseURL: "{base_url}"' in node and "temperature: 0.7" in node and "max_tokens: 12" in node
    curl = open_code(page, "curl")
    langchain = open_code(page, "LangChain")
    assert "ChatOpenAI(" in langchain and "temperature=0.7" in langchain and "seed=42" in langchain
    page.click("#code-close")

    # The page's own answer to the same request...
    page.press("#prompt", "Enter")
    last_answer(page)
    answer = page.evaluate("playground.request().messages.at(-1)")
    assert answer["role"] == "assistant" and answer["content"]
    # ...is what each snippet gets (seeded sampling: the same settings give the same text).
    assert run_snippet([sys.executable, "-"], python) == answer["content"] + "\n"
    assert run_snippet([sys.executable, "-"], langchain) == answer["content"] + "\n"
    reply = json.loads(run_snippet(["bash"], curl, env_key=""))
    assert reply["model"] == MODEL_B and reply["choices"][0]["message"]["content"] == answer["content"]
    assert reply["usage"]["completion_tokens"] <= 12
    node_check = subprocess.run(["node", "--check", "--input-type=module"], input=node, capture_output=True,
                                text=True, timeout=60)
    assert node_check.returncode == 0, node_check.stderr


def test_view_code_follows_the_conversation_and_json_schema(service, open_page):
    page = open_page(service)
    page.evaluate("""playground.loadConversation([
        {role: 'user', content: 'Hi'}, {role: 'assistant', content: "It's me"}])""")
    page.select_option("#response_format", "json_schema")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    set_field(page, "json_schema", json.dumps(schema))
    python = open_code(page, "Python")
    assert '{"role": "assistant", "content": "It\'s me"}' in python
    assert '"additionalProperties": False' in python and '"strict": True' in python
    curl = open_code(page, "curl")
    assert "It'\\''s me" in curl  # the quote survives the shell's single quotes
    body = page.evaluate("playground.request()")
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "playground", "strict": True, "schema": schema}}
