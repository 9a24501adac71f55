"""MediaPolicy: the limits every fetched or decoded media part is held to ([media] config).

Timeouts: `connect_timeout_s` bounds each TCP (and TLS) connection attempt;
`read_timeout_s` is the TOTAL deadline of one fetch, from the first connection to the
last body byte, over every redirect hop (each single read is bounded by it too). A total
deadline, not an idle one, is what stops a server that trickles one byte a second.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from genapi.allow_hosts import AllowEntry, parse_allow_entry

MB = 1024 * 1024


@dataclass(frozen=True)
class MediaPolicy:
    """Limits for fetching and decoding media parts.

    allow_hosts: the operator's allow-list: destinations that skip the private-address
        check. Each entry is an address or CIDR network ("127.0.0.1", "10.0.0.0/8",
        "fd00::/8"), matching the resolved address on any port; an address with a port
        ("127.0.0.1:8080", "[::1]:8080"); or a hostname, optionally with a port
        ("images.internal", "images.internal:8443"), matching the URL's host exactly
        (case-insensitive, trailing dot ignored), whatever it resolves to.
    allowed_schemes: URL schemes that are fetched (data: URLs are decoded, never fetched).
    connect_timeout_s / read_timeout_s: see the module docstring (seconds).
    max_bytes: the largest media body (fetched, data: URL or raw bytes), in bytes.
    max_redirects: redirect hops followed per fetch (each checked like the first URL).
    max_images: image parts per request.
    max_image_pixels: width × height cap, checked from the header before decoding.
    max_image_side: the longest side in pixels; max_image_aspect: longest/shortest side.
    max_audio_seconds: the longest audio part (None: the model's own limit only).
    max_audio_parts: audio parts per request; max_audio_total_seconds: all of a request's
        audio parts together (decoded float32 samples and the processor's features grow
        with both, whatever the compressed body weighed).
    ca_file: a PEM bundle of CAs trusted for https fetches instead of the default
        (certifi's) bundle, e.g. an internal CA ("" = the default).
    """

    allow_hosts: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ("http", "https")
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    max_bytes: int = 20 * MB
    max_redirects: int = 5
    max_images: int = 8
    max_image_pixels: int = 40_000_000
    max_image_side: int = 16_384
    max_image_aspect: float = 200.0
    max_audio_seconds: float | None = 600.0
    max_audio_parts: int = 8
    max_audio_total_seconds: float = 600.0
    ca_file: str = ""

    def __post_init__(self):
        for entry in self.allow_hosts:
            parse_allow_entry(entry)  # ValueError for an unusable entry

    @classmethod
    def from_config(cls, cfg) -> "MediaPolicy":
        """The policy of a loaded `genapi.config.Config` (its media_* attributes)."""
        return cls(
            allow_hosts=tuple(cfg.media_allow_hosts),
            connect_timeout_s=cfg.media_connect_timeout_s,
            read_timeout_s=cfg.media_fetch_timeout_s,
            max_bytes=int(cfg.media_max_mb * MB),
            max_redirects=cfg.media_max_redirects,
            max_images=cfg.media_max_images,
            max_image_pixels=cfg.media_max_image_pixels,
            max_image_side=cfg.media_max_image_side,
            max_audio_seconds=cfg.media_max_audio_s or None,
            max_audio_parts=cfg.media_max_audio_parts,
            max_audio_total_seconds=cfg.media_max_audio_total_s,
            ca_file=cfg.media_ca_file,
        )

    @property
    def max_mb(self) -> float:
        return self.max_bytes / MB

    def allows(self, host: str, port: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True when an allow_hosts entry lets this URL host (as written, lower case),
        port and resolved address through."""
        name = host.lower().rstrip(".")
        for net, entry_name, entry_port in _entries(self.allow_hosts):
            if entry_port is not None and entry_port != port:
                continue
            if net is not None and address.version == net.version and address in net:
                return True
            if entry_name is not None and entry_name == name:
                return True
        return False


_CACHE: dict[tuple[str, ...], list[AllowEntry]] = {}


def _entries(allow_hosts: tuple[str, ...]) -> list[AllowEntry]:
    entries = _CACHE.get(allow_hosts)
    if entries is None:
        entries = _CACHE[allow_hosts] = [parse_allow_entry(e) for e in allow_hosts]
    return entries
