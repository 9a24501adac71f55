"""Images and audio in chat through the official openai SDK and gRPC, against the real core
and shim serving the embedded tiny vision-language model (models/tiny-vision, LLaVA) and
audio-language model (models/tiny-audio, Qwen2-Audio) beside the text-only tiny chat model: data: and http(s) URLs (a loopback image server that the
test's own [media] allow-list lets through, on its port only), several images, history,
streaming, usage, batching with text requests, bad images (B11) and refused URLs (X4);
input_audio as wav and mp3."""
from __future__ import annotations

import asyncio
import base64
import http.server
import io
import socket
import threading

import grpc
import openai
import pytest
from PIL import Image

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc, content_pb2
from genapi.v1 import generation_service_pb2 as gen_pb2
from genapi.v1 import generation_service_pb2_grpc as gen_grpc

from ..conftest import MODEL, ROOT, Service, wait_until
from .audio_support import encode, silence, speech

VISION = "genapi-tiny-vision"
AUDIO = "genapi-tiny-audio"
IMAGE_TOKENS = 16  # (32 / 8)^2 patches of the tiny CLIP tower, CLS dropped
MAX_IMAGES = 8  # the [media] default
MAX_MB = 1  # [media] max_mb of this module's service: the over-size case stays cheap
FETCH_TIMEOUT_S = 3  # [media] fetch_timeout_s: the slow server is cut off soon
PROMPT = "What is in the picture?"


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


@pytest.fixture(scope="module")
def images():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def trap():
    t = Trap()
    yield t
    t.close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory, images):
    tmp = tmp_path_factory.mktemp("multimodal")
    pause = tmp / "pause"
    s = Service(tmp, "multimodal", extra_toml=f"""
        [media]
        allow_hosts = ["127.0.0.1:{images.port}"]
        max_mb = {MAX_MB}
        fetch_timeout_s = {FETCH_TIMEOUT_S}
        """, model_options=f"""
        threads = 1
        [[models]]
        name = "{VISION}"
        path = "{ROOT / 'models' / 'tiny-vision'}"
        [models.options]
        max_batch = 8
        threads = 1
        [models.options.fault]
        pause_decode_file = "{pause}"
        [[models]]
        name = "{AUDIO}"
        path = "{ROOT / 'models' / 'tiny-audio'}"
        [models.options]
        max_batch = 4
        threads = 1
        """)
    s.pause_file = pause
    s.start(timeout_s=300)
    yield s
    pause.unlink(missing_ok=True)
    s.stop()


@pytest.fixture(scope="module")
def oa(svc):
    return svc.sdk()


@pytest.fixture(scope="module")
def channel(svc):
    ch = grpc.insecure_channel(svc.grpc_target)
    yield ch
    ch.close()


def image_part(url: str, detail: str | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


def ask(*images_: str, text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *(image_part(u) for u in images_)]}]


def chat(oa, messages, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return oa.chat.completions.create(model=kw.pop("model", VISION), messages=messages, **kw)


# ---- images that work ---------------------------------------------------------------

def test_image_as_data_url_and_its_tokens_in_usage(oa):
    none = chat(oa, ask())
    one = chat(oa, ask(data_url(RED)))
    two = chat(oa, ask(data_url(RED), data_url(BLUE)))
    assert one.choices[0].message.content and one.choices[0].finish_reason in ("stop", "length")
    # each image: its 16 image tokens and the "\n" the template puts between parts
    assert one.usage.prompt_tokens - none.usage.prompt_tokens == IMAGE_TOKENS + 1
    assert two.usage.prompt_tokens - one.usage.prompt_tokens == IMAGE_TOKENS + 1
    assert one.usage.total_tokens == one.usage.prompt_tokens + one.usage.completion_tokens


def test_image_from_an_allowed_http_server_equals_the_same_image_inline(oa, images):
    before = images.hits
    fetched = chat(oa, ask(images.url("/red.png")), seed=7, temperature=0.9)
    inline = chat(oa, ask(data_url(RED)), seed=7, temperature=0.9)
    assert images.hits == before + 1
    assert fetched.choices[0].message.content == inline.choices[0].message.content
    assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens


def test_several_images_in_one_message_in_their_order(oa, images):
    forward = chat(oa, ask(data_url(RED), images.url("/blue.png"), data_url(jpeg())), max_tokens=16)
    again = chat(oa, ask(data_url(RED), images.url("/blue.png"), data_url(jpeg())), max_tokens=16)
    swapped = chat(oa, ask(images.url("/blue.png"), data_url(RED), data_url(jpeg())), max_tokens=16)
    assert forward.usage.prompt_tokens == swapped.usage.prompt_tokens
    assert forward.choices[0].message.content == again.choices[0].message.content  # greedy: deterministic
    assert forward.choices[0].message.content != swapped.choices[0].message.content  # the order reaches the model


def test_image_in_a_multi_turn_history(oa):
    history = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [image_part(data_url(RED), "low"), {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "It is a picture."},
        {"role": "user", "content": "What colour is it?"},
    ]
    text_only = [history[0], {"role": "user", "content": "What is this?"}, *history[2:]]
    r = chat(oa, history)
    plain = chat(oa, text_only)
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens - plain.usage.prompt_tokens == IMAGE_TOKENS + 1


def test_streaming_gives_the_same_answer_and_usage(oa):
    messages = ask(data_url(BLUE), data_url(RED))
    whole = chat(oa, messages, max_tokens=16)
    chunks = list(chat(oa, messages, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_concurrent_image_and_text_requests_share_the_batch_and_each_equals_its_alone_output(svc, oa, channel):
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)

    def stats():
        return admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=VISION)).engines[0]

    requests = [ask(data_url(RED)), ask(text="Tell me about the sea."), ask(data_url(BLUE), data_url(RED)),
                ask(text="Hello there.")]
    kw = dict(max_tokens=20, temperature=0.8, seed=1234)
    alone = [chat(oa, m, **kw).choices[0].message.content for m in requests]
    assert wait_until(lambda: stats().active_sequences == 0, 30)

    async def together():
        async with svc.sdk(asynchronous=True) as aoa:
            tasks = [asyncio.ensure_future(aoa.chat.completions.create(model=VISION, messages=m, **kw))
                     for m in requests]
            # Decoding held: every request is admitted and prefilled, then they decode together.
            seen = await asyncio.to_thread(wait_until, lambda: stats().active_sequences == len(requests), 60)
            svc.pause_file.unlink()
            return seen, await asyncio.gather(*tasks)

    svc.pause_file.touch()
    try:
        seen, results = asyncio.run(together())
    finally:
        svc.pause_file.unlink(missing_ok=True)
    assert seen, "the four requests were never in the batch together"
    assert [r.choices[0].message.content for r in results] == alone


def test_responses_api_input_image_takes_the_same_path(oa):
    r = oa.responses.create(model=VISION, max_output_tokens=8, temperature=0, input=[{"role": "user", "content": [
        {"type": "input_text", "text": PROMPT}, {"type": "input_image", "image_url": data_url(RED)}]}])
    c = chat(oa, ask(data_url(RED)), max_tokens=8)
    assert r.status in ("completed", "incomplete")  # incomplete: max_output_tokens reached
    assert (r.output_text, r.usage.input_tokens) == (c.choices[0].message.content, c.usage.prompt_tokens)


def test_grpc_image_bytes_and_url(channel, images):
    stub = gen_grpc.GenerationServiceStub(channel)

    def generate(part: content_pb2.ImagePart):
        req = gen_pb2.GenerateRequest(model=VISION, messages=[content_pb2.ChatMessage(
            role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=PROMPT), content_pb2.ContentPart(image=part)])])
        req.sampling.temperature = 0
        req.stopping.max_tokens = 12
        text, usage = "", None
        for ev in stub.Generate(req, timeout=60):
            if ev.WhichOneof("event") == "text":
                text += ev.text.text
            if ev.HasField("usage"):
                usage = ev.usage
        return text, usage

    raw = generate(content_pb2.ImagePart(data=RED, mime_type="image/png"))
    fetched = generate(content_pb2.ImagePart(url=images.url("/red.png")))
    assert raw[0] and raw == fetched
    with pytest.raises(grpc.RpcError) as e:
        generate(content_pb2.ImagePart(data=b"not an image", mime_type="image/png"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].content[1]" in str(e.value.trailing_metadata())


# ---- refusals -----------------------------------------------------------------------

def assert_400(call, param: str, words: str = "") -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    err = e.value.body
    assert err["param"] == param, err
    assert words.lower() in err["message"].lower(), err
    return e.value


def test_a_text_only_model_given_an_image_names_the_model_and_the_part(oa):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "and this?"}, image_part(data_url(RED))]}]
    assert_400(lambda: chat(oa, messages, model=MODEL), "messages[2].content[1]", f"`{MODEL}` does not accept image")
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]
    assert_400(lambda: chat(oa, audio, model=VISION), "messages[0].content[0]", f"`{VISION}` does not accept audio")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]  # the header is whole, the scan is not


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 100 Mpixels in a few kB
    return buf.getvalue()


def _sliver() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 100_000)).save(buf, "PNG")
    return buf.getvalue()


BAD_IMAGES = {
    "bad base64": ("data:image/png;base64,@@not-base64@@", "base64"),
    "not an image": (data_url(b"hello, this is text and not an image at all"), "not a supported image"),
    "truncated jpeg": (data_url(_truncated_jpeg(), "image/jpeg"), "truncated"),
    "1x100000": (data_url(_sliver()), "1x100000"),
    "bomb": (data_url(_bomb()), "pixels"),
    "unsupported mime": (data_url(RED, "image/tiff"), "unsupported image type"),
    "over size": (data_url(b"\x89PNG" + bytes(MAX_MB * 1024 * 1024 + 10)), "larger than"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_are_400_with_the_part_and_the_next_request_succeeds(oa, case):
    url, words = BAD_IMAGES[case]
    assert_400(lambda: chat(oa, ask(data_url(BLUE), url)), "messages[0].content[2]", words)
    assert chat(oa, ask(data_url(BLUE)), max_tokens=2).usage.completion_tokens == 2


def service_rss_mb(svc) -> float:
    """Resident memory of every process of the service: `genapi serve` and its descendants
    (core, engine processes, shim master and workers, each started in a session of its own)."""
    import os

    parents, rss = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            parents[int(pid)] = int(fields["PPid"])
            rss[int(pid)] = int(fields.get("VmRSS", "0 kB").split()[0])
        except (OSError, KeyError, ValueError):
            continue
    tree, todo = set(), [svc.proc.pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parents.items() if pp == p and c not in tree]
    return sum(rss.get(p, 0) for p in tree) / 1024


def test_bad_images_over_and_over_do_not_grow_the_servers_memory(svc, oa):
    import base64
    import os

    junk = "data:image/png;base64," + base64.b64encode(os.urandom(10 * 1024 * 1024)).decode()  # 14 MB, not an image
    cases = [url for url, _ in BAD_IMAGES.values()] + [junk]
    for url in cases:  # warm: every code path has run once
        with pytest.raises(openai.BadRequestError):
            chat(oa, ask(url))
    before = service_rss_mb(svc)
    for _ in range(3):
        for url in cases + [junk] * 3:
            with pytest.raises(openai.BadRequestError):
                chat(oa, ask(url))
    assert service_rss_mb(svc) - before < 200
    assert chat(oa, ask(data_url(RED)), max_tokens=2).usage.completion_tokens == 2


def test_too_many_images_names_the_first_one_over(oa):
    assert_400(lambda: chat(oa, ask(*[data_url(RED)] * (MAX_IMAGES + 1))),
               f"messages[0].content[{MAX_IMAGES + 1}]", "too many images")


def test_images_outside_user_messages_are_refused_by_the_shim(oa):
    messages = [{"role": "system", "content": [image_part(data_url(RED))]}, {"role": "user", "content": "hi"}]
    assert_400(lambda: chat(oa, messages), "messages[0].content[0].type")


@pytest.fixture
def refused_urls(trap, images):
    return {
        "loopback": f"http://127.0.0.1:{trap.port}/x.png",
        "ipv6 loopback": f"http://[::1]:{trap.port}/x.png",
        "decimal": f"http://2130706433:{trap.port}/x.png",
        "octal-hex": f"http://0x7f.1:{trap.port}/x.png",
        "name for loopback": f"http://localhost:{trap.port}/x.png",
        "redirect to loopback": images.url(f"/to/{trap.port}"),  # the allowed server's port only
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "file": "file:///etc/passwd",
        "gopher": f"gopher://127.0.0.1:{trap.port}/_x",
    }


def test_ssrf_refused_urls_are_400_and_never_connect(oa, trap, refused_urls):
    for case, url in refused_urls.items():
        err = assert_400(lambda: chat(oa, ask(url)), "messages[0].content[1]")
        assert "127.0.0.1" not in err.body["message"] or case == "loopback", (case, err.body)
    assert trap.connections == 0
    assert chat(oa, ask(data_url(RED)), max_tokens=2).usage.completion_tokens == 2


def test_x5_a_trickling_server_is_cut_at_the_deadline_and_an_endless_body_at_the_cap(oa, images):
    import time

    t0 = time.monotonic()
    assert_400(lambda: chat(oa, ask(images.url("/slow.png"))), "messages[0].content[1]", "timed out")
    assert FETCH_TIMEOUT_S <= time.monotonic() - t0 < FETCH_TIMEOUT_S + 5
    assert_400(lambda: chat(oa, ask(images.url("/endless.png"))), "messages[0].content[1]", "larger than")
    assert wait_until(lambda: images.cut >= 2, 10)  # both connections were hung up on
    assert chat(oa, ask(data_url(RED)), max_tokens=2).usage.completion_tokens == 2


# ---- audio ----------------------------------------------------------------------------

def audio_part(data: bytes, fmt: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def listen(*clips: dict, text: str = "What do you hear?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *clips]}]


def test_input_audio_wav_and_mp3_and_their_tokens_in_usage(oa):
    samples = speech("the quick brown fox")
    seconds = len(samples) / 16_000
    none = chat(oa, listen(), model=AUDIO)
    wav = chat(oa, listen(audio_part(encode(samples, "wav"), "wav")), model=AUDIO)
    mp3 = chat(oa, listen(audio_part(encode(samples, "mp3"), "mp3")), model=AUDIO)
    assert wav.choices[0].message.content and mp3.choices[0].message.content
    # one audio token per 40 ms, between <|audio_bos|> and <|audio_eos|>, after a "\n"
    audio_tokens = wav.usage.prompt_tokens - none.usage.prompt_tokens - 3
    assert abs(audio_tokens - seconds * 25) <= 1
    assert abs(mp3.usage.prompt_tokens - wav.usage.prompt_tokens) <= 2  # mp3 pads the clip a little
    streamed = list(chat(oa, listen(audio_part(encode(samples, "wav"), "wav")), model=AUDIO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == wav.choices[0].message.content


def test_audio_and_image_parts_go_only_to_models_that_take_them(oa):
    clip = audio_part(encode(speech("hello"), "wav"), "wav")
    assert_400(lambda: chat(oa, listen(clip), model=VISION), "messages[0].content[1]", "does not accept audio")
    assert_400(lambda: chat(oa, listen(clip, image_part(data_url(RED))), model=AUDIO), "messages[0].content[2]",
               f"`{AUDIO}` does not accept image")


def test_bad_or_too_long_audio_is_400_with_the_part(oa):
    too_long = encode(silence(31), "wav")
    assert_400(lambda: chat(oa, listen(audio_part(too_long, "wav")), model=AUDIO), "messages[0].content[1]",
               "longer than this model's limit of 30 seconds")
    assert_400(lambda: chat(oa, listen(audio_part(b"this is no audio file at all", "wav")), model=AUDIO),
               "messages[0].content[1]", "not a supported audio file")
    assert chat(oa, listen(audio_part(encode(speech("ok"), "wav"), "wav")), model=AUDIO, max_tokens=2) \
        .usage.completion_tokens == 2
