"""What the multimodal tests share: images made with Pillow, a loopback image server, a
listener that must never be connected to, a served model's [[models]] block and the SDK
calls and 400 checks of image requests."""
from __future__ import annotations

import base64
import http.server
import io
import socket
import threading

import openai
import pytest
from PIL import Image

PROMPT = "What is in the picture?"


def model_block(name: str, path, pause_file=None, **options) -> str:
    """A config's [[models]] entry for a torch checkpoint: `options` as [models.options]
    (ints and strings), a decode pause file (the fault option) when given."""
    lines = ["[[models]]", f'name = "{name}"', f'path = "{path}"', "[models.options]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in options.items()]
    if pause_file is not None:
        lines += ["[models.options.fault]", f'pause_decode_file = "{pause_file}"']
    return "\n".join(lines) + "\n"


def png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(color=(30, 30, 200), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


RED, BLUE = png(), png((30, 30, 200), (30, 30))


class ImageServer:
    """A loopback HTTP server: GET /red.png, /blue.png; /to/<port> redirects to that
    loopback port. `hits` counts the requests it answered."""

    def __init__(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits += 1
                if self.path in ("/slow.png", "/endless.png"):
                    self._stream(slow=self.path == "/slow.png")
                    return
                if self.path.startswith("/to/"):
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{self.path[4:]}/red.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = {"/red.png": RED, "/blue.png": BLUE}.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "image/png" if body else "text/plain")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def _stream(self, slow: bool):
                """X5: one byte a second, or an endless body without a length, until the
                fetcher hangs up."""
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                chunk, gap = (b"\x89", 1.0) if slow else (bytes(64 * 1024), 0.0)
                try:
                    while not owner.closed.wait(gap):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the core hung up: what X5 expects
                    owner.cut += 1

            def log_message(self, *args):
                pass

        self.hits = 0
        self.cut = 0  # streamed responses the fetcher hung up on
        self.closed = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Trap:
    """A loopback TCP listener (IPv4 and IPv6) that must never be connected to."""

    def __init__(self):
        self.connections = 0
        self.socks = []
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        self.port = v4.getsockname()[1]
        self.socks.append(v4)
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.bind(("::1", self.port))
            self.socks.append(v6)
        except OSError:  # no IPv6 loopback here
            pass
        for s in self.socks:
            s.listen()
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s):
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        for s in self.socks:
            s.close()


def image_part(url: str, detail: str | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


def ask(*images_: str, text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *(image_part(u) for u in images_)]}]


def chat(oa, messages, model: str, **kw):
    """A chat completion of `model`: greedy and 12 tokens unless told otherwise."""
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return oa.chat.completions.create(model=model, messages=messages, **kw)


def assert_400(call, param: str, words: str = "") -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    err = e.value.body
    assert err["param"] == param, err
    assert words.lower() in err["message"].lower(), err
    return e.value


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]  # the header is whole, the scan is not


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 100 Mpixels in a few kB
    return buf.getvalue()


def sliver() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 100_000)).save(buf, "PNG")
    return buf.getvalue()


