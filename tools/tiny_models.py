"""Generate small, deterministic Hugging Face chat checkpoints of a real architecture.

The embedded default chat model of genapi is not downloaded: it is built here, from
text shipped in `tools/assets/corpus/`, in about a minute on one CPU core.

* Tokenizer: a byte-level BPE (GPT-2 style: every byte is encodable) trained with the
  `tokenizers` library on the corpus; special tokens `<|endoftext|>` (pad),
  `<|im_start|>` and `<|im_end|>` (end of turn, EOS) and a ChatML chat template
  (`tools/assets/chat_template.jinja`).
* Model: `LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU, grouped-query attention).
  - `tiny` (the embedded default, 1.8M parameters) is *trained* at build time on the
    conversations of `tools/assets/corpus/chat_*.txt` (written for it), rendered with the
    real chat template, the loss on the assistant turns (their text and the closing
    `<|im_end|>`), one conversation per row. Seeded, one thread, deterministic kernels,
    a fixed number of steps (TrainSettings), a progress bar on stderr: two builds give
    the same bytes. It answers in a sentence or two of English words and ends its turn by
    itself; what it says is mostly unrelated to the question: a demo, not an assistant.
  - `bench` and `1b` have seeded random weights, rescaled so that the next-token
    distribution is peaked (logit std ~3) and greedy decoding does not get stuck
    repeating one token; they produce meaningless text, for benchmarks.
  Some tokens are never chosen: their logits are held near -30 through a constant hidden
  channel that acts as an output bias. In every preset: pad, `<|im_start|>`, padding rows
  and ASCII control bytes. In the random presets `<|im_end|>` too (they run to max_tokens
  unless a stop string hits). In the trained one every token that no reply of the corpus
  contains, and every token that is not complete UTF-8 on its own (no U+FFFD in replies).

Every real code path (tokenizer, chat template, KV cache, GQA, sampling, stop strings,
batching) is exercised. Building is idempotent: a `genapi_fingerprint.json` records what
the directory was built from (code, corpus, template, preset, dtype, training settings),
and a rebuild is skipped when nothing changed. A trained preset built into another
directory or dtype reuses the weights of an up-to-date float32 build of it under
`models/` (what `build.sh` made) instead of training again.

    python -m tools.tiny_models --out models/tiny-chat [--preset tiny|bench|1b]
                                 [--dtype float32|bfloat16] [--force] [--no-reuse]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CORPUS_DIR = ASSETS_DIR / "corpus"
CHAT_CORPUS_GLOB = "chat_*.txt"  # conversations the trained presets learn from
CHAT_TEMPLATE_FILE = ASSETS_DIR / "chat_template.jinja"
MODELS_DIR = ASSETS_DIR.parent.parent / "models"  # where `build.sh` puts checkpoints (reused)
FINGERPRINT_FILE = "genapi_fingerprint.json"
FORMAT_VERSION = 2  # bump to force every existing checkpoint to be rebuilt

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)  # ids 0, 1, 2
TOKENIZER_VOCAB = 4096

SEED = 0
INIT_STD = 0.02
TARGET_LOGIT_STD = 3.0  # of the next-token logits, after rescaling lm_head
MASKED_LOGIT = -30.0  # (about) the highest logit of tokens that are never chosen
BIAS_CHANNEL_VALUE = 1.0
DTYPES = ("float32", "bfloat16")

# System prompts mixed into a share of the training conversations, so that a system turn
# (which most clients send) does not throw the model off.
TRAIN_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Keep your answers short.",
    "You are genapi-tiny-chat, a small demo model.",
    "You are a friendly and concise assistant.",
    "Answer the user's questions briefly.",
    "You are terse.",
)


@dataclass(frozen=True)
class TrainSettings:
    """How a trained preset is trained; part of its fingerprint."""

    steps: int = 900  # about a minute on one CPU core
    batch_tokens: int = 512  # per step: whole conversations, one a row, padded to the longest
    max_len: int = 256  # tokens; longer conversations are cut
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this
    warmup: int = 30
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    system_prompt_rate: float = 0.3  # share of conversations given a TRAIN_SYSTEM_PROMPTS turn
    # The trained logits are divided by this, so that sampling at the API's default
    # temperature (1) draws from what temperature 0.7 gives the raw model: far fewer
    # broken words from a model this small. Greedy decoding is unchanged.
    logit_temperature: float = 0.7
    bias_channel: float = 0.1  # value of the constant hidden channel (see _add_bias_channel)
    seed: int = SEED
    threads: int = 1  # torch intra-op threads while training (fixed, so is the order of the sums)


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
    train: TrainSettings | None = None  # None: seeded random weights


PRESETS: dict[str, Preset] = {
    # The embedded default: 1.8M parameters trained at build time (about a minute on a
    # CPU core), a millisecond or so per token.
    "tiny": Preset(hidden=128, layers=4, heads=2, kv_heads=1, intermediate=352, context=2048,
                   min_vocab=TOKENIZER_VOCAB, train=TrainSettings()),
    # ~28M parameters, random weights: CPU throughput benchmarks.
    "bench": Preset(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1408, context=2048),
    # One small layer before a 32000-row output, random weights: the per-step host
    # overhead benchmark (bench/step_overhead.py), where the forward pass is not the point.
    "step": Preset(hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, context=2048,
                   min_vocab=32000, vocab_multiple=64),
    # ~1.1B parameters (32000-row embedding, like Llama-2/TinyLlama), random weights: GPU
    # roofline benchmarks.
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

def _asset_files() -> list[tuple[str, Path]]:
    """(name, path) of every file a checkpoint is built from."""
    corpus = sorted(CORPUS_DIR.glob("*.txt"))
    if not corpus:
        raise FileNotFoundError(f"no corpus files in {CORPUS_DIR}")
    return [("tools/tiny_models.py", Path(__file__).resolve()),
            ("tools/assets/chat_template.jinja", CHAT_TEMPLATE_FILE),
            *((f"tools/assets/corpus/{p.name}", p) for p in corpus)]


def _train_settings(preset: str, train: TrainSettings | None = None) -> TrainSettings | None:
    return train if train is not None else PRESETS[preset].train


def fingerprint(preset: str, dtype: str, train: TrainSettings | None = None) -> dict:
    """What a checkpoint directory is a pure function of.

    `train` overrides the preset's training settings (trained presets only).
    """
    h = hashlib.sha256()
    for label, path in _asset_files():
        data = path.read_bytes()
        name = label.encode()
        h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
    settings = _train_settings(preset, train)
    fp = {
        "format": FORMAT_VERSION,
        "preset": preset,
        "dtype": dtype,
        "train": asdict(settings) if settings is not None else None,
        "sources_sha256": h.hexdigest(),
    }
    return json.loads(json.dumps(fp))  # as read back from the file


def _read_fingerprint(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_up_to_date(out_dir: str | os.PathLike, preset: str = "tiny", dtype: str | None = None,
                  train: TrainSettings | None = None) -> bool:
    dtype = dtype or PRESETS[preset].default_dtype
    return _read_fingerprint(Path(out_dir)) == fingerprint(preset, dtype, train)


# --------------------------------------------------------------------------- tokenizer

def corpus_texts() -> list[str]:
    """The prose of the corpus (every file but the chat ones)."""
    chat = set(CORPUS_DIR.glob(CHAT_CORPUS_GLOB))
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS_DIR.glob("*.txt")) if p not in chat]


def _tokenizer_texts() -> list[str]:
    """The prose and the conversations as the chat template renders them (special tokens
    aside), so that a reply's first word, at the start of a line, is a token too."""
    template = _chat_template()
    chats = [template.render(messages=c, add_generation_prompt=False) for c in chat_conversations()]
    for t in SPECIAL_TOKENS:
        chats = [c.replace(t, "") for c in chats]
    return [*corpus_texts(), "".join(chats)]


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
    tok.train_from_iterator(_tokenizer_texts(), trainer=trainer)
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


# --------------------------------------------------------------------------- chat data

_ROLE_PREFIXES = (("System:", "system"), ("User:", "user"), ("Assistant:", "assistant"))


def parse_chat_text(text: str, source: str = "<text>") -> list[list[dict]]:
    """Conversations from the `chat_*.txt` format.

    Conversations are separated by blank lines; a line starts with `System:`, `User:` or
    `Assistant:`, or continues the previous message (joined with a newline); `#` lines are
    comments. A conversation is an optional system turn, then user and assistant turns
    alternating, ending with the assistant.
    """
    conversations: list[list[dict]] = []
    current: list[dict] = []

    def close(lineno: int) -> None:
        if not current:
            return
        roles = [m["role"] for m in current]
        if roles[0] == "system":
            roles = roles[1:]
        if (not roles or roles[-1] != "assistant"
                or roles != ["user", "assistant"] * (len(roles) // 2)
                or any(not m["content"] for m in current)):
            raise ValueError(f"{source}:{lineno}: malformed conversation {roles}")
        conversations.append(list(current))
        current.clear()

    lines = text.splitlines()
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            close(lineno)
            continue
        for prefix, role in _ROLE_PREFIXES:
            if line.startswith(prefix):
                current.append({"role": role, "content": line[len(prefix):].strip()})
                break
        else:
            if not current:
                raise ValueError(f"{source}:{lineno}: text outside a conversation")
            current[-1]["content"] += "\n" + line
    close(len(lines))
    return conversations


def chat_conversations() -> list[list[dict]]:
    files = sorted(CORPUS_DIR.glob(CHAT_CORPUS_GLOB))
    if not files:
        raise FileNotFoundError(f"no {CHAT_CORPUS_GLOB} files in {CORPUS_DIR}")
    out = []
    for path in files:
        out.extend(parse_chat_text(path.read_text(encoding="utf-8"), path.name))
    return out


def _chat_template():
    """The chat template, rendered as transformers renders it (apply_chat_template)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(CHAT_TEMPLATE_FILE.read_text(encoding="utf-8"))


def conversation_tokens(tokenizer, template, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and, per token, whether it is trained on.

    Trained on: each assistant turn's text and its closing `<|im_end|>`, tokenized apart
    from the prompt before it (`...<|im_start|>assistant\n`), as at generation time.
    """
    ids: list[int] = []
    target: list[bool] = []
    done = ""

    def add(text: str, is_target: bool) -> None:
        enc = tokenizer.encode(text).ids
        ids.extend(enc)
        target.extend([is_target] * len(enc))

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = template.render(messages=messages[:i], add_generation_prompt=True)
        turn = template.render(messages=messages[:i + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and turn.startswith(prompt) and turn.endswith(IM_END + "\n")):
            raise ValueError("the chat template does not render conversations incrementally")
        add(prompt[len(done):], False)
        add(turn[len(prompt):-1], True)  # the reply and <|im_end|>
        done = turn[:-1]
    add(template.render(messages=messages, add_generation_prompt=False)[len(done):], False)
    return ids, target


def _training_batches(tokenizer, s: TrainSettings):
    """`s.steps` batches of whole conversations: (input ids, labels, trained-on flags),
    each [rows, longest conversation in the batch] and about `s.batch_tokens` tokens.

    Epoch after epoch, the conversations are shuffled, a share of them get a system turn,
    pools of them are sorted by length and cut into batches (so that little is padding),
    and the batches are shuffled. One conversation per row: a reply only ever sees its
    own conversation, as at generation time; padding goes at the end, not trained on.
    """
    import torch

    conversations = chat_conversations()
    template = _chat_template()
    gen = torch.Generator().manual_seed(s.seed)
    cache: dict[tuple[int, int], tuple[list[int], list[bool]]] = {}
    pad = SPECIAL_TOKENS.index(PAD_TOKEN)
    pool = 128
    batches: list[tuple] = []
    while len(batches) < s.steps:
        order = torch.randperm(len(conversations), generator=gen).tolist()
        systems = torch.randint(len(TRAIN_SYSTEM_PROMPTS), (len(order),), generator=gen).tolist()
        with_system = (torch.rand(len(order), generator=gen) < s.system_prompt_rate).tolist()
        items = []
        for i, sys_i, add_sys in zip(order, systems, with_system):
            key = (i, sys_i if add_sys and conversations[i][0]["role"] != "system" else -1)
            if key not in cache:
                messages = conversations[i]
                if key[1] >= 0:
                    messages = [{"role": "system", "content": TRAIN_SYSTEM_PROMPTS[key[1]]}, *messages]
                ids, target = conversation_tokens(tokenizer, template, messages)
                cache[key] = (ids[:s.max_len + 1], target[:s.max_len + 1])
            items.append(cache[key])
        epoch: list[list] = []
        for start in range(0, len(items), pool):
            group = sorted(items[start:start + pool], key=lambda it: len(it[0]))  # stable
            rows: list = []
            for it in group:
                if rows and (len(rows) + 1) * (len(it[0]) - 1) > s.batch_tokens:
                    epoch.append(rows)
                    rows = []
                rows.append(it)
            if rows:
                epoch.append(rows)
        for j in torch.randperm(len(epoch), generator=gen).tolist():
            rows = epoch[j]
            width = max(len(ids) for ids, _ in rows) - 1
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            y = torch.full((len(rows), width), pad, dtype=torch.long)
            t = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, (ids, target) in enumerate(rows):
                n = len(ids) - 1
                x[r, :n] = torch.tensor(ids[:-1])
                y[r, :n] = torch.tensor(ids[1:])
                t[r, :n] = torch.tensor(target[1:])
            batches.append((x, y, t))
    return batches[:s.steps]


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


# Per-parameter init scale (multiples of INIT_STD) of the random presets. Larger q/k make
# attention peaked and position-dependent instead of a flat average over the context (which
# makes a random model's output converge to one token); larger embeddings keep the current
# token visible in the residual stream.
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


def _init_weights(model, scales: dict[str, float], seed: int = SEED) -> None:
    """Seeded init that does not depend on the order transformers initialises modules."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() == 1:  # RMSNorm weights
                param.fill_(1.0)
                continue
            kind = name.split(".")[-2]
            std = INIT_STD * scales.get(kind, 1.0)
            # Sample in float32 so the weights do not depend on the target dtype.
            param.copy_(torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))


def _calibration_ids(tokenizer) -> list[list[int]]:
    template = _chat_template()
    texts = [template.render(messages=c, add_generation_prompt=True) for c in _CALIBRATION_CONVERSATIONS]
    texts.append(corpus_texts()[0][:2000])
    return [tokenizer.encode(t).ids for t in texts]


def _add_bias_channel(model, value: float = BIAS_CHANNEL_VALUE) -> int:
    """Reserve the last hidden dimension as a constant, always-positive channel.

    Llama has no output bias; this gives lm_head one. Every token embedding carries the
    same value there and no layer writes to it, so after the final RMSNorm it is positive
    at every position, and an lm_head row that is negative only in this column gets a
    negative logit whatever the context. (Training keeps it so: see _hold_bias_channel.)
    """
    import torch

    d = model.config.hidden_size - 1
    _hold_bias_channel(model, d, value)
    with torch.no_grad():
        model.lm_head.weight[:, d] = 0
    return d


def _hold_bias_channel(model, d: int, value: float) -> None:
    import torch

    with torch.no_grad():
        model.model.embed_tokens.weight[:, d] = value
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[d, :] = 0
            layer.mlp.down_proj.weight[d, :] = 0
        model.model.norm.weight[d] = 1.0


def _control_byte_ids(tokenizer) -> list[int]:
    """Tokens of the ASCII control bytes other than tab and newline (kept out of outputs)."""
    ids = []
    for b in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]:
        enc = tokenizer.encode(chr(b)).ids
        assert len(enc) == 1, (b, enc)
        ids.append(enc[0])
    return ids


def _partial_utf8_ids(tokenizer) -> list[int]:
    """Tokens whose bytes are not complete UTF-8 on their own (a lone 0xC3, half an emoji)."""
    return [i for i in range(len(SPECIAL_TOKENS), tokenizer.get_vocab_size())
            if "\ufffd" in tokenizer.decode([i], skip_special_tokens=False)]


def reply_token_ids(tokenizer) -> list[int]:
    """The tokens a trained preset learns to write: those of the replies in the chat corpus
    (`<|im_end|>` included). Only these get a trained output row; the rest never win."""
    template = _chat_template()
    ids: set[int] = set()
    for c in chat_conversations():
        tokens, target = conversation_tokens(tokenizer, template, c)
        ids.update(t for t, is_target in zip(tokens, target) if is_target)
    return sorted(ids)


def never_chosen_ids(tokenizer, n_rows: int, trained: bool) -> list[int]:
    """Token ids whose logit is held near MASKED_LOGIT at every position.

    Always: pad, `<|im_start|>`, padding rows and ASCII control bytes. Random presets: also
    `<|im_end|>` (they run to max_tokens). Trained presets: every token that is not in a
    reply of the corpus, and any that is not complete UTF-8 on its own (no U+FFFD).
    """
    n_tokens = tokenizer.get_vocab_size()
    special = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS if not (trained and t == IM_END)]
    ids = {*special, *range(n_tokens, n_rows), *_control_byte_ids(tokenizer)}
    if trained:
        ids.update(_partial_utf8_ids(tokenizer))
        ids.update(set(range(n_tokens)) - set(reply_token_ids(tokenizer)))
    return sorted(ids)


def _final_norm_channel(model, d: int, ids_list: list[list[int]]):
    """The bias channel after the final RMSNorm, at every position of `ids_list`."""
    import torch

    normed = []
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: normed.append(out[0, :, d]))
    logits = []
    try:
        with torch.no_grad():
            for ids in ids_list:
                logits.append(model(torch.tensor([ids])).logits[0].float())
    finally:
        hook.remove()
    return torch.cat(normed).float(), logits


def _mask_rows(model, masked: list[int], d: int, bias: float) -> None:
    """Rows of `masked` get logit <= MASKED_LOGIT wherever the bias channel is >= `bias`."""
    import torch

    assert bias > 0, bias
    with torch.no_grad():
        lm = model.lm_head.weight
        lm[masked] = 0
        # Quantised, so that the last bits of a CPU's float arithmetic cannot change the weights.
        lm[masked, d] = round(MASKED_LOGIT / bias * 16) / 16


def _shape_outputs(model, tokenizer, n_tokens: int) -> float:
    """Random presets: rescale lm_head for peaked logits; make special, padding and
    control-byte rows unselectable."""
    import torch

    d = _add_bias_channel(model)
    lm = model.lm_head.weight
    masked_ids = never_chosen_ids(tokenizer, lm.shape[0], trained=False)
    masked = torch.zeros(lm.shape[0], dtype=torch.bool)
    masked[masked_ids] = True
    with torch.no_grad():
        lm[masked] = 0
    channel, logits = _final_norm_channel(model, d, _calibration_ids(tokenizer))
    std = float(torch.stack([lg[:, ~masked].std(dim=-1).mean() for lg in logits]).mean())
    scale = round(TARGET_LOGIT_STD / std * 16) / 16
    with torch.no_grad():
        lm.mul_(scale)
    # Masked rows: logit <= MASKED_LOGIT at every calibration position
    # (top logits are ~+10): never the greedy choice, ~e-40 when sampling at T=1.
    _mask_rows(model, masked_ids, d, float(channel.min()))
    return scale


# --------------------------------------------------------------------------- training

@contextlib.contextmanager
def _deterministic_torch(threads: int):
    """Fixed thread count and deterministic kernels while training; restored afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=True,
                mininterval=0.25 if tty else 10.0, ascii=not tty, dynamic_ncols=tty)


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_model(model, tokenizer, s: TrainSettings, desc: str = "training") -> float:
    """Train `model` (float32) in place on the chat corpus; return the mean loss of the
    last tenth of the steps."""
    import torch
    import torch.nn.functional as F

    d = model.config.hidden_size - 1
    batches = _training_batches(tokenizer, s)
    # The softmax runs over the tokens the replies use: the others are never targets (and
    # never chosen: see never_chosen_ids), so they cost nothing to leave out.
    outputs = torch.tensor(reply_token_ids(tokenizer))
    index = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    index[outputs] = torch.arange(len(outputs))

    decay = [p for n, p in sorted(model.named_parameters()) if p.dim() >= 2]
    no_decay = [p for n, p in sorted(model.named_parameters()) if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-8, foreach=False)
    model.train()
    losses: list[float] = []
    with _progress(s.steps, desc) as bar:
        for step in range(s.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, s)
            inputs, labels, keep = batches[step]
            hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
            logits = F.linear(hidden[keep], model.lm_head.weight[outputs])
            loss = F.cross_entropy(logits, index[labels[keep]])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip, foreach=False)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _hold_bias_channel(model, d, s.bias_channel)
            losses.append(loss.item())
            bar.update(1)
            if step % 10 == 9 or step == s.steps - 1:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", refresh=False)
    model.eval()
    tail = losses[-max(1, s.steps // 10):]
    return sum(tail) / len(tail)


def _trained_calibration_ids(tokenizer) -> list[list[int]]:
    """Prompts and whole conversations: where the bias channel's smallest value is measured."""
    template = _chat_template()
    ids = _calibration_ids(tokenizer)
    conversations = chat_conversations()
    for c in conversations[:: max(1, len(conversations) // 24)]:
        ids.append(conversation_tokens(tokenizer, template, c)[0])
    return ids


def _build_trained(p: Preset, s: TrainSettings, tokenizer, desc: str):
    """Train a fresh float32 model; mask the never-chosen rows."""
    import torch
    from transformers import LlamaForCausalLM

    config = _make_config(p, _padded_vocab(tokenizer.get_vocab_size(), p), "float32")
    config.use_cache = False
    with _deterministic_torch(s.threads), _default_dtype(torch.float32):
        torch.manual_seed(s.seed)
        model = LlamaForCausalLM(config)
        # Residual-branch outputs start smaller (GPT-2 style), so deep sums stay near unit scale.
        _init_weights(model, {"o_proj": 1 / math.sqrt(2 * p.layers),
                              "down_proj": 1 / math.sqrt(2 * p.layers)}, seed=s.seed)
        d = _add_bias_channel(model, s.bias_channel)
        loss = train_model(model, tokenizer, s, desc)
        with torch.no_grad():
            model.lm_head.weight.div_(s.logit_temperature)
        channel, _ = _final_norm_channel(model, d, _trained_calibration_ids(tokenizer))
        _mask_rows(model, never_chosen_ids(tokenizer, config.vocab_size, trained=True), d,
                   float(channel.min()))
    model.config.use_cache = True
    return model, loss


def _load_trained(src: Path, p: Preset, tokenizer):
    """The float32 weights of an up-to-date build of the same preset and training."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    config = _make_config(p, _padded_vocab(tokenizer.get_vocab_size(), p), "float32")
    with _default_dtype(torch.float32):
        model = LlamaForCausalLM(config)
    try:
        model.load_state_dict(load_file(str(src / "model.safetensors")), strict=True)
    except RuntimeError as e:  # shapes or names differ
        raise ValueError(str(e)) from None
    return model.eval()


def _reusable_build(preset: str, train: TrainSettings) -> Path | None:
    """An up-to-date float32 build of the same trained preset under MODELS_DIR, if any."""
    want = fingerprint(preset, "float32", train)
    try:
        candidates = sorted(c for c in MODELS_DIR.iterdir() if c.is_dir())
    except OSError:
        return None
    for c in candidates:
        if _read_fingerprint(c) == want and (c / "model.safetensors").is_file():
            return c
    return None


def build_model(p: Preset, tokenizer, dtype: str):
    """A random-weight checkpoint (the `bench` and `1b` presets)."""
    import torch
    from transformers import LlamaForCausalLM

    torch_dtype = getattr(torch, dtype)
    n_tokens = tokenizer.get_vocab_size()
    config = _make_config(p, _padded_vocab(n_tokens, p), dtype)
    torch.manual_seed(SEED)
    with _default_dtype(torch_dtype):
        model = LlamaForCausalLM(config)
    _init_weights(model, _INIT_SCALE)
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
          force: bool = False, *, train: TrainSettings | None = None, reuse: bool = True) -> Path:
    """Build (or reuse) the checkpoint for `preset` in `out_dir`; return its path.

    `dtype` defaults to the preset's (float32 for tiny/bench, bfloat16 for 1b). `train`
    overrides a trained preset's TrainSettings. With `reuse`, a trained preset takes its
    weights from an up-to-date float32 build of the same preset under `models/` (what
    `build.sh` made) instead of training again; the result is the same.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    dtype = dtype or p.default_dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if train is not None and p.train is None:
        raise ValueError(f"preset {preset!r} is not trained; it takes no training settings")
    settings = _train_settings(preset, train)
    out = Path(out_dir).resolve()
    fp = fingerprint(preset, dtype, train)
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
            if settings is None:
                model, scale = build_model(p, tokenizer, dtype)
                how = f"random weights, lm_head scale {scale:g}"
            else:
                src = _reusable_build(preset, settings) if reuse else None
                model = None
                if src is not None and src != out:
                    try:
                        model = _load_trained(src, p, tokenizer)
                        how = f"trained weights reused from {src}"
                    except (OSError, ValueError) as e:
                        _log(f"cannot reuse {src} ({e}); training")
                if model is None:
                    model, loss = _build_trained(p, settings, tokenizer, f"[tiny_models] training {preset}")
                    how = f"trained {settings.steps} steps, final loss {loss:.3f}"
                import torch

                model = model.to(getattr(torch, dtype))
                model.config.dtype = dtype
            _save_model(model, tmp)
            n_params = sum(t.numel() for t in model.parameters())
            _write_readme(tmp, preset, p, dtype, n_params, tokenizer.get_vocab_size(),
                          model.config.vocab_size, settings)
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
             f" (embedding rows {model.config.vocab_size}), {how},"
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
                  n_tokens: int, vocab_rows: int, train: TrainSettings | None) -> None:
    if train is None:
        what = ("Generated by `python -m tools.tiny_models`: LlamaForCausalLM with seeded random\n"
                "weights and a byte-level BPE tokenizer trained on `tools/assets/corpus/`.\n"
                "It produces meaningless text; it exists to exercise real inference code paths.\n")
    else:
        what = ("Generated by `python -m tools.tiny_models`: LlamaForCausalLM trained at build time\n"
                "(seeded, deterministic) on the short conversations in\n"
                f"`tools/assets/corpus/{CHAT_CORPUS_GLOB}`, with a byte-level BPE tokenizer trained on\n"
                "`tools/assets/corpus/`. It answers in short English sentences and ends its turn by\n"
                "itself, but knows very little: it is a demo of the serving stack, not an assistant.\n")
    (out / "README.md").write_text(
        f"# genapi tiny checkpoint ({preset})\n\n{what}\n"
        f"- parameters: {n_params:,}\n"
        f"- dtype: {dtype}\n"
        f"- hidden {p.hidden}, layers {p.layers}, heads {p.heads}, kv heads {p.kv_heads},"
        f" intermediate {p.intermediate}, context {p.context}\n"
        f"- tokenizer vocab {n_tokens} (embedding rows {vocab_rows})\n"
        f"- special tokens: {PAD_TOKEN}=0 (pad), {IM_START}=1, {IM_END}=2 (eos)\n"
        + (f"- training: {json.dumps(asdict(train))}\n" if train is not None else ""),
        encoding="utf-8",
    )


TEMPLATE_VARIANTS_DIR = ASSETS_DIR / "templates"


def template_variants() -> list[str]:
    """Names of the bundled test chat templates (tools/assets/templates/NAME.jinja),
    written for genapi in the manner of other model families' templates."""
    return sorted(p.stem for p in TEMPLATE_VARIANTS_DIR.glob("*.jinja"))


def write_template_variant(src: str | os.PathLike, out: str | os.PathLike, variant: str) -> Path:
    """A copy of the checkpoint `src` whose chat template is the test template `variant`
    (tools/assets/templates/): same weights and tokenizer, another family's roles and
    turn rules. Cheap (a file copy); the weights are not trained for the new format."""
    src, out = Path(src), Path(out)
    template = (TEMPLATE_VARIANTS_DIR / f"{variant}.jinja").read_text(encoding="utf-8")
    shutil.copytree(src, out, dirs_exist_ok=True)
    (out / FINGERPRINT_FILE).unlink(missing_ok=True)  # not the build it was copied from
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", config)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.tiny_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/tiny-chat", help="output directory (default: %(default)s)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default=None, choices=DTYPES, help="default: the preset's")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--no-reuse", action="store_true",
                    help="train even if an up-to-date build of the same preset is under models/")
    ap.add_argument("--template-variant", choices=template_variants(),
                    help="instead of building: copy the checkpoint --from into --out with this test chat template")
    ap.add_argument("--from", dest="src", default="models/tiny-chat", help="with --template-variant (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.template_variant:
        write_template_variant(args.src, args.out, args.template_variant)
        return 0
    build(args.out, preset=args.preset, dtype=args.dtype, force=args.force, reuse=not args.no_reuse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
