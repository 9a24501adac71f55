"""Safe fetching of media URLs: http(s) only, never into the network the server runs in.

`fetch_url(url, policy)` -> (body bytes, content type) or MediaError. How it is kept safe:

- Only `policy.allowed_schemes` (http, https); no credentials in the URL. Legacy IPv4
  forms (`2130706433`, `0x7f.1`, `017700000001`, `127.1`) are normalized with
  `socket.inet_aton` to the address they mean, then checked like any other.
- Every connection goes through `_GuardedBackend`, an httpcore network backend: it resolves
  the host itself (`getaddrinfo`), refuses when ANY resolved address is not public
  (loopback, private, link-local, CGNAT, multicast, reserved, unspecified, site-local, and
  the IPv4 address inside IPv4-mapped, 6to4, Teredo and NAT64 IPv6 addresses), and then
  connects to exactly the address it checked. Nothing resolves the name a second time, so
  a DNS answer that changes between the check and the connection (rebinding) never
  reaches the socket. TLS still verifies the certificate against the URL's hostname (SNI
  and Host are the original name). An `allow_hosts` entry skips the check for its
  destination.
- Redirects are followed by hand (at most `max_redirects`); each hop's URL is parsed and
  checked from scratch, its connection guarded the same way.
- httpcore (not httpx) is used directly: it reads no proxy settings from the environment
  (a proxy would make the connection on our behalf, past the check) and never decodes
  Content-Encoding (we ask for identity, so a gzip bomb is just bytes under the cap).
- `read_timeout_s` is a total deadline for the whole fetch; `connect_timeout_s` bounds each
  connection attempt. The body cap is enforced while streaming (reading stops at cap + 1
  byte); a Content-Length over the cap is refused before any body is read.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import urllib.parse

import httpcore

from server.media.errors import MediaError
from server.media.policy import MediaPolicy

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_NOT_ALLOWED = "The URL's host is not allowed (it is not a public internet address)."
USER_AGENT = "genapi-media-fetch/1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public_address(ip: Address) -> bool:
    """True for a globally routable unicast address; False for loopback, private,
    link-local, CGNAT (100.64/10), multicast, reserved, unspecified, documentation and
    site-local addresses, and for IPv6 addresses that embed such an IPv4 address
    (IPv4-mapped, 6to4, Teredo, NAT64)."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is exactly a.b.c.d
            return is_public_address(ip.ipv4_mapped)
        if any(ip in net for net in _NAT64):  # NAT64 (DNS64) reaches exactly the IPv4 inside
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded = [v4 for v4 in (ip.sixtofour, *(ip.teredo or ())) if v4 is not None]
        if any(not is_public_address(v4) for v4 in embedded):
            return False
        if ip.is_site_local or ip.scope_id:
            return False
    return bool(ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local
                                      or ip.is_reserved or ip.is_unspecified))


def _normalize_host(host: str) -> str:
    """The URL host as the connection will use it: an IP address in canonical form, or
    an ASCII (IDNA) hostname without a trailing dot. MediaError for a malformed host."""
    if not host:
        raise MediaError("The URL has no host.")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        # A legacy numeric IPv4 form (decimal, octal, hex, or fewer than four parts): take
        # it as the address it names, as getaddrinfo and browsers would.
        try:
            return socket.inet_ntoa(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise MediaError("The URL's host is not a valid address.") from None
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise MediaError("The URL's host is not a valid hostname.") from None
    return ascii_host.lower().rstrip(".")


class _Target:
    """One checked hop: the URL httpcore requests and the host it will connect to."""

    def __init__(self, url: str, policy: MediaPolicy):
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise MediaError("The URL is not valid.") from None
        scheme = parts.scheme.lower()
        if scheme not in policy.allowed_schemes:
            shown = f"{scheme}:" if scheme else "it has none"
            raise MediaError(f"The URL's scheme is not allowed ({shown}); use "
                             f"{' or '.join(policy.allowed_schemes)}.")
        if parts.username is not None or parts.password is not None:
            raise MediaError("URLs with credentials (user@host) are not allowed.")
        self.host = _normalize_host(parts.hostname or "")
        self.port = port or (443 if scheme == "https" else 80)
        if not 0 < self.port < 65536:
            raise MediaError("The URL's port is not valid.")
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if port:
            netloc += f":{port}"
        self.url = urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to the checked address (see the module docstring)."""

    def __init__(self, policy: MediaPolicy):
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        host = host.strip("[]")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                 proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            raise MediaError("The URL's host could not be resolved.") from None
        addresses: list[Address] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if len(sockaddr) >= 4 and sockaddr[3]:  # an IPv6 scope id: link-scoped
                ip = ipaddress.ip_address(f"{ip}%{sockaddr[3]}")
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise MediaError("The URL's host could not be resolved.")
        for ip in addresses:
            if not (self._policy.allows(host, port, ip) or is_public_address(ip)):
                raise MediaError(_NOT_ALLOWED)
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        assert error is not None
        raise error

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise MediaError(_NOT_ALLOWED)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def fetch_url(url: str, policy: MediaPolicy) -> tuple[bytes, str]:
    """GET an http(s) URL under `policy` -> (body, content type, lower case without
    parameters; "" when the server sent none). MediaError (message safe for the client)
    for a refused URL or destination, a failed connection, a non-200 answer, too many
    redirects, a body over `policy.max_bytes`, or a fetch past `policy.read_timeout_s`."""
    try:
        async with asyncio.timeout(policy.read_timeout_s):
            return await _fetch(url, policy)
    except (TimeoutError, httpcore.TimeoutException):
        raise MediaError(f"Fetching the URL timed out (the limit is {policy.read_timeout_s:g} s).") from None
    except httpcore.ConnectError as e:
        causes = _causes(e)
        if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
            raise MediaError("The URL's server has a TLS certificate that could not be verified.") from None
        if any(isinstance(c, ssl.SSLError) for c in causes):
            raise MediaError("The TLS connection to the URL's server failed.") from None
        raise MediaError("The URL's server could not be reached.") from None
    except httpcore.UnsupportedProtocol:
        raise MediaError("The URL is not valid.") from None
    except (httpcore.ProtocolError, httpcore.NetworkError, OSError):
        raise MediaError("The URL's server sent an invalid or incomplete response.") from None


def _causes(e: BaseException) -> list[BaseException]:
    """The exceptions behind `e` (httpcore and anyio wrap ssl errors)."""
    out: list[BaseException] = []
    while (e := e.__cause__ or e.__context__) is not None and len(out) < 8:
        out.append(e)
    return out


async def _fetch(url: str, policy: MediaPolicy) -> tuple[bytes, str]:
    timeouts = {"connect": policy.connect_timeout_s, "read": policy.read_timeout_s,
                "write": policy.read_timeout_s, "pool": policy.read_timeout_s}
    headers = [(b"User-Agent", USER_AGENT.encode()), (b"Accept", b"image/*, audio/*;q=0.9, */*;q=0.1"),
               (b"Accept-Encoding", b"identity")]
    ssl_context = None  # httpcore's default: certifi's CAs
    if policy.ca_file:
        try:
            ssl_context = ssl.create_default_context(cafile=policy.ca_file)
        except (OSError, ssl.SSLError):
            raise MediaError("The server cannot make https fetches (its [media] ca_file is unusable).") from None
    async with httpcore.AsyncConnectionPool(network_backend=_GuardedBackend(policy), retries=0, ssl_context=ssl_context,
                                            max_connections=1, keepalive_expiry=0) as pool:
        for _ in range(policy.max_redirects + 1):
            target = _Target(url, policy)
            extensions = {"timeout": timeouts}
            async with pool.stream("GET", target.url, headers=headers, extensions=extensions) as resp:
                if resp.status in _REDIRECTS:
                    location = _header(resp, b"location")
                    if not location:
                        raise MediaError(f"The URL answered HTTP {resp.status} without a Location.")
                    try:
                        url = urllib.parse.urljoin(target.url, location)
                    except ValueError:  # e.g. `http://[::1` (urljoin parses the authority)
                        raise MediaError("The URL redirected to a URL that is not valid.") from None
                    continue
                if resp.status != 200:
                    raise MediaError(f"The URL answered HTTP {resp.status}.")
                return await _read_body(resp, policy), _header(resp, b"content-type").split(";")[0].strip().lower()
    raise MediaError(f"The URL redirected more than {policy.max_redirects} times.")


def _header(resp: httpcore.Response, name: bytes) -> str:
    for k, v in resp.headers:
        if k.lower() == name:
            return v.decode("latin-1").strip()
    return ""


async def _read_body(resp: httpcore.Response, policy: MediaPolicy) -> bytes:
    too_large = MediaError(f"The media at the URL is larger than {policy.max_mb:g} MB.")
    length = _header(resp, b"content-length")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in resp.aiter_stream():
        body += chunk
        if len(body) > policy.max_bytes:
            raise too_large
    return bytes(body)
