"""Image and audio decoding of content parts (row B11 of the reliability plan): every bad
input is a MediaError with a message for the client, never a Pillow error or warning."""
from __future__ import annotations

import asyncio
import base64
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from genapi.v1 import content_pb2
from server.media.audio import AudioError
from server.media.data_url import parse_data_url
from server.media.errors import MediaError
from server.media.image import decode_image
from server.media.policy import MediaPolicy
from server.media.resolve import check_media_count, load_audio, load_image

POLICY = MediaPolicy()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def load(url: str = "", data: bytes = b"", mime: str = "", policy: MediaPolicy = POLICY):
    part = content_pb2.ImagePart(url=url) if url else content_pb2.ImagePart(data=data, mime_type=mime)
    return asyncio.run(load_image(part, policy))


def refused(**kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (or any other) escapes
        with pytest.raises(MediaError) as e:
            load(**kw)
    return e.value.message


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height (a decompression bomb's header) with one
    short IDAT: a few hundred bytes on the wire."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


RED = (200, 10, 10)


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                      ("GIF", "image/gif")])
def test_supported_formats_decode_to_rgb(fmt, mime):
    raw = encode(Image.new("RGB", (7, 5), RED), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    for image in (load(url=data_url(raw, mime)), load(data=raw, mime=mime), load(data=raw)):
        assert image.mode == "RGB" and image.size == (7, 5)
        assert all(abs(a - b) <= 12 for a, b in zip(image.getpixel((3, 2)), RED))


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("RGB", "JPEG")])
def test_large_images_are_scaled_down_once_decoded(mode, fmt):
    """A many-megapixel upload within the caps ends at WORKING_SIDE before any colour copy
    (a 40-megapixel image would otherwise hold hundreds of MB per copy)."""
    from server.media.image import WORKING_SIDE

    out = decode_image(encode(Image.new(mode, (6000, 3000)), fmt), POLICY)
    assert out.mode == "RGB" and out.size == (WORKING_SIDE, WORKING_SIDE // 2)
    small = decode_image(encode(Image.new(mode, (640, 320)), fmt), POLICY)
    assert small.size == (640, 320)  # smaller ones are untouched


def test_decodes_run_a_few_at_a_time_whatever_the_requests():
    import server.media.resolve as resolve

    running, peak = 0, 0
    real = resolve.decode_image

    def counting(*a):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return real(*a)
        finally:
            running -= 1
    part = content_pb2.ImagePart(data=encode(Image.new("RGB", (800, 800)), "PNG"), mime_type="image/png")

    async def go():
        return await asyncio.gather(*(resolve.load_image(part, POLICY) for _ in range(12)))
    resolve.decode_image = counting
    try:
        assert len(asyncio.run(go())) == 12
    finally:
        resolve.decode_image = real
    assert 1 <= peak <= resolve.MAX_CONCURRENT_DECODES


def test_gif_gives_its_first_frame_and_transparency_becomes_white():
    frames = [Image.new("RGB", (4, 4), c) for c in (RED, (0, 0, 255))]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(raw)).n_frames == 2
    assert load(data=raw).getpixel((1, 1)) == RED
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load(data=encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_bad_base64_and_base64_of_a_non_image():
    assert refused(url="data:image/png;base64,iVBOR*w0KGgo!!!") == "The data: URL is not valid base64."
    assert "not a supported image" in refused(url=data_url(b"just some text, not pixels"))
    assert "not a supported image" in refused(data=b"%PDF-1.4 not an image")
    assert refused(url="data:image/png;base64,") == "The data: URL is empty."
    assert "no ','" in refused(url="data:image/png;base64")


def test_missing_base64_padding_and_whitespace_are_accepted():
    raw = encode(Image.new("RGB", (3, 3), RED), "PNG")
    text = base64.b64encode(raw).decode().rstrip("=")
    wrapped = "\n".join(text[i:i + 60] for i in range(0, len(text), 60))
    assert load(url=f"data:image/png;base64,{wrapped}").size == (3, 3)


def test_truncated_jpeg():
    raw = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert refused(data=raw[: len(raw) // 2], mime="image/jpeg") == "The image data is truncated or corrupt."


def test_a_1_by_100000_image_is_refused_from_its_header():
    raw = encode(Image.new("L", (1, 100_000)), "PNG")
    assert "1x100000" in refused(data=raw)
    assert "aspect ratio" in refused(data=encode(Image.new("L", (1, 1000)), "PNG"))


@pytest.mark.parametrize("size", [(30_000, 30_000), (7_000, 7_000), (70_000, 70_000)])
def test_decompression_bombs_are_refused_before_decoding(size):
    raw = png_header_only(*size)
    assert len(raw) < 200
    assert "pixels" in refused(data=raw) and "40,000,000" in refused(url=data_url(raw))


def test_the_pixel_cap_follows_the_policy():
    raw = encode(Image.new("RGB", (100, 100)), "PNG")
    assert "more than 5,000 pixels" in refused(data=raw, policy=MediaPolicy(max_image_pixels=5000))
    assert "longer than 64 pixels" in refused(data=raw, policy=MediaPolicy(max_image_side=64))
    assert load(data=raw, policy=MediaPolicy(max_image_pixels=10_000)).size == (100, 100)


@pytest.mark.parametrize("mime", ["image/tiff", "image/svg+xml", "image/bmp", "text/html"])
def test_unsupported_mime_types(mime):
    raw = encode(Image.new("RGB", (4, 4)), "PNG")
    message = f"Unsupported image type {mime}: send PNG, JPEG, WebP or GIF."
    assert refused(data=raw, mime=mime) == message
    assert refused(url=data_url(raw, mime)) == message


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "ICO", "PPM"])
def test_other_formats_are_refused_whatever_the_declared_type(fmt):
    raw = encode(Image.new("RGB", (4, 4)), fmt)
    assert "not a supported image" in refused(data=raw)
    assert "not a supported image" in refused(data=raw, mime="image/png")


def test_svg_bytes_are_not_an_image():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
    assert "not a supported image" in refused(data=svg)


def test_over_size_media_is_refused_before_decoding():
    raw = encode(Image.effect_noise((300, 300), 80).convert("RGB"), "PNG")
    small = MediaPolicy(max_bytes=10_000)
    assert len(raw) > 10_000
    assert refused(data=raw, policy=small) == "The image is larger than 0.00953674 MB."
    assert "larger than" in refused(url=data_url(raw), policy=small)
    with pytest.raises(MediaError, match="larger than"):
        parse_data_url("data:image/png;base64," + "A" * 100_000, small)  # refused before decoding


def test_an_image_part_without_a_source():
    assert refused(data=b"") == "The image is empty."
    with pytest.raises(MediaError, match="neither a URL nor data"):
        asyncio.run(load_image(content_pb2.ImagePart(), POLICY))


def parts_of(*kinds: str) -> list[tuple[str, str]]:
    return [(f"messages[0].content[{j}]", kind) for j, kind in enumerate(kinds)]


def test_too_many_images():
    check_media_count(parts_of(*["image"] * 8), POLICY)
    with pytest.raises(MediaError) as e:
        check_media_count(parts_of(*["image"] * 9), POLICY)
    assert e.value.message == "Too many images: 9 (at most 8 per request)."
    assert e.value.param == "messages[0].content[8]"
    with pytest.raises(MediaError):
        check_media_count(parts_of("image"), MediaPolicy(max_images=0))


def test_too_many_audio_parts_counted_apart_from_images():
    check_media_count(parts_of(*["audio", "image"] * 8), POLICY)  # 8 of each
    with pytest.raises(MediaError) as e:
        check_media_count(parts_of("image", *["audio"] * 12), POLICY)
    assert e.value.message == "Too many audio parts: 12 (at most 8 per request)."
    assert e.value.param == "messages[0].content[9]"  # the ninth audio part, after the image


def test_media_error_is_a_value_error_carrying_its_param():
    e = MediaError("bad", param="messages[0].content[1]")
    assert isinstance(e, ValueError) and e.message == "bad" and e.param == "messages[0].content[1]"
    assert issubclass(AudioError, MediaError)


def test_decode_image_directly_returns_a_loaded_copy():
    raw = encode(Image.new("RGB", (6, 2), RED), "WEBP", lossless=True)
    image = decode_image(raw, POLICY, "image/webp")
    assert image.getpixel((5, 1)) == RED and image.size == (6, 2)


def wav(seconds: float, rate: int = 16_000) -> bytes:
    import wave
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 16_000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def test_load_audio_gives_float32_samples():
    samples = load_audio(content_pb2.AudioPart(data=wav(0.5), format="wav"))
    assert samples.dtype == np.float32 and samples.shape == (8000,)
    assert 0.4 < float(np.abs(samples).max()) < 0.5  # 16000 / 32768


def test_load_audio_limits():
    part = content_pb2.AudioPart(data=wav(2.0), format="wav")
    with pytest.raises(MediaError, match="longer than this model's limit of 1 seconds"):
        load_audio(part, max_seconds=1)
    with pytest.raises(MediaError, match="longer than this model's limit of 1.5 seconds"):
        load_audio(part, max_seconds=30, policy=MediaPolicy(max_audio_seconds=1.5))
    with pytest.raises(MediaError, match="larger than"):
        load_audio(part, policy=MediaPolicy(max_bytes=1000))
    with pytest.raises(MediaError, match="not a supported audio file"):
        load_audio(content_pb2.AudioPart(data=b"not audio at all" * 10, format="mp3"))
    with pytest.raises(MediaError, match="empty"):
        load_audio(content_pb2.AudioPart(format="wav"))


@pytest.mark.parametrize("seconds", [1 / 16_000, 0.01, 0.099])
def test_audio_under_a_tenth_of_a_second_is_too_short(seconds):
    # a Qwen2-Audio processor makes no <|AUDIO|> token of 1-160 samples: refused, not dropped
    with pytest.raises(MediaError) as e:
        load_audio(content_pb2.AudioPart(data=wav(seconds), format="wav"))
    assert e.value.code == "audio_too_short" and "Minimum audio length is 0.1 seconds" in e.value.message
    assert load_audio(content_pb2.AudioPart(data=wav(0.1), format="wav")).shape == (1600,)


def test_sixteen_bit_grayscale_png_keeps_its_levels():
    raw = encode(Image.new("I;16", (4, 4), 32896), "PNG")  # mid-grey on 0..65535
    assert load(data=raw).getpixel((2, 2)) == (128, 128, 128)
    cmyk = encode(Image.new("CMYK", (4, 4), (0, 255, 0, 0)), "JPEG", quality=95)
    assert load(data=cmyk).mode == "RGB"


def test_load_images_keeps_order_and_names_the_failing_part():
    from server.media.resolve import load_images

    red, blue = (encode(Image.new("RGB", (2, 2), c), "PNG") for c in (RED, (0, 0, 250)))
    parts = [(f"messages[0].content[{i}]", content_pb2.ImagePart(data=d)) for i, d in enumerate([red, blue, red])]
    images = asyncio.run(load_images(parts, POLICY))
    assert [im.getpixel((0, 0)) for im in images] == [RED, (0, 0, 250), RED]
    bad = parts[:1] + [("messages[1].content[2]", content_pb2.ImagePart(url="data:image/png;base64,!!"))]
    with pytest.raises(MediaError) as e:
        asyncio.run(load_images(bad, POLICY))
    assert (e.value.param, e.value.message) == ("messages[1].content[2]", "The data: URL is not valid base64.")
    assert asyncio.run(load_images([], POLICY)) == []
