"""The playground's static files through the Flask test client (no servers), the page's
HTML checked against what its scripts and its Content-Security-Policy need, and the pure
JavaScript modules under `node --test` (tests/unit/playground_js/)."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shim.auth import is_public_path
from shim.routes.playground import CONTENT_SECURITY_POLICY, PLAYGROUND_DIR

from ..conftest import ROOT, missing_tool
from .shim_fakes import AUTH, assert_envelope, client, core  # noqa: F401 (fixtures)


def test_root_and_bare_path_redirect_relative(client):
    resp = client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"] == "playground/"
    resp = client.get("/playground")
    assert resp.status_code == 308 and resp.headers["Location"] == "playground/"


@pytest.mark.parametrize("path,mimetype", [
    ("/playground/", "text/html"),
    ("/playground/playground.css", "text/css"),
    ("/playground/js/main.js", "text/javascript"),
])
def test_files_are_served_without_a_key_with_a_strict_policy(client, path, mimetype):
    resp = client.get(path)  # the client's app has API keys; no Authorization here
    assert resp.status_code == 200 and resp.mimetype == mimetype
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/playground/nope.js", "/playground/../pyproject.toml",
                                  "/playground/%2e%2e/routes/playground.py", "/playground/js/../../__init__.py"])
def test_unknown_or_escaping_paths_are_404s(client, path):
    assert_envelope(client.get(path), 404, type="invalid_request_error")


def test_only_the_playground_is_public(client):
    assert is_public_path("/playground/js/main.js") and is_public_path("/") and is_public_path("/playground")
    assert not is_public_path("/playgroundx") and not is_public_path("/v1/models")
    assert_envelope(client.get("/v1/models"), 401, code="invalid_api_key")
    assert_envelope(client.post("/playground/", json={}), 405, code="method_not_allowed")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.inline, self.labels_for, self.controls = [], [], set(), {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "script" and "src" not in a:
            self.inline.append("inline <script>")
        self.inline += [f"{tag} {k}=" for k in a if k.startswith("on") or k == "style"]
        if tag == "label" and "for" in a:
            self.labels_for.add(a["for"])
        if tag in ("input", "select", "textarea"):
            self.controls[a.get("id")] = a


def test_page_html_fits_its_scripts_and_policy():
    page = _Page()
    page.feed((PLAYGROUND_DIR / "index.html").read_text())
    assert page.inline == []  # the policy allows no inline script or style
    duplicates = {i for i in page.ids if page.ids.count(i) > 1}
    assert not duplicates, duplicates
    for control_id, attrs in page.controls.items():  # every form control has a label
        assert control_id in page.labels_for or "aria-label" in attrs, control_id
    used = set()
    for js in (PLAYGROUND_DIR / "js").glob("*.js"):
        used |= set(re.findall(r'\$\("([\w-]+)"\)', js.read_text()))
    fields = re.search(r"const FIELDS = \[([^\]]*)\]", (PLAYGROUND_DIR / "js" / "main.js").read_text()).group(1)
    used |= set(re.findall(r'"([\w-]+)"', fields))
    assert used - set(page.ids) == set()  # every element the scripts look up exists


def test_playground_js_modules():
    node = shutil.which("node")
    if node is None:
        missing_tool("node is not installed (./build.sh installs it with the client toolchains)")
    tests = sorted(str(p) for p in Path(ROOT / "tests" / "unit" / "playground_js").glob("*.test.mjs"))
    assert tests
    out = subprocess.run([node, "--test", *tests], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
