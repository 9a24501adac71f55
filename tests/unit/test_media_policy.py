"""The [media] config table, MediaPolicy.from_config, the allow-list forms and the
public-address rule of the media fetcher."""
from __future__ import annotations

import ipaddress

import pytest

from genapi.config import load_config
from server.media.fetch import is_public_address
from server.media.policy import MB, MediaPolicy

MEDIA_ENV = ("GENAPI_MEDIA_ALLOW_HOSTS", "GENAPI_MEDIA_FETCH_TIMEOUT_S", "GENAPI_MEDIA_MAX_MB",
             "GENAPI_MEDIA_MAX_IMAGES", "GENAPI_MEDIA_CONNECT_TIMEOUT_S")


@pytest.fixture
def clean_env(monkeypatch):
    for var in MEDIA_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_media_table_and_env_overrides(tmp_path, clean_env):
    f = tmp_path / "m.toml"
    f.write_text('[media]\nallow_hosts = ["127.0.0.1:8080", "10.0.0.0/8", "images.internal"]\n'
                 'fetch_timeout_s = 3\nmax_mb = 2.5\nmax_images = 2\nmax_image_pixels = 1000000\nmax_audio_s = 0\n')
    p = MediaPolicy.from_config(load_config(f))
    assert p.allow_hosts == ("127.0.0.1:8080", "10.0.0.0/8", "images.internal")
    assert (p.read_timeout_s, p.max_bytes, p.max_images, p.max_image_pixels) == (3.0, int(2.5 * MB), 2, 1_000_000)
    assert p.max_audio_seconds is None and p.connect_timeout_s == 5.0 and p.max_redirects == 5
    clean_env.setenv("GENAPI_MEDIA_ALLOW_HOSTS", "127.0.0.1, [::1]:9000")
    clean_env.setenv("GENAPI_MEDIA_MAX_IMAGES", "16")
    p = MediaPolicy.from_config(load_config(f))
    assert p.allow_hosts == ("127.0.0.1", "[::1]:9000") and p.max_images == 16


def test_defaults(tmp_path, clean_env):
    f = tmp_path / "e.toml"
    f.write_text("")
    assert MediaPolicy.from_config(load_config(f)) == MediaPolicy()
    assert MediaPolicy().max_bytes == 20 * MB and MediaPolicy().max_images == 8


@pytest.mark.parametrize("text,error", [
    ('[media]\nallow_host = ["x"]\n', "did you mean 'allow_hosts'"),
    ('[media]\nallow_hosts = "127.0.0.1"\n', "must be a list"),
    ('[media]\nallow_hosts = ["10.0.0.0/8:80"]\n', "allow_hosts entry"),
    ('[media]\nallow_hosts = ["bad host!"]\n', "allow_hosts entry"),
    ('[media]\nallow_hosts = ["127.0.0.1:0"]\n', "allow_hosts entry"),
    ('[media]\nfetch_timeout_s = 0\n', "fetch_timeout_s = 0.0: must be >= 0.001"),
    ('[media]\nmax_images = -1\n', "max_images = -1"),
    ('[media]\nmax_mb = "big"\n', "must be a number"),
])
def test_bad_media_settings_are_refused(tmp_path, clean_env, text, error):
    f = tmp_path / "b.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(".", r"\.")):
        load_config(f)


def test_allow_list_forms():
    p = MediaPolicy(allow_hosts=("127.0.0.1:8080", "[::1]:9", "10.0.0.0/8", "Images.Internal", "a.example:81"))
    ip = ipaddress.ip_address
    assert p.allows("127.0.0.1", 8080, ip("127.0.0.1")) and not p.allows("127.0.0.1", 8081, ip("127.0.0.1"))
    assert p.allows("::1", 9, ip("::1")) and not p.allows("::1", 10, ip("::1"))
    assert p.allows("whatever", 1, ip("10.1.2.3")) and not p.allows("whatever", 1, ip("11.1.2.3"))
    assert p.allows("images.internal.", 443, ip("192.168.0.9"))  # a name entry: whatever it resolves to
    assert p.allows("a.example", 81, ip("127.0.0.1")) and not p.allows("a.example", 80, ip("127.0.0.1"))
    assert not p.allows("other.example", 80, ip("127.0.0.1"))


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
    ("127.0.0.1", False), ("127.255.0.1", False), ("10.1.1.1", False), ("172.16.0.1", False),
    ("192.168.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("239.255.255.250", False), ("240.0.0.1", False), ("255.255.255.255", False),
    ("192.0.2.1", False), ("198.18.0.1", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fc00::1", False), ("fd12::1", False), ("fec0::1", False), ("ff02::1", False), ("2001:db8::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False), ("2002:a00:1::", False),
    ("64:ff9b::7f00:1", False), ("64:ff9b::a9fe:a9fe", False),
])
def test_public_addresses(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public
