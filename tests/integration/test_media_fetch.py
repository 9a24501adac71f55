"""Media URL fetching against real loopback servers (rows X4 and X5 of the reliability
plan): refused destinations never receive a connection, the allow-list lets a loopback
server through, redirects are checked hop by hop, slow and endless bodies are cut off."""
from __future__ import annotations

import asyncio
import io
import socket
import time

import pytest
from PIL import Image

from genapi.v1 import content_pb2
from server.media.errors import MediaError
from server.media.fetch import fetch_url
from server.media.policy import MediaPolicy
from server.media.resolve import load_image


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class Listener:
    """A real TCP server on loopback (IPv4, and IPv6 when `v6`); `handler(reader, writer)`
    answers each connection; `connections` counts the connections it accepted."""

    def __init__(self, handler=None, v6: bool = False):
        self.handler = handler
        self.v6 = v6
        self.connections = 0
        self.servers: list[asyncio.base_events.Server] = []
        self.port = 0

    async def __aenter__(self) -> "Listener":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.servers.append(await asyncio.start_server(self._accept, sock=sock))
        if self.v6:
            self.servers.append(await asyncio.start_server(self._accept, host="::1", port=self.port))
        return self

    async def _accept(self, reader, writer):
        self.connections += 1
        try:
            if self.handler is not None:
                await self.handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc):
        for s in self.servers:
            s.close()


async def _read_head(reader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def serve(body: bytes, content_type: str = "image/png", status: str = "200 OK"):
    async def handler(reader, writer):
        await _read_head(reader)
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
    return handler


def redirect(location: str, status: str = "302 Found"):
    async def handler(reader, writer):
        await _read_head(reader)
        writer.write(f"HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
    return handler


def refused(url: str, policy: MediaPolicy) -> str:
    async def go():
        return await fetch_url(url, policy)
    with pytest.raises(MediaError) as e:
        asyncio.run(go())
    return e.value.message


POLICY = MediaPolicy(connect_timeout_s=2, read_timeout_s=5)


# --- X4: SSRF ---------------------------------------------------------------------------

@pytest.mark.parametrize("template", [
    "http://127.0.0.1:{port}/img.png",
    "http://[::1]:{port}/img.png",
    "http://2130706433:{port}/",  # decimal 127.0.0.1
    "http://0x7f.1:{port}/",  # hex, two parts
    "http://017700000001:{port}/",  # octal
    "http://127.1:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped IPv6
    "http://localhost:{port}/",  # a name resolving to loopback
    "http://LOCALHOST.:{port}/",
    "https://127.0.0.1:{port}/",
])
def test_loopback_destinations_are_refused_without_a_connection(template):
    async def go():
        async with Listener(serve(PNG), v6=True) as lis:
            with pytest.raises(MediaError) as e:
                await fetch_url(template.format(port=lis.port), POLICY)
            return e.value.message, lis.connections
    message, connections = asyncio.run(go())
    assert connections == 0
    assert "not allowed" in message
    assert "127.0.0.1" not in message and "::1" not in message


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://192.168.1.1:8080/",
                                 "http://100.64.0.1/", "http://0.0.0.0/", "http://[fe80::1]/", "http://[fc00::1]/",
                                 "http://224.0.0.1/", "http://[2002:7f00:1::]/"])
def test_private_and_reserved_addresses_are_refused_fast(url):
    start = time.monotonic()
    assert "not allowed" in refused(url, POLICY)
    assert time.monotonic() - start < 1  # refused before any connection attempt (no connect timeout)


@pytest.mark.parametrize("url,word", [("file:///etc/passwd", "scheme"), ("gopher://127.0.0.1:70/", "scheme"),
                                      ("ftp://example.com/a.png", "scheme"), ("//example.com/a.png", "scheme"),
                                      ("http://user:pw@example.com/", "credentials"), ("http://1.2.3.4.5/", "valid"),
                                      ("http://[::1/", "valid"), ("http://127.0.0.1:99999/", "valid")])
def test_bad_schemes_and_urls_are_refused(url, word):
    assert word in refused(url, POLICY)


def test_the_allow_list_lets_a_loopback_server_through():
    async def go():
        async with Listener(serve(PNG)) as lis:
            policy = MediaPolicy(allow_hosts=(f"127.0.0.1:{lis.port}",), read_timeout_s=5)
            body, ctype = await fetch_url(f"http://127.0.0.1:{lis.port}/x.png", policy)
            image = await load_image(content_pb2.ImagePart(url=f"http://127.0.0.1:{lis.port}/x.png"), policy)
            return body, ctype, image.size, lis.connections
    body, ctype, size, connections = asyncio.run(go())
    assert (body, ctype, size, connections) == (PNG, "image/png", (5, 4), 2)


@pytest.mark.parametrize("allow", ["127.0.0.0/8", "localhost"])
def test_allow_list_by_network_and_by_name(allow):
    async def go():
        async with Listener(serve(PNG)) as lis:
            return await fetch_url(f"http://localhost:{lis.port}/", MediaPolicy(allow_hosts=(allow,)))
    assert asyncio.run(go())[0] == PNG


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/secret", "http://localhost:{port}/", "http://[::1]:{port}/",
                                    "http://0x7f000001:{port}/"])
def test_a_redirect_to_a_loopback_port_that_is_not_allowed_gets_no_connection(target):
    async def go():
        async with Listener(serve(b"secret"), v6=True) as inner:
            async with Listener(redirect(target.format(port=inner.port))) as outer:
                policy = MediaPolicy(allow_hosts=(f"127.0.0.1:{outer.port}",))
                with pytest.raises(MediaError) as e:
                    await fetch_url(f"http://127.0.0.1:{outer.port}/img.png", policy)
                return e.value.message, outer.connections, inner.connections
    message, outer, inner = asyncio.run(go())
    assert "not allowed" in message and (outer, inner) == (1, 0)


def test_redirects_are_followed_within_the_limit_and_refused_past_it():
    async def go():
        async with Listener(serve(PNG)) as final:
            async with Listener(redirect(f"http://127.0.0.1:{final.port}/", "307 Temporary Redirect")) as hop:
                allow = (f"127.0.0.1:{final.port}", f"127.0.0.1:{hop.port}")
                ok = await fetch_url(f"http://127.0.0.1:{hop.port}/", MediaPolicy(allow_hosts=allow))
                with pytest.raises(MediaError) as e:
                    await fetch_url(f"http://127.0.0.1:{hop.port}/", MediaPolicy(allow_hosts=allow, max_redirects=0))
                return ok[0], e.value.message
    body, message = asyncio.run(go())
    assert body == PNG and "redirected more than 0 times" in message


def test_redirect_loops_and_redirects_to_file_are_refused():
    async def go():
        results = []
        async with Listener() as lis:
            lis.handler = redirect(f"http://127.0.0.1:{lis.port}/again")
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", MediaPolicy(allow_hosts=(f"127.0.0.1:{lis.port}",)))
            results.append((e.value.message, lis.connections))
        async with Listener(redirect("file:///etc/passwd")) as lis:
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", MediaPolicy(allow_hosts=(f"127.0.0.1:{lis.port}",)))
            results.append((e.value.message, lis.connections))
        return results
    (loop_msg, loop_conns), (file_msg, _) = asyncio.run(go())
    assert "redirected more than 5 times" in loop_msg and loop_conns == 6
    assert "scheme" in file_msg


@pytest.mark.parametrize("location", ["http://[::1", "http://[zz]/", "https://[1::2::3]/"])
def test_a_redirect_to_a_malformed_url_is_a_media_error(location):
    async def go():
        async with Listener(redirect(location)) as lis:
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", MediaPolicy(allow_hosts=(f"127.0.0.1:{lis.port}",)))
            return e.value.message
    assert "not valid" in asyncio.run(go())


def test_a_closed_port_is_a_media_error():
    async def go():
        async with Listener() as lis:
            port = lis.port
        with pytest.raises(MediaError) as e:  # the listener is gone: nothing listens there now
            await fetch_url(f"http://127.0.0.1:{port}/", MediaPolicy(allow_hosts=("127.0.0.1",)))
        return e.value.message
    assert asyncio.run(go()) == "The URL's server could not be reached."


def test_an_error_status_is_a_media_error():
    async def go():
        async with Listener(serve(b"nope", "text/plain", "404 Not Found")) as lis:
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", MediaPolicy(allow_hosts=("127.0.0.1",)))
            return e.value.message
    assert asyncio.run(go()) == "The URL answered HTTP 404."


# --- X5: remote media limits --------------------------------------------------------------

def test_a_server_sending_one_byte_per_second_is_cut_off_at_the_read_timeout():
    async def trickle(reader, writer):
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.5)

    async def go():
        async with Listener(trickle) as lis:
            policy = MediaPolicy(allow_hosts=("127.0.0.1",), read_timeout_s=1.5)
            start = time.monotonic()
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", policy)
            return e.value.message, time.monotonic() - start
    message, elapsed = asyncio.run(go())
    assert "timed out" in message and "1.5 s" in message
    assert 1.4 < elapsed < 3


def test_a_server_that_never_answers_is_cut_off_at_the_read_timeout():
    async def silent(reader, writer):
        await asyncio.sleep(60)

    async def go():
        async with Listener(silent) as lis:
            start = time.monotonic()
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", MediaPolicy(allow_hosts=("127.0.0.1",), read_timeout_s=1))
            return e.value.message, time.monotonic() - start
    message, elapsed = asyncio.run(go())
    assert "timed out" in message and elapsed < 2.5


def test_an_endless_body_is_cut_at_the_cap():
    sent = []

    async def endless(reader, writer):
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
        total = 0
        while total < 10 * 1024**3:
            writer.write(chunk)
            await writer.drain()
            total += 65536
            sent.append(total)

    async def go():
        async with Listener(endless) as lis:
            policy = MediaPolicy(allow_hosts=("127.0.0.1",), max_bytes=1024 * 1024, read_timeout_s=10)
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", policy)
            return e.value.message
    assert asyncio.run(go()) == "The media at the URL is larger than 1 MB."
    assert sent[-1] < 64 * 1024 * 1024  # the client stopped reading and closed (buffers aside)


def test_a_content_length_over_the_cap_is_refused_before_reading():
    async def huge(reader, writer):
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10737418240\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(60)  # never sends the body: only the header can end the fetch in time

    async def go():
        async with Listener(huge) as lis:
            policy = MediaPolicy(allow_hosts=("127.0.0.1",), max_bytes=1024 * 1024, read_timeout_s=10)
            start = time.monotonic()
            with pytest.raises(MediaError) as e:
                await fetch_url(f"http://127.0.0.1:{lis.port}/", policy)
            return e.value.message, time.monotonic() - start
    message, elapsed = asyncio.run(go())
    assert message == "The media at the URL is larger than 1 MB." and elapsed < 5


def test_the_servers_content_type_is_checked_only_when_it_is_an_image_type():
    async def go(ctype):
        async with Listener(serve(PNG, ctype)) as lis:
            part = content_pb2.ImagePart(url=f"http://127.0.0.1:{lis.port}/x")
            return await load_image(part, MediaPolicy(allow_hosts=("127.0.0.1",)))
    assert asyncio.run(go("application/octet-stream")).size == (5, 4)
    assert asyncio.run(go("text/plain; charset=utf-8")).size == (5, 4)
    with pytest.raises(MediaError, match="Unsupported image type image/tiff"):
        asyncio.run(go("image/tiff"))


def _self_signed(tmp_path) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_sends_the_hostname_as_sni_and_verifies_the_certificate(tmp_path):
    """The TCP connection goes to the checked address, yet TLS is for the URL's hostname:
    the server sees SNI "localhost", and a certificate no CA signed is refused."""
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)

    async def go():
        lis = Listener(serve(PNG))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        lis.port = sock.getsockname()[1]
        server = await asyncio.start_server(lis._accept, sock=sock, ssl=server_ctx)
        try:
            url = f"https://localhost:{lis.port}/x.png"
            with pytest.raises(MediaError) as e:
                await fetch_url(url, MediaPolicy(allow_hosts=("localhost",)))
            trusted = await fetch_url(url, MediaPolicy(allow_hosts=("localhost",), ca_file=cert))
            with pytest.raises(MediaError) as wrong_name:  # a certificate for localhost, not 127.0.0.1
                await fetch_url(f"https://127.0.0.1:{lis.port}/", MediaPolicy(allow_hosts=("127.0.0.1",), ca_file=cert))
            return e.value.message, trusted, wrong_name.value.message
        finally:
            server.close()
    untrusted, trusted, wrong_name = asyncio.run(go())
    assert untrusted == wrong_name == "The URL's server has a TLS certificate that could not be verified."
    assert trusted == (PNG, "image/png")
    assert sni[:2] == ["localhost", "localhost"]
