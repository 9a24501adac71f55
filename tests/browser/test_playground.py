"""The playground in a real browser (headless Debian chromium, Playwright) against the
real `genapi serve`: streamed answers with their token and timing line, settings that reach
the API, View code snippets that run, stop, errors in the conversation, inert markdown, and
a narrow screen. The key prompt is in test_playground_keys.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ..conftest import MODEL, TINY_MODEL, Service, wait_until
from .page_support import last_answer, open_code, run_snippet, send, set_field

MODEL_B = "genapi-tiny-chat-b"
EOS = 2  # <|im_end|> of the tiny model: banned with logit_bias, an answer runs to max_tokens
NO_EOS = json.dumps({str(EOS): -100})
FAIL = "fault-fail"  # reliability fault injection: the engine raises after 3 events
EXTRA_MODELS = f"""
    [[models]]
    name = "{MODEL_B}"
    path = "{TINY_MODEL}"
    [models.options]
    max_batch = 8
    [[models]]
    name = "{FAIL}"
    path = "{TINY_MODEL}"
    [models.options]
    max_batch = 4
    [models.options.fault]
    fail_after_events = 3
    """


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("playground"), "playground", model_options=EXTRA_MODELS).start()
    yield svc
    svc.stop()


# --- chat ------------------------------------------------------------------------------

def test_streamed_answer_with_token_and_timing_line(service, open_page, artifacts):
    page = open_page(service)
    assert page.locator("#model option").all_inner_texts() == [MODEL, MODEL_B, FAIL]
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

def test_view_code_snippets_run_with_the_page_settings(service, open_page, artifacts):
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
    page.screenshot(path=f"{artifacts}/playground-view-code.png")
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
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        page.press("#prompt", "Enter")
    assert json.loads(info.value.post_data)["model"] == MODEL_B
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


# --- stop, regenerate, clear -----------------------------------------------------------------

@pytest.fixture
def engine_stats(service):
    """Reads the default model's live engine counters (AdminService.GetEngineStats)."""
    import grpc

    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(service.grpc_target)
    stub = pb_grpc.AdminServiceStub(channel)
    yield lambda: stub.GetEngineStats(pb.GetEngineStatsRequest(model=MODEL)).engines[0]
    channel.close()


def test_stop_mid_stream_frees_the_sequence(service, open_page, engine_stats):
    assert wait_until(lambda: engine_stats().active_sequences == 0, 10)
    page = open_page(service)
    set_field(page, "max_tokens", "1500")  # ~7 s of decoding: far longer than the test waits
    set_field(page, "logit_bias", NO_EOS)
    send(page, "Tell me a long story.")
    page.wait_for_function("() => document.querySelector('.msg.assistant .content')?.textContent.length > 0")
    assert engine_stats().active_sequences == 1
    page.click("#stop-answer")
    page.wait_for_selector("#send:not([hidden])")
    assert wait_until(lambda: engine_stats().active_sequences == 0, 5), engine_stats()
    answer = page.locator(".msg.assistant").last
    request_id = answer.get_attribute("data-request-id")
    assert request_id and wait_until(lambda: f"request {request_id} cancelled by the client" in service.log(), 5)
    stats = answer.locator(".stats")
    assert stats.inner_text().endswith("stopped") and stats.get_attribute("data-finish") is None
    assert answer.locator(".content").inner_text().strip()  # the partial answer stays
    assert page.locator(".msg.error").count() == 0


def test_regenerate_and_clear(service, open_page):
    page = open_page(service)
    set_field(page, "seed", "7")
    set_field(page, "max_tokens", "10")
    send(page, "Hello there")
    first, _ = last_answer(page)
    page.click("#regenerate")
    second, _ = last_answer(page)
    assert page.locator(".msg.assistant").count() == 1 and page.locator(".msg.user").count() == 1
    assert second == first  # same seed, same request
    turns = page.evaluate("playground.request().messages")
    assert [t["role"] for t in turns] == ["user", "assistant"]
    page.click("#clear")
    assert page.locator(".msg").count() == 0 and page.locator("#suggestions").is_visible()
    assert page.evaluate("playground.request().messages") == []
    page.locator(".suggestion").first.click()  # a suggested prompt is sent as it is
    last_answer(page)
    assert page.locator(".msg.user .content").inner_text() == page.locator(".suggestion").first.inner_text()


def test_shift_enter_is_a_new_line_enter_sends(service, open_page):
    page = open_page(service)
    set_field(page, "max_tokens", "4")
    page.click("#prompt")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#prompt") == "line one\nline two" and page.locator(".msg").count() == 0
    page.keyboard.press("Enter")
    last_answer(page)
    assert page.locator(".msg.user .content").inner_text() == "line one\nline two"
    assert page.input_value("#prompt") == ""


# --- errors ----------------------------------------------------------------------------

def test_api_errors_are_shown_in_the_conversation(service, open_page):
    page = open_page(service)
    page.select_option("#response_format", "json_schema")
    set_field(page, "json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "nonsense"}}}))
    send(page, "Hi")
    error = page.locator(".msg.error").last
    error.wait_for()
    message = error.locator(".content").inner_text()
    assert message.startswith("400: ") and "schema" in message, message
    assert page.locator(".msg.assistant").count() == 0  # nothing answered: only the error
    page.wait_for_selector("#send:not([hidden])")

    page.select_option("#response_format", "text")
    set_field(page, "max_tokens", "100000000")  # beyond the context
    send(page, "Hi again")
    page.wait_for_function("() => document.querySelectorAll('.msg.error').length === 2")
    message = page.locator(".msg.error .content").last.inner_text()
    assert message.startswith("400: ") and "context" in message, message


def test_a_mid_stream_error_follows_the_partial_answer(service, open_page):
    page = open_page(service)
    page.select_option("#model", FAIL)
    set_field(page, "logit_bias", NO_EOS)
    send(page, "Tell me a story about the sea.")
    text, stats = last_answer(page)
    error = page.locator(".msg.error")
    assert error.count() == 1
    assert error.locator(".content").inner_text() == "The stream failed after it started: internal error"
    assert error.get_attribute("role") == "alert"
    # The answer streamed so far stays, above the error, and is part of the conversation.
    assert text.strip() and page.locator(".msg").nth(1).get_attribute("class") == "msg assistant"
    assert page.locator(".msg").nth(2).get_attribute("class") == "msg error"
    assert stats.get_attribute("data-finish") is None
    assert [m["role"] for m in page.evaluate("playground.request().messages")] == ["user", "assistant"]


def test_invalid_settings_are_refused_in_the_page(service, open_page):
    page = open_page(service)
    set_field(page, "temperature", "5")
    set_field(page, "logit_bias", "{not json")
    assert page.locator("#temperature-error").inner_text() == "Must be between 0 and 2."
    assert page.locator("#logit_bias-error").inner_text().startswith("Not valid JSON")
    assert page.get_attribute("#temperature", "aria-invalid") == "true"
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/chat/completions" in r.url else None)
    send(page, "Hi")
    page.locator(".msg.error").wait_for()
    assert "Fix the settings" in page.locator(".msg.error").inner_text()
    assert sent == []  # refused before any request
    page.click("#reset-settings")
    assert page.input_value("#temperature") == "1" and page.input_value("#logit_bias") == ""
    assert page.locator("#temperature-error").inner_text() == "" and page.get_attribute("#temperature", "aria-invalid") == "false"
    assert set(page.evaluate("playground.request()")) == {"model", "messages"}


# --- untrusted markdown ------------------------------------------------------------------

XSS = """**Bold** and `code`.

Image: <img src=x onerror="window.__xss = 'img'"> and ![alt](javascript:window.__xss='md-img')

A [markdown link](javascript:window.__xss='md-link') and <a href="javascript:window.__xss='a'">a raw link</a>.

<script>window.__xss = 'script'</script><svg onload="window.__xss = 'svg'"></svg>
<iframe src="javascript:window.__xss = 'iframe'"></iframe><p onclick="window.__xss='click'">click me</p>
"""


def test_markdown_of_an_answer_renders_inert(service, open_page):
    page = open_page(service)
    assert page.get_attribute("body", "data-markdown") == "on"
    # The page's CSP would block what the sanitizer let through, and say so: it must not
    # have to (DOMPurify alone makes the answer inert).
    page.evaluate("""() => { window.__csp = [];
        document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective)); }""")
    page.evaluate("(xss) => playground.loadConversation([{role: 'user', content: 'Hi'},"
                  " {role: 'assistant', content: xss}])", XSS)
    content = page.locator(".msg.assistant .content")
    assert content.locator("strong").inner_text() == "Bold" and content.locator("code").inner_text() == "code"
    page.wait_for_function("() => [...document.querySelectorAll('.msg.assistant img')].every(i => i.complete)")
    for link in content.locator("a").all():
        link.click()
    content.locator("p", has_text="click me").click()
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("window.__csp") == []
    dom = page.evaluate("""() => [...document.querySelectorAll('.msg.assistant .content *')].map(e => ({
        tag: e.tagName, attrs: [...e.attributes].map(a => [a.name, a.value])}))""")
    tags = {e["tag"] for e in dom}
    assert not tags & {"SCRIPT", "SVG", "svg", "IFRAME"}, tags
    for e in dom:
        for name, value in e["attrs"]:
            assert not name.startswith("on") and "javascript:" not in value.lower(), e
    # The second wall: markup put in the page unsanitized still runs no script (the CSP
    # blocks the inline handler, and reports it).
    page.evaluate("""() => { const d = document.createElement('div');
        d.innerHTML = '<img src="data:," onerror="window.__xss = 1">'; document.body.append(d); }""")
    page.wait_for_function("() => window.__csp.length > 0")
    assert page.evaluate("window.__xss") is None and "script-src" in page.evaluate("window.__csp")[0]
    # The same sanitizer, through the page's API, as a string.
    html = page.evaluate("(xss) => playground.renderMarkdown(xss)", XSS)
    assert "<strong>Bold</strong>" in html and "onerror" not in html and "javascript:" not in html


def test_user_text_and_reasoning_are_never_markup(service, open_page):
    page = open_page(service)
    page.evaluate("""() => playground.loadConversation([
        {role: 'user', content: '<b>not bold</b>'},
        {role: 'assistant', content: 'The answer.', reasoning: 'First <i>think</i>.'}])""")
    assert page.locator(".msg.user .content").inner_text() == "<b>not bold</b>"
    reasoning = page.locator(".msg.assistant details.reasoning")
    assert reasoning.is_visible() and reasoning.get_attribute("open") is None  # folded away
    assert reasoning.locator(".reasoning-text").text_content() == "First <i>think</i>."
    assert not reasoning.locator(".reasoning-text").is_visible()
    reasoning.locator("summary").click()
    assert reasoning.locator(".reasoning-text").is_visible()
    assert page.locator(".msg.assistant .content").inner_text() == "The answer."


# --- narrow screens and labels ----------------------------------------------------------------

def test_every_control_is_labelled(service, open_page):
    page = open_page(service)
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unlabelled == []


def test_narrow_screen(service, open_page, artifacts):
    page = open_page(service, width=390, height=780)
    assert not page.locator("#settings").is_visible()
    assert page.locator("#prompt").is_visible() and page.locator("#send").is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width  # nothing forces a horizontal scroll
    page.click("#settings-toggle")
    assert page.get_attribute("#settings-toggle", "aria-expanded") == "true"
    set_field(page, "max_tokens", "16")
    page.screenshot(path=f"{artifacts}/playground-narrow-settings.png")
    page.click("#settings-toggle")
    assert not page.locator("#settings").is_visible()
    send(page, "Hello from a phone")
    text, stats = last_answer(page)
    assert text.strip() and int(stats.get_attribute("data-tokens")) <= 16
    page.screenshot(path=f"{artifacts}/playground-narrow.png")
