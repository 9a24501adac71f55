"""The playground of a service with API keys: the page loads without one, asks for a key,
shows a wrong key's 401, keeps a right key in sessionStorage (this tab only) and answers;
View code reads the key from the environment, never shows it."""
from __future__ import annotations

import sys

import pytest

from ..conftest import MODEL, Service
from .page_support import last_answer, open_code, run_snippet, send

KEY = "sk-playground-0123456789abcdef"
WRONG = "sk-wrong-key-000000000000"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("playground-keys"), "playground-keys", env={"GENAPI_API_KEYS": KEY}).start()
    yield svc
    svc.stop()


def test_key_prompt_wrong_key_then_right_key(secured, open_page, artifacts):
    page = open_page(secured)
    dialog = page.locator("#key-dialog")
    assert dialog.is_visible() and page.locator("#api-key").get_attribute("type") == "password"
    page.screenshot(path=f"{artifacts}/playground-key-prompt.png")

    page.fill("#api-key", WRONG)
    page.click("#key-save")
    page.wait_for_function("() => document.getElementById('key-error').textContent !== ''")
    error = page.locator("#key-error").inner_text()
    assert error.startswith("401: Incorrect API key provided") and WRONG not in error, error
    assert page.evaluate("sessionStorage.getItem('genapi.apiKey')") is None

    page.fill("#api-key", KEY)
    page.click("#key-save")
    dialog.wait_for(state="hidden")
    assert page.locator("#model option").all_inner_texts() == [MODEL]
    assert page.evaluate("sessionStorage.getItem('genapi.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0

    page.fill("#max_tokens", "8")
    send(page, "Hello with a key")
    text, stats = last_answer(page)
    assert text.strip() and stats.get_attribute("data-tokens")
    assert page.locator(".msg.error").count() == 0

    python = open_code(page, "Python")
    assert 'api_key=os.environ["GENAPI_API_KEY"]' in python and KEY not in python
    curl = open_code(page, "curl")
    assert 'Authorization: Bearer $GENAPI_API_KEY' in curl and KEY not in curl
    assert run_snippet([sys.executable, "-"], python, env_key=KEY).strip()

    # The same tab keeps the key: a reload asks for nothing.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert not dialog.is_visible() and page.locator("#model option").all_inner_texts() == [MODEL]
    assert 'api_key=os.environ["GENAPI_API_KEY"]' in open_code(page, "Python")
    page.click("#code-close")
    page.click("#key-button")  # change or forget it
    page.click("#key-forget")
    assert page.evaluate("sessionStorage.getItem('genapi.apiKey')") is None and dialog.is_visible()


def test_esc_on_the_key_prompt_says_a_key_is_needed(secured, open_page):
    page = open_page(secured)
    page.locator("#key-dialog").wait_for(state="visible")
    page.keyboard.press("Escape")
    page.locator("#key-dialog").wait_for(state="hidden")
    alert = page.locator(".msg.error[role=alert]")
    alert.wait_for()
    assert "API key is needed" in alert.inner_text() and page.locator("#key-button").is_visible()
    page.click("#key-button")
    page.fill("#api-key", KEY)
    page.click("#key-save")
    page.locator("#key-dialog").wait_for(state="hidden")
    assert page.locator("#model option").all_inner_texts() == [MODEL]


def test_a_key_that_stops_working_shows_the_401(secured, open_page):
    page = open_page(secured)
    page.fill("#api-key", KEY)
    page.click("#key-save")
    page.locator("#key-dialog").wait_for(state="hidden")
    page.evaluate("(k) => sessionStorage.setItem('genapi.apiKey', k)", WRONG)  # e.g. revoked meanwhile
    page.fill("#max_tokens", "4")
    send(page, "Still there?")
    error = page.locator(".msg.error").last
    error.wait_for()
    assert "401: Incorrect API key provided" in error.inner_text()
    assert page.locator("#key-dialog").is_visible()  # asks again
    assert "401" in page.locator("#key-error").inner_text()
