"""Generate small, deterministic Hugging Face chat checkpoints of a real architecture.

The embedded default chat model of genapi is not downloaded: it is built here, from
text shipped in `tools/assets/corpus/`, in a few seconds on a CPU.

* Tokenizer: a byte-level BPE (GPT-2 style: every byte is encodable) trained with the
  `tokenizers` library on the corpus; special tokens `<|endoftext|>` (pad),
  `<|im_start|>` and `<|im_end|>` (end of turn, EOS) and a ChatML chat template
  (`tools/assets/chat_template.jinja`).
* Model: `LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU, grouped-query attention) with seeded
  random weights, rescaled so that the next-token distribution is peaked (logit std ~3),
  the special tokens (`<|im_end|>` included), padding rows and ASCII control bytes get
  logits near -30 (never chosen, so generations run to max_tokens unless a stop string
  hits), and greedy decoding does not get stuck repeating one token.

The text it produces is meaningless, but every real code path (tokenizer, chat template,
KV cache, GQA, sampling, stop strings, batching) is exercised. Building is idempotent:
a `genapi_fingerprint.json` records what the directory was built from, and a rebuild is
skipped when nothing changed.

    python -m tools.tiny_models --out models/tiny-chat [--preset tiny|bench|1b]
                                 [--dtype float32|bfloat16] [--force]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CORPUS_DIR = ASSETS_DIR / "corpus"
CHAT_TEMPLATE_FILE = ASSETS_DIR / "chat_template.jinja"
FINGERPRINT_FILE = "genapi_fingerprint.json"
FORMAT_VERSION = 1  # bump to force every existing checkpoint to be rebuilt

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)  # ids 0, 1, 2
TOKENIZER_VOCAB = 4096

SEED = 0
INIT_STD = 0.02
TARGET_LOGIT_STD = 3.0  # of the next-token logits, after rescaling lm_head
MASKED_LOGIT = -30.0  # (about) the highest logit of special, padding and control-byte tokens
BIAS_CHANNEL_VALUE = 1.0
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    context: int
    min_vocab: int = 0  # pad the embedding to at least this many rows
    vocab_multiple: int = 1  # and to a multiple of this
    default_dtype: str = "float32"


PRESETS: dict[str, Preset] = {
    # The embedded default: ~5M parameters, milliseconds per token on a CPU.
    "tiny": Preset(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=704, context=2048),
    # ~28M parameters: CPU throughput benchmarks.
    "bench": Preset(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1408, context=2048),
    # ~1.1B parameters (32000-row embedding, like Llama-2/TinyLlama): GPU roofline benchmarks.
    "1b": Preset(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, context=4096,
                 min_vocab=32000, vocab_multiple=64, default_dtype="bfloat16"),
}

# Prompts used to measure the logit scale; fixed, so the rescaling is deterministic.
_CALIBRATION_CONVERSATIONS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a short poem about the sea and the wind."}],
    [{"role": "user", "content": "How do I read a TOML file in Python? Keep it brief."}],
    [{"role": "user", "content": "Quelle heure est-il à Zürich quand il est midi à 東京 ? 🙂"}],
]


def _log(msg: str) -> None:
    print(f"[tiny_models] {msg}", flush=True)


# --------------------------------------------------------------------------- fingerprint

def _asset_files() -> list[Path]:
    corpus = sorted(CORPUS_DIR.glob("*.txt"))
    if not corpus:
        raise FileNotFoundError(f"no corpus files in {CORPUS_DIR}")
    return [Path(__file__).resolve(), CHAT_TEMPLATE_FILE, *corpus]


def fingerprint(preset: str, dtype: str) -> dict:
    """What a checkpoint directory is a pure function of."""
    h = hashlib.sha256()
    for path in _asset_files():
        data = path.read_bytes()
        name = path.relative_to(ASSETS_DIR.parent).as_posix().encode()
        h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
    return {
        "format": FORMAT_VERSION,
        "preset": preset,
        "dtype": dtype,
        "sources_sha256": h.hexdigest(),
    }


def _read_fingerprint(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_up_to_date(out_dir: str | os.PathLike, preset: str = "tiny", dtype: str | None = None) -> bool:
    dtype = dtype or PRESETS[preset].default_dtype
    return _read_fingerprint(Path(out_dir)) == fingerprint(preset, dtype)


# --------------------------------------------------------------------------- tokenizer

def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS_DIR.glob("*.txt"))]


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB):
    """Byte-level BPE trained on the shipped corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def _tokenizer_config(context: int, chat_template: str) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        "chat_template": chat_template,
    }


def write_tokenizer(out_dir: Path, context: int) -> "object":
    tok = train_tokenizer()
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)
    chat_template = CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(context, chat_template))
    _write_json(out_dir / "special_tokens_map.json",
                {"eos_token": IM_END, "pad_token": PAD_TOKEN})
    # transformers >= 4.43 prefers a separate file; both hold the same template.
    (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return tok


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- model

def _padded_vocab(n_tokens: int, p: Preset) -> int:
    v = max(n_tokens, p.min_vocab)
    return -(-v // p.vocab_multiple) * p.vocab_multiple


def _make_config(p: Preset, vocab_size: int, dtype: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        head_dim=p.hidden // p.heads,
        max_position_embeddings=p.context,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(IM_END),
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        use_cache=True,
        dtype=dtype,
    )


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# Per-parameter init scale (multiples of INIT_STD). Larger q/k make attention peaked and
# position-dependent instead of a flat average over the context (which makes a random
# model's output converge to one token); larger embeddings keep the current token visible
# in the residual stream.
_INIT_SCALE = {
    "embed_tokens": 10.0,
    "q_proj": 5.0,
    "k_proj": 5.0,
    "v_proj": 1.0,
    "o_proj": 1.0,
    "gate_proj": 1.0,
    "up_proj": 1.0,
    "down_proj": 1.0,
    "lm_head": 1.0,
}


def _init_weights(model) -> None:
    """Seeded init that does not depend on the order transformers initialises modules."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() == 1:  # RMSNorm weights
                param.fill_(1.0)
                continue
            kind = name.split(".")[-2]
            std = INIT_STD * _INIT_SCALE.get(kind, 1.0)
            # Sample in float32 so the weights do not depend on the target dtype.
            param.copy_(torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))


def _calibration_ids(tokenizer) -> list[list[int]]:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    template = env.from_string(CHAT_TEMPLATE_FILE.read_text(encoding="utf-8"))
    texts = [template.render(messages=c, add_generation_prompt=True) for c in _CALIBRATION_CONVERSATIONS]
    texts.append(corpus_texts()[0][:2000])
    return [tokenizer.encode(t).ids for t in texts]


def _add_bias_channel(model) -> int:
    """Reserve the last hidden dimension as a constant, always-positive channel.

    Llama has no output bias; this gives lm_head one. Every token embedding carries the
    same value there and no layer writes to it, so after the final RMSNorm it is positive
    at every position, and an lm_head row that is negative only in this column gets a
    negative logit whatever the context.
    """
    import torch

    d = model.config.hidden_size - 1
    with torch.no_grad():
        model.model.embed_tokens.weight[:, d] = BIAS_CHANNEL_VALUE
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[d, :] = 0
            layer.mlp.down_proj.weight[d, :] = 0
        model.lm_head.weight[:, d] = 0
    return d


def _control_byte_ids(tokenizer) -> list[int]:
    """Tokens of the ASCII control bytes other than tab and newline (kept out of outputs)."""
    ids = []
    for b in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]:
        enc = tokenizer.encode(chr(b)).ids
        assert len(enc) == 1, (b, enc)
        ids.append(enc[0])
    return ids


def _shape_outputs(model, tokenizer, n_tokens: int) -> float:
    """Rescale lm_head for peaked logits; make special, padding and control-byte rows unselectable."""
    import torch

    d = _add_bias_channel(model)
    lm = model.lm_head.weight
    special = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    masked = torch.zeros(lm.shape[0], dtype=torch.bool)
    masked[special] = True
    masked[n_tokens:] = True
    masked[_control_byte_ids(tokenizer)] = True
    normed = []
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: normed.append(out[0, :, d]))
    with torch.no_grad():
        lm[masked] = 0
        stds = []
        try:
            for ids in _calibration_ids(tokenizer):
                logits = model(torch.tensor([ids])).logits[0].float()
                stds.append(logits[:, ~masked].std(dim=-1).mean())
        finally:
            hook.remove()
        std = float(torch.stack(stds).mean())
        bias = float(torch.cat(normed).float().min())
        assert bias > 0, bias
        # Quantised, so that the last bits of a CPU's float arithmetic cannot change the weights.
        scale = round(TARGET_LOGIT_STD / std * 16) / 16
        lm.mul_(scale)
        # Masked rows: logit <= MASKED_LOGIT at every calibration position
        # (top logits are ~+10): never the greedy choice, ~e-40 when sampling at T=1.
        lm[masked, d] = round(MASKED_LOGIT / bias * 16) / 16
    return scale


def build_model(p: Preset, tokenizer, dtype: str):
    import torch
    from transformers import LlamaForCausalLM

    torch_dtype = getattr(torch, dtype)
    n_tokens = tokenizer.get_vocab_size()
    config = _make_config(p, _padded_vocab(n_tokens, p), dtype)
    torch.manual_seed(SEED)
    with _default_dtype(torch_dtype):
        model = LlamaForCausalLM(config)
    _init_weights(model)
    model.eval()
    scale = _shape_outputs(model, tokenizer, n_tokens)
    return model, scale


# --------------------------------------------------------------------------- build

@contextlib.contextmanager
def _lock(out_dir: Path):
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(out_dir: str | os.PathLike, preset: str = "tiny", dtype: str | None = None,
          force: bool = False) -> Path:
    """Build (or reuse) the checkpoint for `preset` in `out_dir`; return its path.

    `dtype` defaults to the preset's (float32 for tiny/bench, bfloat16 for 1b).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    dtype = dtype or p.default_dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    out = Path(out_dir).resolve()
    fp = fingerprint(preset, dtype)
    if not force and _read_fingerprint(out) == fp:
        _log(f"{out} up to date ({preset}, {dtype})")
        return out
    if out.exists() and (not out.is_dir() or (
            any(out.iterdir()) and not (out / FINGERPRINT_FILE).exists())):
        # Never replace something this module did not generate (e.g. a real checkpoint).
        raise FileExistsError(f"{out} exists and is not a genapi tiny checkpoint; refusing to overwrite it")

    with _lock(out):
        if not force and _read_fingerprint(out) == fp:  # built by a concurrent caller
            _log(f"{out} up to date ({preset}, {dtype})")
            return out
        t0 = time.perf_counter()
        _log(f"building {preset} ({dtype}) checkpoint in {out} ...")
        for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):  # left by an interrupted build
            for stale in out.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            tokenizer = write_tokenizer(tmp, p.context)
            model, scale = build_model(p, tokenizer, dtype)
            _save_model(model, tmp)
            n_params = sum(t.numel() for t in model.parameters())
            _write_readme(tmp, preset, p, dtype, n_params, tokenizer.get_vocab_size(),
                          model.config.vocab_size)
            _write_json(tmp / FINGERPRINT_FILE, fp)  # last: marks the directory complete
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            if out.exists():
                out.rename(old)  # two renames: the directory is missing only for an instant
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _log(f"built {out}: {n_params / 1e6:.2f}M parameters, vocab {tokenizer.get_vocab_size()}"
             f" (embedding rows {model.config.vocab_size}), lm_head scale {scale:g},"
             f" {time.perf_counter() - t0:.1f}s")
    return out


def _save_model(model, out: Path) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(IM_END),
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True, max_shard_size="10GB")
    except TypeError:  # in case a release drops the argument (safetensors is the default)
        model.save_pretrained(out, max_shard_size="10GB")
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if not (out / "generation_config.json").exists():
        model.generation_config.save_pretrained(out)
    for f in out.iterdir():  # safetensors writes 0600; the checkpoint is not secret
        f.chmod(0o644)


def _write_readme(out: Path, preset: str, p: Preset, dtype: str, n_params: int,
                  n_tokens: int, vocab_rows: int) -> None:
    (out / "README.md").write_text(
        f"# genapi tiny checkpoint ({preset})\n\n"
        "Generated by `python -m tools.tiny_models`: LlamaForCausalLM with seeded random\n"
        "weights and a byte-level BPE tokenizer trained on `tools/assets/corpus/`.\n"
        "It produces meaningless text; it exists to exercise real inference code paths.\n\n"
        f"- parameters: {n_params:,}\n"
        f"- dtype: {dtype}\n"
        f"- hidden {p.hidden}, layers {p.layers}, heads {p.heads}, kv heads {p.kv_heads},"
        f" intermediate {p.intermediate}, context {p.context}\n"
        f"- tokenizer vocab {n_tokens} (embedding rows {vocab_rows})\n"
        f"- special tokens: {PAD_TOKEN}=0 (pad), {IM_START}=1, {IM_END}=2 (eos)\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.tiny_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/tiny-chat", help="output directory (default: %(default)s)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default=None, choices=DTYPES, help="default: the preset's")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    build(args.out, preset=args.preset, dtype=args.dtype, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
