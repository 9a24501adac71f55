"""The web playground: static files under shim/playground/, served as they are.

GET /                    302 -> playground/
GET /playground          308 -> playground/ (relative, so the page also works behind a
                         path prefix: its assets and the API are addressed relative to it)
GET /playground/         index.html
GET /playground/<path>   a file of shim/playground/ (js/, vendor/, the stylesheet); 404 in
                         the OpenAI envelope for anything else (send_from_directory refuses
                         paths leaving the folder)

Nothing is templated: the page learns everything (models, whether a key is needed) from
the API it calls. These paths need no API key (shim.auth.is_public_path); every call the
page makes does. Every response carries a strict Content-Security-Policy (scripts, styles,
connections and images from this origin only, no inline script, no plugins, no framing):
markdown is sanitized by DOMPurify in the page, and the policy is the second wall.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, redirect, send_from_directory

bp = Blueprint("playground", __name__)

PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
PREFIX = "/playground"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): a new build is seen at once
}
# Python's mimetypes does not know .mjs everywhere; a module script needs a JS type.
MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript"}


def _static(path: str):
    mimetype = MIME_TYPES.get(Path(path).suffix)
    resp = send_from_directory(PLAYGROUND_DIR, path, mimetype=mimetype, max_age=0)
    resp.headers.update(SECURITY_HEADERS)
    return resp


@bp.get("/")
def root():
    return redirect("playground/", 302)


@bp.get(PREFIX)
def playground_bare():
    return redirect("playground/", 308)


@bp.get(PREFIX + "/")
def playground_index():
    return _static("index.html")


@bp.get(PREFIX + "/<path:path>")
def playground_file(path: str):
    return _static(path)
