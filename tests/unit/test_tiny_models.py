"""The generated tiny checkpoint: deterministic, idempotent, loadable, and well behaved."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tools import tiny_models  # noqa: E402

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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two independent builds of the tiny preset (float32)."""
    root = tmp_path_factory.mktemp("tiny")
    a = tiny_models.build(root / "a")
    b = tiny_models.build(root / "b")
    return a, b


@pytest.fixture(scope="module")
def tokenizer(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built[0])


@pytest.fixture(scope="module")
def model(built):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(built[0]).eval()


def test_builds_are_byte_identical(built):
    a, b = built
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for required in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", tiny_models.FINGERPRINT_FILE):
        assert required in names
    for name in names:
        assert _sha256(a / name) == _sha256(b / name), name


def test_second_build_is_a_fast_noop(built, capsys):
    a = built[0]
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    capsys.readouterr()
    t0 = time.perf_counter()
    assert tiny_models.build(a) == a
    elapsed = time.perf_counter() - t0
    assert "up to date" in capsys.readouterr().out
    assert elapsed < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == before
    assert tiny_models.is_up_to_date(a, "tiny", "float32")
    assert not tiny_models.is_up_to_date(a, "tiny", "bfloat16")
    assert not tiny_models.is_up_to_date(a, "bench")


def test_fingerprint_records_inputs(built):
    fp = json.loads((built[0] / tiny_models.FINGERPRINT_FILE).read_text())
    assert fp == tiny_models.fingerprint("tiny", "float32")
    assert fp["preset"] == "tiny" and fp["dtype"] == "float32"
    assert len(fp["sources_sha256"]) == 64


def test_model_config_and_parameter_count(built, model):
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (256, 4, 704)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)  # grouped-query attention
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 64, 256)
    assert cfg.max_position_embeddings == 2048
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == 4096
    n = sum(p.numel() for p in model.parameters())
    assert 4_000_000 < n < 6_500_000, n
    assert next(model.parameters()).dtype.is_floating_point


def test_special_tokens(tokenizer, model, built):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tiny_models.SPECIAL_TOKENS]
    assert ids == [0, 1, 2]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == 2048
    assert model.config.eos_token_id == 2
    gen = json.loads((built[0] / "generation_config.json").read_text())
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


def test_greedy_generation_runs_to_max_tokens_without_collapsing(tokenizer, model):
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a story."}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    n = 64
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(prompt):].tolist()
    assert len(new) == n  # EOS never won
    assert not set(new) & {0, 1, 2}
    assert len(set(new[-32:])) > 8  # not stuck repeating one or two tokens


def test_eos_and_special_tokens_are_improbable(tokenizer, model):
    import torch

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


def test_rejects_unknown_preset_and_dtype(tmp_path):
    with pytest.raises(ValueError):
        tiny_models.build(tmp_path / "x", preset="huge")
    with pytest.raises(ValueError):
        tiny_models.build(tmp_path / "x", dtype="float8")
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    foreign = tmp_path / "real-model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        tiny_models.build(foreign)
    assert (foreign / "config.json").read_text() == "{}"
