"""data: URLs (RFC 2397) -> bytes and MIME type, with the size cap checked first."""
from __future__ import annotations

import base64
import binascii
import urllib.parse

from server.media.errors import MediaError
from server.media.policy import MediaPolicy


def parse_data_url(url: str, policy: MediaPolicy) -> tuple[bytes, str]:
    """`data:[<mime>][;base64],<payload>` -> (bytes, MIME type lower case; "" if none).

    Base64 payloads may omit their padding and contain whitespace; any other character
    is refused. MediaError for a URL that is not a data: URL, bad base64, an empty
    payload, or a payload over `policy.max_bytes` (checked before decoding)."""
    if not url[:5].lower() == "data:":
        raise MediaError("The URL is not a data: URL.")
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError("The data: URL has no ',' before its data.")
    params = [p.strip() for p in header.split(";")]
    mime = params[0].lower()
    is_base64 = any(p.lower() == "base64" for p in params[1:])
    too_large = MediaError(f"The data: URL's content is larger than {policy.max_mb:g} MB.")
    if is_base64:
        text = "".join(payload.split())
        if len(text) // 4 * 3 > policy.max_bytes + 3:
            raise too_large
        text += "=" * (-len(text) % 4)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("The data: URL is not valid base64.") from None
    else:
        if len(payload) > 3 * policy.max_bytes:
            raise too_large
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise MediaError("The data: URL is empty.")
    if len(data) > policy.max_bytes:
        raise too_large
    return data, mime
