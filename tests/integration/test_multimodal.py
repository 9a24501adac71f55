"""Images and audio in chat through the official openai SDK and gRPC, against the real core
and shim serving the embedded tiny vision-language models (models/tiny-vision, LLaVA;
models/tiny-pixtral, Mistral3 with a Pixtral tower, served by this test's config only)
and audio-language model (models/tiny-audio, Qwen2-Audio) beside the text-only tiny chat
model: data: and http(s) URLs (a loopback image server that the test's own [media]
allow-list lets through, on its port only), several images, history, streaming, usage,
`detail`, batching with text requests, bad images (B11) and refused URLs (X4);
input_audio as wav and mp3."""
from __future__ import annotations

import asyncio
import base64

import grpc
import openai
import pytest
from PIL import Image

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc, content_pb2
from genapi.v1 import generation_service_pb2 as gen_pb2
from genapi.v1 import generation_service_pb2_grpc as gen_grpc

from ..conftest import MODEL, ROOT, Service, wait_until
from . import media_support
from .audio_support import encode, silence, speech
from .media_support import (BLUE, PROMPT, RED, ImageServer, Trap, ask, assert_400, bomb, data_url, image_part, jpeg,
                            model_block, png, sliver, truncated_jpeg)

VISION = "genapi-tiny-vision"
PIXTRAL = "genapi-tiny-pixtral"
AUDIO = "genapi-tiny-audio"
IMAGE_TOKENS = 16  # (32 / 8)^2 patches of the tiny CLIP tower, CLS dropped
MAX_IMAGES = 8  # the [media] default
MAX_AUDIO_PARTS = 8  # the [media] default
MAX_AUDIO_TOTAL_S = 40  # [media] max_audio_total_s of this module's service
PIXTRAL_BATCH = 4  # PIXTRAL runs with max_queue = 1: a request that finds 4 running and 1 waiting is a 429
MAX_MB = 1  # [media] max_mb of this module's service: the over-size case stays cheap
FETCH_TIMEOUT_S = 3  # [media] fetch_timeout_s: the slow server is cut off soon


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
    s = Service(tmp, "multimodal", extra_toml=f"""
        [media]
        allow_hosts = ["127.0.0.1:{images.port}"]
        max_mb = {MAX_MB}
        fetch_timeout_s = {FETCH_TIMEOUT_S}
        max_audio_total_s = {MAX_AUDIO_TOTAL_S}
        """, model_options="threads = 1\n" + "".join(
        model_block(name, ROOT / "models" / folder, tmp / f"pause-{name}" if pause else None, max_batch=batch,
                    threads=1, **extra)
        for name, folder, batch, pause, extra in [
            (VISION, "tiny-vision", 8, True, {}), (PIXTRAL, "tiny-pixtral", PIXTRAL_BATCH, True, {"max_queue": 1}),
            (AUDIO, "tiny-audio", 4, False, {})]))
    s.pause_files = {name: tmp / f"pause-{name}" for name in (VISION, PIXTRAL)}
    s.start(timeout_s=300)
    yield s
    for pause in s.pause_files.values():
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


def chat(oa, messages, model: str = VISION, **kw):
    return media_support.chat(oa, messages, model, **kw)


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


@pytest.mark.parametrize("model", [VISION, PIXTRAL])
def test_concurrent_image_and_text_requests_share_the_batch_and_each_equals_its_alone_output(svc, oa, channel, model):
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)
    pause_file = svc.pause_files[model]

    def stats():
        return admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=model)).engines[0]

    requests = [ask(data_url(RED)), ask(text="Tell me about the sea."), ask(data_url(BLUE), data_url(jpeg())),
                ask(text="Hello there.")]
    kw = dict(max_tokens=20, temperature=0.8, seed=1234)
    alone = [chat(oa, m, model, **kw).choices[0].message.content for m in requests]
    assert wait_until(lambda: stats().active_sequences == 0, 30)

    async def together():
        async with svc.sdk(asynchronous=True) as aoa:
            tasks = [asyncio.ensure_future(aoa.chat.completions.create(model=model, messages=m, **kw))
                     for m in requests]
            # Decoding held: every request is admitted and prefilled, then they decode together.
            seen = await asyncio.to_thread(wait_until, lambda: stats().active_sequences == len(requests), 60)
            pause_file.unlink()
            return seen, await asyncio.gather(*tasks)

    pause_file.touch()
    try:
        seen, results = asyncio.run(together())
    finally:
        pause_file.unlink(missing_ok=True)
    assert seen, "the four requests were never in the batch together"
    assert [r.choices[0].message.content for r in results] == alone


def test_responses_api_input_image_takes_the_same_path(oa):
    r = oa.responses.create(model=VISION, max_output_tokens=8, temperature=0, input=[{"role": "user", "content": [
        {"type": "input_text", "text": PROMPT}, {"type": "input_image", "image_url": data_url(RED)}]}])
    c = chat(oa, ask(data_url(RED)), max_tokens=8)
    assert r.status in ("completed", "incomplete")  # incomplete: max_output_tokens reached
    assert (r.output_text, r.usage.input_tokens) == (c.choices[0].message.content, c.usage.prompt_tokens)


def test_responses_api_media_errors_name_the_input_item_and_part(oa):
    bad = {"type": "input_image", "image_url": data_url(b"hello, this is text and not an image at all")}
    good = {"type": "input_image", "image_url": data_url(RED)}
    inputs = [{"role": "user", "content": "hello"},
              {"role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
              {"role": "user", "content": [{"type": "input_text", "text": PROMPT}, good, bad]}]
    with pytest.raises(openai.BadRequestError) as e:  # messages[3] (after the instructions) is input[2]
        oa.responses.create(model=VISION, instructions="Be brief.", max_output_tokens=4, input=inputs)
    assert e.value.body["param"] == "input[2].content[2]", e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model=MODEL, instructions="Be brief.", max_output_tokens=4, input=inputs[2:])
    assert (e.value.body["param"], "messages[" in e.value.body["message"]) == ("input[0].content[1]", False)
    assert "(input[0].content[1])" in e.value.body["message"], e.value.body


# ---- Mistral3 / Pixtral: a variable token grid ------------------------------------------
# 8-pixel patches merged 2x2: one [IMG] per 16x16 pixels, [IMG_BREAK] after each row but
# the last, [IMG_END] after it; the longest edge is brought down to 64 pixels.
GRID_TOKENS = {"red 40x30": 2 * (3 + 1), "blue 30x30": 2 * (2 + 1), "jpeg 64x48": 3 * (4 + 1),
               "wide 200x100 -> 64x32": 2 * (4 + 1), "square 64x64": 4 * (4 + 1)}


def test_pixtral_images_take_their_grid_of_tokens_in_usage(oa):
    wide, square = png((90, 200, 90), (200, 100)), png((90, 90, 200), (64, 64))
    none = chat(oa, ask(), PIXTRAL).usage.prompt_tokens
    seen = {case: chat(oa, ask(data_url(img)), PIXTRAL).usage.prompt_tokens - none
            for case, img in zip(GRID_TOKENS, [RED, BLUE, jpeg(), wide, square])}
    assert seen == {case: n + 1 for case, n in GRID_TOKENS.items()}  # + the "\n" before the part
    two = chat(oa, ask(data_url(RED), data_url(jpeg())), PIXTRAL)
    assert two.usage.prompt_tokens - none == GRID_TOKENS["red 40x30"] + GRID_TOKENS["jpeg 64x48"] + 2
    assert two.choices[0].message.content
    assert two.usage.total_tokens == two.usage.prompt_tokens + two.usage.completion_tokens


def test_pixtral_two_images_streamed_give_the_same_answer_and_usage(oa, images):
    messages = ask(data_url(BLUE), images.url("/red.png"))
    whole = chat(oa, messages, PIXTRAL, max_tokens=16)
    swapped = chat(oa, ask(images.url("/red.png"), data_url(BLUE)), PIXTRAL, max_tokens=16)
    chunks = list(chat(oa, messages, PIXTRAL, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)
    assert whole.choices[0].message.content != swapped.choices[0].message.content  # the images reach the model


def test_detail_low_shrinks_a_pixtral_grid_and_changes_nothing_at_llavas_fixed_size(oa):
    square = data_url(png((90, 90, 200), (64, 64)))

    def tokens(model, detail):
        return chat(oa, [{"role": "user", "content": [image_part(square, detail)]}], model,
                    max_tokens=1).usage.prompt_tokens
    pixtral = {d: tokens(PIXTRAL, d) for d in ("auto", "high", "low")}
    assert pixtral["auto"] == pixtral["high"]
    assert pixtral["auto"] - pixtral["low"] == GRID_TOKENS["square 64x64"] - 2  # low: one [IMG] and [IMG_END]
    assert tokens(VISION, "low") == tokens(VISION, "high") == tokens(VISION, "auto")


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

def test_a_text_only_model_given_an_image_names_the_model_and_the_part(oa):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "and this?"}, image_part(data_url(RED))]}]
    assert_400(lambda: chat(oa, messages, model=MODEL), "messages[2].content[1]", f"`{MODEL}` does not accept image")
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]
    assert_400(lambda: chat(oa, audio, model=VISION), "messages[0].content[0]", f"`{VISION}` does not accept audio")


BAD_IMAGES = {
    "bad base64": ("data:image/png;base64,@@not-base64@@", "base64"),
    "not an image": (data_url(b"hello, this is text and not an image at all"), "not a supported image"),
    "truncated jpeg": (data_url(truncated_jpeg(), "image/jpeg"), "truncated"),
    "1x100000": (data_url(sliver()), "1x100000"),
    "bomb": (data_url(bomb()), "pixels"),
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


def test_a_full_engine_refuses_a_request_with_media_at_once_without_fetching_it(svc, channel, images):
    """The admission place comes before the media: with PIXTRAL's slots held (decoding
    paused) and its one queue place taken, a request with an image URL is a 429 and the
    image server never hears of it."""
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)
    pause_file = svc.pause_files[PIXTRAL]

    def stats():
        return admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=PIXTRAL)).engines[0]

    async def full():
        async with svc.sdk(asynchronous=True) as aoa:
            held = [asyncio.ensure_future(aoa.chat.completions.create(
                model=PIXTRAL, messages=ask(text="Hello there."), max_tokens=4, temperature=0))
                for _ in range(PIXTRAL_BATCH + 1)]
            try:
                seen = await asyncio.to_thread(wait_until, lambda: (s := stats()).active_sequences == PIXTRAL_BATCH
                                               and s.queued_requests == 1, 60)
                hits = images.hits
                try:
                    await aoa.chat.completions.create(model=PIXTRAL, messages=ask(images.url("/red.png")), max_tokens=4)
                    refused = None
                except openai.RateLimitError as e:
                    refused = e
                fetched = images.hits - hits
            finally:
                pause_file.unlink(missing_ok=True)
            return seen, refused, fetched, await asyncio.gather(*held)

    pause_file.touch()
    try:
        seen, refused, fetched, results = asyncio.run(full())
    finally:
        pause_file.unlink(missing_ok=True)
    assert seen, "the held requests never took every slot and the queue place"
    assert refused is not None and refused.status_code == 429, refused
    assert fetched == 0  # refused before its image was fetched
    assert all(r.usage.completion_tokens == 4 for r in results)  # the admitted ones finish in full
    assert chat(svc.sdk(), ask(images.url("/red.png")), PIXTRAL, max_tokens=2).usage.completion_tokens == 2


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


def test_too_many_audio_parts_name_the_first_one_over(oa):
    clip = audio_part(encode(speech("hi"), "wav"), "wav")
    assert_400(lambda: chat(oa, listen(*[clip] * (MAX_AUDIO_PARTS + 1)), model=AUDIO),
               f"messages[0].content[{MAX_AUDIO_PARTS + 1}]", f"too many audio parts: {MAX_AUDIO_PARTS + 1}")
    assert chat(oa, listen(*[clip] * MAX_AUDIO_PARTS), model=AUDIO, max_tokens=2).usage.completion_tokens == 2


def test_a_requests_audio_is_capped_in_total_seconds(oa):
    clip = audio_part(encode(silence(15), "wav"), "wav")  # 3 x 15 s > the module's 40 s in total
    assert_400(lambda: chat(oa, listen(clip, clip, clip), model=AUDIO), "messages[0].content[3]",
               f"longer than {MAX_AUDIO_TOTAL_S} seconds in total")


def test_audio_too_short_for_an_audio_token_is_400_audio_too_short(oa):
    for samples in (1, 160, 1599):  # 1-160 samples would expand to no <|AUDIO|> token at all
        clip = audio_part(encode(silence(samples / 16_000), "wav"), "wav")
        err = assert_400(lambda: chat(oa, listen(clip), model=AUDIO), "messages[0].content[1]",
                         "minimum audio length is 0.1 seconds")
        assert err.body["code"] == "audio_too_short", err.body
    assert chat(oa, listen(audio_part(encode(silence(0.1), "wav"), "wav")), model=AUDIO, max_tokens=2) \
        .usage.completion_tokens == 2
