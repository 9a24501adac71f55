"""Browser fixtures: Debian's chromium driven by Playwright for Python (never a browser
Playwright downloads: `executable_path` points at the system one that build.sh installs).

`browser` is one headless chromium per session; `open_page(service)` opens the playground
of a running service in a fresh context (its own sessionStorage and clipboard) and fails the
test on any uncaught error in the page's scripts.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ..conftest import missing_tool

# As the machine's own probe runs it: no background connections (this network is closed).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLAYGROUND_VENDOR = Path(__file__).resolve().parents[2] / "shim" / "playground" / "vendor"


def chromium_path() -> str:
    path = os.environ.get("GENAPI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        missing_tool("Debian's chromium is not installed (./build.sh installs it as root: apt-get install chromium)")
    return path


# Package scope: Playwright's sync API keeps an event loop running in the main thread
# while it is started, which would break every later test that calls asyncio.run().
@pytest.fixture(scope="package")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_tool("playwright for Python is not installed (./build.sh: pip install -e .[test])")
    if not (PLAYGROUND_VENDOR / "marked.esm.js").exists():
        missing_tool("the playground's marked/DOMPurify are missing (./build.sh copies them from npm)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(service, width=1280, height=860) -> a Page showing the playground, after
    its start-up (models listed or the key prompt shown)."""
    contexts, errors = [], []

    def open_(service, width: int = 1280, height: int = 860):
        ctx = browser.new_context(viewport={"width": width, "height": height})
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=service.base_url)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{service.base_url}/playground/")
        page.wait_for_selector("body[data-ready=true]")
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where the tests save screenshots for review: $GENAPI_ARTIFACTS when set (CI can keep
    it), else a tmp dir of the session."""
    path = os.environ.get("GENAPI_ARTIFACTS")
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    return tmp_path_factory.mktemp("artifacts")
