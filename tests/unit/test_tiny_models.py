"""The generated tiny checkpoints: deterministic, idempotent, loadable, and well behaved.

The embedded `tiny` preset is trained at build time (about a minute); this module trains it
at most once: it reuses `models/tiny-chat` when that is up to date (as after `build.sh`).
Determinism and the fingerprint are checked on a few training steps.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tools import tiny_models  # noqa: E402

# A few steps of the real pipeline: enough to check determinism and the fingerprint.
QUICK = dataclasses.replace(tiny_models.TrainSettings(), steps=6, batch_tokens=128)

TEXTS = [
    "Hello, world!",
    "  leading spaces,\ttabs\tand\n\nblank lines  \n",
    "café naïve Zürich façade jalapeño smörgåsbord",
    "東京 and 大阪 🚆☕😀 👩‍👩‍👧 family emoji",
    "Ελληνικά, Русский, العربية, हिन्दी, 한국어",
    'def f(x):\n    return {"a": [1, 2.5e-3, None]}\n',
    "control \x00\x01\x7f bytes and U+FFFF \uffff and a lone combining mark e\u0301",
    "<|im_start|> is special but <|im_star is not",
]

# Not in the training conversations.
PROMPTS = [
    "Tell me a story.",
    "What is the capital of Norway?",
    "How do I make soup?",
    "Why is the grass green?",
    "Hello, how are you today?",
    "Write a poem about the rain.",
    "Give me three tips for a job interview.",
    "Describe a city at night.",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The embedded default (`tiny`, float32): models/tiny-chat if up to date, else built."""
    default = tiny_models.MODELS_DIR / "tiny-chat"
    if tiny_models.is_up_to_date(default, "tiny", "float32"):
        return default
    return tiny_models.build(tmp_path_factory.mktemp("tiny") / "tiny-chat")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Two independent builds of a few training steps (float32)."""
    root = tmp_path_factory.mktemp("quick")
    a = tiny_models.build(root / "a", train=QUICK, reuse=False)
    b = tiny_models.build(root / "b", train=QUICK, reuse=False)
    return a, b


@pytest.fixture(scope="module")
def tokenizer(trained):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained)


@pytest.fixture(scope="module")
def model(trained):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(trained).eval()


def _prompt(tokenizer, text: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def _generate(model, prompt: list[int], n: int, **sampling) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, eos_token_id=2, pad_token_id=0,
                             **(sampling or {"do_sample": False}))
    return out[0, len(prompt):].tolist()


# --------------------------------------------------------------------------- build

def test_training_is_deterministic(quick):
    a, b = quick
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for required in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", tiny_models.FINGERPRINT_FILE):
        assert required in names
    for name in names:
        assert _sha256(a / name) == _sha256(b / name), name


def test_second_build_is_a_fast_noop(quick, capsys):
    a = quick[0]
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    capsys.readouterr()
    t0 = time.perf_counter()
    assert tiny_models.build(a, train=QUICK) == a
    elapsed = time.perf_counter() - t0
    assert "up to date" in capsys.readouterr().out
    assert elapsed < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before
    assert tiny_models.is_up_to_date(a, "tiny", "float32", train=QUICK)
    assert not tiny_models.is_up_to_date(a, "tiny", "bfloat16", train=QUICK)
    assert not tiny_models.is_up_to_date(a, "tiny")  # the default training settings
    assert not tiny_models.is_up_to_date(a, "bench")


def test_fingerprint_covers_the_training_settings(quick, tmp_path):
    fp = json.loads((quick[0] / tiny_models.FINGERPRINT_FILE).read_text())
    assert fp == tiny_models.fingerprint("tiny", "float32", QUICK)
    assert fp["preset"] == "tiny" and fp["dtype"] == "float32"
    assert fp["train"] == dataclasses.asdict(QUICK)
    assert len(fp["sources_sha256"]) == 64
    default = tiny_models.fingerprint("tiny", "float32")
    assert default["train"] == dataclasses.asdict(tiny_models.PRESETS["tiny"].train)
    assert tiny_models.fingerprint("bench", "float32")["train"] is None
    for change in ({"steps": 7}, {"lr": 1e-3}, {"seed": 1}, {"batch_tokens": 256}):
        other = dataclasses.replace(QUICK, **change)
        assert tiny_models.fingerprint("tiny", "float32", other) != fp, change
        assert not tiny_models.is_up_to_date(quick[0], "tiny", "float32", train=other)
    # A build with other settings replaces the directory (it is not "up to date").
    c = tiny_models.build(tmp_path / "c", train=QUICK, reuse=False)
    first = _sha256(c / "model.safetensors")
    tiny_models.build(c, train=dataclasses.replace(QUICK, seed=1), reuse=False)
    assert tiny_models.is_up_to_date(c, "tiny", "float32", train=dataclasses.replace(QUICK, seed=1))
    assert _sha256(c / "model.safetensors") != first


def test_fingerprint_covers_the_corpus(monkeypatch, tmp_path):
    before = tiny_models.fingerprint("tiny", "float32")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in tiny_models.CORPUS_DIR.glob("*.txt"):
        (corpus / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(tiny_models, "CORPUS_DIR", corpus)
    assert tiny_models.fingerprint("tiny", "float32") == before
    (corpus / "chat_extra.txt").write_text("User: Hi.\nAssistant: Hello.\n")
    assert tiny_models.fingerprint("tiny", "float32") != before


def test_trained_build_reuses_an_up_to_date_one(trained, tmp_path, monkeypatch, capsys):
    """Another directory or dtype of the same trained preset does not train again."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.setattr(tiny_models, "MODELS_DIR", trained.parent)
    t0 = time.perf_counter()
    out = tiny_models.build(tmp_path / "bf16", dtype="bfloat16")
    assert time.perf_counter() - t0 < 30
    assert "reused" in capsys.readouterr().out
    assert tiny_models.is_up_to_date(out, "tiny", "bfloat16")
    ref = load_file(str(trained / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    assert ref.keys() == got.keys()
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k].to(torch.bfloat16)) for k in ref)
    assert _sha256(out / "tokenizer.json") == _sha256(trained / "tokenizer.json")
    same = tiny_models.build(tmp_path / "f32")  # float32: the same bytes
    for name in ("model.safetensors", "tokenizer.json", "config.json", tiny_models.FINGERPRINT_FILE):
        assert _sha256(same / name) == _sha256(trained / name), name


def test_rejects_unknown_preset_dtype_and_settings(tmp_path):
    with pytest.raises(ValueError):
        tiny_models.build(tmp_path / "x", preset="huge")
    with pytest.raises(ValueError):
        tiny_models.build(tmp_path / "x", dtype="float8")
    with pytest.raises(ValueError):
        tiny_models.build(tmp_path / "x", preset="bench", train=QUICK)  # random weights
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    foreign = tmp_path / "real-model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        tiny_models.build(foreign, train=QUICK)
    assert (foreign / "config.json").read_text() == "{}"


# --------------------------------------------------------------------------- chat corpus

def test_chat_corpus_parses():
    conversations = tiny_models.chat_conversations()
    assert len(conversations) > 500
    for c in conversations:
        assert c[-1]["role"] == "assistant" and all(m["content"].strip() for m in c)
    text = "# comment\nSystem: Be brief.\nUser: Hi\nAssistant: Line one\nline two\n\nUser: Q\nAssistant: A\n"
    assert tiny_models.parse_chat_text(text) == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Line one\nline two"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]
    for bad in ("User: only a question\n", "Assistant: no question\n", "User: a\nUser: b\nAssistant: c\n",
                "stray text\n"):
        with pytest.raises(ValueError):
            tiny_models.parse_chat_text(bad)


def test_loss_is_on_the_replies_and_their_end_of_turn(tokenizer):
    tok = tiny_models.train_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."}]
    ids, target = tiny_models.conversation_tokens(tok, tiny_models._chat_template(), messages)
    assert tok.decode(ids, skip_special_tokens=False) == tokenizer.apply_chat_template(messages, tokenize=False)
    trained = tok.decode([i for i, t in zip(ids, target) if t], skip_special_tokens=False)
    assert trained == "Hello there.<|im_end|>Goodbye.<|im_end|>"
    # The reply is tokenized as generated: right after the prompt the server renders.
    prompt = tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    assert ids[:len(prompt)] == prompt and target[len(prompt)]


# --------------------------------------------------------------------------- checkpoint

def test_model_config_and_parameter_count(model):
    cfg = model.config
    p = tiny_models.PRESETS["tiny"]
    assert cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (p.hidden, p.layers, p.intermediate)
    assert cfg.num_attention_heads > cfg.num_key_value_heads  # grouped-query attention
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (p.kv_heads * 64, p.hidden)
    assert cfg.max_position_embeddings == 2048
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == 4096
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 6_500_000, n
    assert next(model.parameters()).dtype.is_floating_point


def test_special_tokens(tokenizer, model, trained):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tiny_models.SPECIAL_TOKENS]
    assert ids == [0, 1, 2]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == 2048
    assert model.config.eos_token_id == 2
    gen = json.loads((trained / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    # No BOS/EOS is added automatically.
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)
    assert tokenizer.encode("<|im_start|>user")[0] == 1
    assert len(tokenizer) == 4096


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_utf8(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # Byte level: the concatenated token bytes are the UTF-8 bytes of the text.
    from tokenizers import Tokenizer

    raw = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else None
    if isinstance(raw, Tokenizer):
        assert raw.decode(ids, skip_special_tokens=False).encode("utf-8") == text.encode("utf-8")


def test_every_byte_is_a_token(tokenizer):
    vocab = tokenizer.get_vocab()
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    assert len(alphabet) == 256
    assert all(ch in vocab for ch in alphabet)


def test_tokenizer_compresses_corpus_text(tokenizer):
    text = "The first train of the morning leaves at 05:47, and the platform is almost empty."
    assert len(tokenizer.encode(text)) < len(text.encode()) / 2.5
    # A reply's first word, at the start of a line, is one token.
    assert len(tokenizer.encode("\nThe", add_special_tokens=False)) == 2


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in 東京?"},
                                 {"type": "text", "text": "And Zürich 😀"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"東京\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"},
    {"role": "assistant", "content": "Sunny in 東京."},
    {"role": "user", "content": "Thanks"},
]

EXPECTED_PROMPT = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>developer\nAnswer in English.<|im_end|>\n"
    "<|im_start|>user\nWeather in 東京?\nAnd Zürich 😀<|im_end|>\n"
    "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"東京\"}}\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>tool\nsunny, 21 °C<|im_end|>\n"
    "<|im_start|>assistant\nSunny in 東京.<|im_end|>\n"
    "<|im_start|>user\nThanks<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_chat_template_renders_all_roles(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == EXPECTED_PROMPT
    no_prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=False)
    assert no_prompt == EXPECTED_PROMPT.removesuffix("<|im_start|>assistant\n")


def test_chat_template_tokenizes(tokenizer):
    out = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out  # BatchEncoding in transformers 5
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert ids[0] == 1
    suffix = [1] + tokenizer.encode("assistant\n")
    assert ids[-len(suffix):] == suffix
    assert tokenizer.decode(ids) == EXPECTED_PROMPT
    assert ids.count(2) == len(MESSAGES)


def test_chat_template_tools_and_structured_arguments(tokenizer):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert text.count("<|im_start|>system") == 1
    assert json.dumps(tools[0], ensure_ascii=False) in text
    assert ('<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
            ) in text
    # Tools without a system message get a system turn of their own.
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools,
                                         add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------- replies

_WORDS = None


def _known_words() -> set[str]:
    global _WORDS
    if _WORDS is None:
        _WORDS = set()
        for f in tiny_models.CORPUS_DIR.glob("*.txt"):
            _WORDS |= set(re.findall(r"[a-z]+", f.read_text(encoding="utf-8").lower()))
    return _WORDS


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}],
                         ids=["greedy", "t1"])  # t1: the API's default temperature
def test_replies_end_their_turn_in_readable_words(tokenizer, model, sampling):
    import torch

    ended, texts = 0, []
    for i, text in enumerate(PROMPTS):
        torch.manual_seed(i)
        new = _generate(model, _prompt(tokenizer, text, "You are a helpful assistant." if i % 2 else None),
                        120, **sampling)
        assert not set(new) & {0, 1}  # never pad or <|im_start|>
        if 2 in new:
            ended += 1
            new = new[:new.index(2)]
        reply = tokenizer.decode(new)
        assert "\ufffd" not in reply and reply.strip(), (text, reply)
        texts.append(reply)
    assert ended >= len(PROMPTS) - 1, texts  # ends by itself (in practice: every one)
    words = re.findall(r"[A-Za-z]+", " ".join(texts))
    assert len(words) > 5 * len(PROMPTS)
    known = sum(w.lower() in _known_words() for w in words)
    assert known / len(words) > 0.8, texts  # words, not letter soup (in practice 0.9 to 1)


def test_eos_is_likely_after_a_reply_and_the_rest_never_chosen(tokenizer, model):
    import torch

    reply = "The capital of France is Paris.<|im_end|>"
    ids = _prompt(tokenizer, "What is the capital of France?") + tokenizer.encode(reply)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0].float().softmax(-1)
    assert probs[-2, 2] > 0.5  # after "Paris." the turn ends
    ids = tokenizer.encode(EXPECTED_PROMPT + "Sunny and warm, with a light wind from the sea.")
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0].float().softmax(-1)
    never = tiny_models.never_chosen_ids(tiny_models.train_tokenizer(), model.config.vocab_size, trained=True)
    assert {0, 1} <= set(never) and 2 not in never
    control = [tokenizer.encode(chr(b))[0] for b in (0x00, 0x02, 0x0D, 0x1B, 0x7F)]
    assert set(control) <= set(never)
    partial = tokenizer.encode("😀")  # four bytes, not one token: none of its pieces is chosen
    assert len(partial) > 1 and set(partial) <= set(never)
    assert probs[:, never].sum(-1).max() < 1e-6
    assert probs[:, tokenizer.encode("\n")[0]].max() > 1e-9  # newline stays possible


# --------------------------------------------------------------------------- random presets

@pytest.fixture(scope="module")
def random_small(tmp_path_factory):
    """The random-weight path of `bench` and `1b`, on a small preset."""
    import unittest.mock

    small = tiny_models.Preset(hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256, context=512)
    with unittest.mock.patch.dict(tiny_models.PRESETS, {"small-random": small}):
        path = tiny_models.build(tmp_path_factory.mktemp("random") / "m", preset="small-random")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def test_random_preset_runs_to_max_tokens_without_collapsing(random_small):
    tokenizer, model = random_small
    prompt = _prompt(tokenizer, "Tell me a story.")
    new = _generate(model, prompt, 64)
    assert len(new) == 64  # EOS never won
    assert not set(new) & {0, 1, 2}
    assert len(set(new[-32:])) > 8  # not stuck repeating one or two tokens


def test_random_preset_special_tokens_are_improbable(random_small):
    import torch

    tokenizer, model = random_small
    ids = tokenizer.encode(EXPECTED_PROMPT)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    probs = logits.softmax(-1)
    assert probs[:, :3].sum(-1).max() < 1e-6
    control = [tokenizer.encode(chr(b))[0] for b in (0x00, 0x02, 0x0D, 0x1B, 0x7F)]
    assert probs[:, control].sum(-1).max() < 1e-6
    assert probs[:, tokenizer.encode("\n")[0]].max() > 1e-9  # newline stays possible
    # Peaked, not uniform: the logit spread is around 3 and the top token is far above 1/V.
    assert 2.0 < logits[:, 3:].std(-1).mean() < 4.5
    assert probs.max(-1).values.mean() > 50 / logits.shape[-1]
