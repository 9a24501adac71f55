"""Image decoding with Pillow, with every size check made from the header first.

Supported formats: PNG, JPEG, WebP and GIF (first frame; animated WebP too). Anything else,
including TIFF, BMP, SVG and HEIC, is refused: only these four of Pillow's decoders ever
see client bytes (`Image.open(formats=...)`). A declared MIME type outside
SUPPORTED_MIME_TYPES is refused before decoding; a missing or generic one
(application/octet-stream) is sniffed; a wrong but supported one does not matter (the
bytes decide).
"""
from __future__ import annotations

import io
import warnings

from server.media.errors import MediaError, detached
from server.media.policy import MediaPolicy

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
SUPPORTED_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp", "image/gif"})
_GENERIC_MIME_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_SUPPORTED_TEXT = "PNG, JPEG, WebP or GIF"
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# Longest side kept after decoding: every vision processor served here resizes far below
# it (LLaVA 336, Pixtral/Mistral 3 at most 1540, Qwen2-VL's default max ~1.3k), so a
# 40-megapixel upload costs its decode, then a few MB, not hundreds per colour copy.
WORKING_SIDE = 2048


def check_mime_type(mime_type: str) -> None:
    """MediaError when a declared MIME type is neither supported nor generic."""
    mime = (mime_type or "").split(";")[0].strip().lower()
    if mime not in SUPPORTED_MIME_TYPES and mime not in _GENERIC_MIME_TYPES:
        shown = mime if len(mime) <= 64 and mime.isprintable() else "this type"
        raise MediaError(f"Unsupported image type {shown}: send {_SUPPORTED_TEXT}.")


def decode_image(data: bytes, policy: MediaPolicy, mime_type: str = ""):
    """See _decode_image; its MediaError comes `detached` (without the frames that hold
    `data`)."""
    try:
        return _decode_image(data, policy, mime_type)
    except MediaError as e:
        error = e
    data = None
    raise detached(error)


def _decode_image(data: bytes, policy: MediaPolicy, mime_type: str = ""):
    """Bytes -> a fully loaded RGB `PIL.Image.Image` (transparent pixels on white; EXIF
    orientation applied; longest side at most WORKING_SIDE). MediaError for an unsupported declared MIME type, bytes that
    are not a supported image, more than `policy.max_image_pixels` pixels, a side over
    `policy.max_image_side`, an aspect ratio over `policy.max_image_aspect` (all three
    read from the header before any pixel is decoded), or data that does not decode
    (truncated or corrupt)."""
    from PIL import Image, ImageOps

    check_mime_type(mime_type)
    if not data:
        raise MediaError("The image is empty.")
    if len(data) > policy.max_bytes:
        raise MediaError(f"The image is larger than {policy.max_mb:g} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError:
        raise MediaError(f"The image has more than {policy.max_image_pixels:,} pixels.") from None
    except Exception:  # Pillow raises UnidentifiedImageError, SyntaxError, struct.error, ...
        raise MediaError(f"The data is not a supported image ({_SUPPORTED_TEXT}).") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise MediaError("The image has no pixels.")
        if width * height > policy.max_image_pixels:
            raise MediaError(f"The image is {width}x{height}: more than {policy.max_image_pixels:,} pixels.")
        if max(width, height) > policy.max_image_side:
            raise MediaError(f"The image is {width}x{height}: a side is longer than {policy.max_image_side} pixels.")
        if max(width, height) / min(width, height) > policy.max_image_aspect:
            raise MediaError(f"The image is {width}x{height}: its aspect ratio is over {policy.max_image_aspect:g}.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.seek(0)
                img.draft("RGB", (WORKING_SIDE, WORKING_SIDE))  # JPEG: decode at a reduced scale
                img.load()
                img = ImageOps.exif_transpose(img) or img
                if img.mode in _SIXTEEN_BIT_MODES:  # 16-bit grayscale PNG: 0..65535, not 0..255
                    import numpy as np

                    img = Image.fromarray((np.asarray(img, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8), "L")
                if max(img.size) > WORKING_SIDE:
                    img.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BICUBIC)  # in place, before any copy
                if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    out = Image.alpha_composite(background, rgba).convert("RGB")
                else:
                    out = img.convert("RGB")
                out.load()
        except MemoryError:
            raise MediaError("The image is too large to decode.") from None
        except Exception:  # OSError "image file is truncated", SyntaxError, ValueError, ...
            raise MediaError("The image data is truncated or corrupt.") from None
    return out
