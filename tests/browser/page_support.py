"""What the browser tests do with the playground page (Playwright sync API)."""
from __future__ import annotations

import os
import subprocess

from ..conftest import ROOT


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
