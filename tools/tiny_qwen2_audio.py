"""Builds the embedded tiny audio-language checkpoint `genapi-tiny-audio`: a
Qwen2AudioForConditionalGeneration whose language model is the trained tiny chat LM
(`models/tiny-chat`) and whose audio encoder (Whisper-style: 80 log-mel bins, 30 s
windows, 2 layers of width 32) and projector have seeded random weights. One audio token
per 40 ms of sound (25 a second, at most 750 for the 30 s the encoder takes). Its answers
are the tiny chat model's, nudged by meaningless audio features: a demo of the code path.

Real processor files, made here offline:
- the tiny chat tokenizer plus `<|AUDIO|>`, `<|audio_bos|>` and `<|audio_eos|>` (special;
  the embedding and lm_head grow by three rows, copies of the pad token's);
- `WhisperFeatureExtractor` (80 bins, 16 kHz) and `Qwen2AudioProcessor`;
- the tiny chat model's ChatML template with each audio part rendered as
  `<|audio_bos|><|AUDIO|><|audio_eos|>` where it stands (the processor expands `<|AUDIO|>`).

    python -m tools.tiny_qwen2_audio [--base models/tiny-chat] [--out models/tiny-audio] [--force]

Idempotent like tools/tiny_llava.py (whose build skeleton it shares); seconds to build.
"""
from __future__ import annotations

from pathlib import Path

from tools.tiny_llava import build_dir, cli, save_with_language_model, template_with, text_config, with_template_tokens

SEED = 20261204
AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
ENCODER = {"num_mel_bins": 80, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
           "d_model": 32, "max_source_positions": 1500}


def audio_template(base_template: str) -> str:
    return template_with(base_template, ["audio", "input_audio"], AUDIO_BOS + AUDIO_TOKEN + AUDIO_EOS)


def _build(base: Path, out: Path) -> int:
    import torch
    from transformers import (Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, WhisperFeatureExtractor)

    torch.manual_seed(SEED)
    tokenizer = with_template_tokens(base, [AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS],
                                     audio_template((base / "chat_template.jinja").read_text(encoding="utf-8")))
    rows, pad_id = len(tokenizer), tokenizer.pad_token_id or 0
    cfg = Qwen2AudioConfig(audio_config=Qwen2AudioEncoderConfig(**ENCODER).to_dict(),
                           text_config=text_config(base, rows),
                           audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
    model = Qwen2AudioForConditionalGeneration(cfg).eval()  # seeded random encoder and projector
    save_with_language_model(model, base, rows, pad_id, out)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=ENCODER["num_mel_bins"]),
                                    tokenizer=tokenizer, chat_template=tokenizer.chat_template, audio_token=AUDIO_TOKEN,
                                    audio_bos_token=AUDIO_BOS, audio_eos_token=AUDIO_EOS)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def build(base: str | Path = "models/tiny-chat", out: str | Path = "models/tiny-audio", force: bool = False) -> Path:
    """Builds (or keeps, when up to date) the checkpoint in `out`; returns its path."""
    return build_dir(base, out, _build, __file__, force)


def main(argv: list[str] | None = None) -> int:
    return cli(build, __doc__, "models/tiny-audio", argv)


if __name__ == "__main__":
    raise SystemExit(main())
