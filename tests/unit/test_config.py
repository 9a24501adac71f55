import pytest

from server.config import Config, hash_key, is_loopback, load_config


def test_core_target_forms():
    assert Config(core_port=1234).core_target == "127.0.0.1:1234"
    assert Config(core_targets=["dns:///core.internal:50051"]).core_target == "dns:///core.internal:50051"
    assert Config(core_targets=["10.0.0.5:50051", "10.0.0.6:50051"]).core_target == "ipv4:10.0.0.5:50051,10.0.0.6:50051"
    with pytest.raises(ValueError, match="dns:///"):
        Config(core_targets=["a.internal:50051", "b.internal:50051"]).core_target


def test_env_overrides_and_keys(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[auth]\napi_key_sha256 = ["%s"]\n[[models]]\nname = "m"\npath = "rel/dir"\n' % hash_key("a").upper())
    monkeypatch.setenv("GENAPI_API_KEYS", "b, c")
    monkeypatch.setenv("GENAPI_PORT", "9001")
    monkeypatch.setenv("GENAPI_CORE", "10.0.0.1:1,10.0.0.2:2")
    cfg = load_config(cfg_file)
    assert cfg.api_key_sha256 == [hash_key(k) for k in "abc"]
    assert cfg.shim_port == 9001
    assert cfg.core_targets == ["10.0.0.1:1", "10.0.0.2:2"]
    assert cfg.models[0].path == str(tmp_path / "rel" / "dir")  # relative to the config file


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("example.com")
