"""Builds the embedded tiny Whisper-architecture checkpoint `genapi-tiny-whisper`: a seeded
WhisperForConditionalGeneration (random weights: its transcripts are meaningless but
deterministic) with real processor files made here, offline:

- `preprocessor_config.json`: transformers' WhisperFeatureExtractor (80 log-mel bins,
  16 kHz, 30 s windows of 3,000 frames), as every Whisper checkpoint up to large-v2 has.
- `tokenizer.json` and friends: a byte-level BPE trained here with `tokenizers` on the
  chat corpus (tools/assets/corpus), followed by Whisper's special tokens in Whisper's
  order: `<|endoftext|>`, `<|startoftranscript|>`, one `<|xx|>` per language of
  transformers' Whisper LANGUAGES table, `<|translate|>`, `<|transcribe|>`,
  `<|startoflm|>`, `<|startofprev|>`, `<|nospeech|>`, `<|notimestamps|>`, then the 1,501
  timestamp tokens `<|0.00|>` ... `<|30.00|>` (0.02 s apart).
- `generation_config.json`: what Whisper's generate needs (lang_to_id, task_to_id,
  no_timestamps_token_id, suppress tokens, alignment_heads for word timestamps, ...).

    python -m tools.tiny_whisper [--out models/tiny-whisper] [--preset tiny|bench] [--force]

Rebuilds only when `genapi_fingerprint.json` in the directory differs from what this
module would build (a build-time tool: the server never imports it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 20261202
BPE_VOCAB = 2048  # byte-level BPE tokens before Whisper's special tokens
CORPUS = Path(__file__).resolve().parent / "assets" / "corpus"
# Whisper geometry (80 mel bins, 1,500 encoder positions = 30 s). "tiny": the embedded
# default, tiny widths and depths; "bench": openai/whisper-tiny's widths, depths and context
# (bench/transcription.py: real compute per window, random weights).
PRESETS = {
    "tiny": {"num_mel_bins": 80, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 128,
             "decoder_ffn_dim": 128, "max_source_positions": 1500, "max_target_positions": 128},
    "bench": {"num_mel_bins": 80, "d_model": 384, "encoder_layers": 4, "decoder_layers": 4,
              "encoder_attention_heads": 6, "decoder_attention_heads": 6, "encoder_ffn_dim": 1536,
              "decoder_ffn_dim": 1536, "max_source_positions": 1500, "max_target_positions": 448},
}
FINGERPRINT_FILE = "genapi_fingerprint.json"
VERSION = 2  # bump when the build changes
SPECIALS_BEFORE = ["<|endoftext|>", "<|startoftranscript|>"]
SPECIALS_AFTER = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                  "<|notimestamps|>"]
TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def _corpus_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(CORPUS.glob("*.txt")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def fingerprint(preset: str = "tiny") -> dict:
    return {"version": VERSION, "seed": SEED, "geometry": PRESETS[preset], "bpe_vocab": BPE_VOCAB,
            "corpus": _corpus_digest()}


def _log(msg: str) -> None:
    print(f"[tiny_whisper] {msg}", flush=True)


def language_codes() -> list[str]:
    """Whisper's language codes in its token order (transformers' table)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)


def train_tokenizer():
    """A byte-level BPE (GPT-2 style, as Whisper's) with Whisper's special tokens appended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    files = [str(p) for p in sorted(CORPUS.glob("*.txt"))]
    tok.train(files, trainer)
    specials = SPECIALS_BEFORE + [f"<|{c}|>" for c in language_codes()] + SPECIALS_AFTER
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TIMESTAMPS])
    return tok


def unprintable_tokens(tok) -> list[int]:
    """Ids of the BPE tokens whose decoded text has a non-printable character."""
    out = []
    for i in range(BPE_VOCAB):
        text = tok.decode([i])
        if not text or "\ufffd" in text or not text.replace(" ", "").isprintable():
            out.append(i)
    return out


def generation_config(tok, config) -> dict:
    ids = tok.convert_tokens_to_ids
    langs = language_codes()
    eot = ids("<|endoftext|>")
    return {
        "decoder_start_token_id": ids("<|startoftranscript|>"),
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "is_multilingual": True,
        "lang_to_id": {f"<|{c}|>": ids(f"<|{c}|>") for c in langs},
        "task_to_id": {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
        "begin_suppress_tokens": [ids("Ġ"), eot],
        # As real checkpoints suppress symbols: tokens whose text is not printable (control
        # bytes, pieces of a UTF-8 character) never appear in a transcript.
        "suppress_tokens": unprintable_tokens(tok),
        # Word timestamps: cross-attention heads aligned with time (every head of the last layer).
        "alignment_heads": [[config.decoder_layers - 1, h] for h in range(config.decoder_attention_heads)],
        "return_timestamps": False,
    }


def build(out: str | Path, force: bool = False, preset: str = "tiny") -> Path:
    """Writes the checkpoint of `preset` to `out` (atomically: built next to it, then renamed)."""
    out = Path(out).resolve()
    geometry = PRESETS[preset]
    fp = fingerprint(preset)
    marker = out / FINGERPRINT_FILE
    if not force and marker.is_file() and json.loads(marker.read_text()) == fp:
        _log(f"{out} up to date")
        return out
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    raw = train_tokenizer()
    tokenizer = WhisperTokenizerFast(tokenizer_object=raw, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=1024,
                                     language=None, task=None, predict_timestamps=True)
    eot, sot = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids(
        "<|startoftranscript|>")
    config = WhisperConfig(vocab_size=len(tokenizer), decoder_start_token_id=sot, pad_token_id=eot, bos_token_id=eot,
                           eos_token_id=eot, **geometry)
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**generation_config(tokenizer, config))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=geometry["num_mel_bins"]).save_pretrained(tmp)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(fp, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(p.numel() for p in model.parameters())
    _log(f"built {out}: WhisperForConditionalGeneration, {params / 1e6:.2f}M parameters, "
         f"vocabulary {len(tokenizer)} ({BPE_VOCAB} BPE + Whisper's special and timestamp tokens)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.tiny_whisper", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/tiny-whisper", help="output directory (default: %(default)s)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="geometry (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    build(args.out, args.force, args.preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
