"""Writes the reasoning variant of the tiny chat model: same weights, a chat template
whose generation prompt opens a `<think>` block (so the core's reasoning parser runs on
real output), with a Qwen3-style `enable_thinking` switch.

    python -m tools.reasoning_variant --base models/tiny-chat --out models/tiny-chat-reasoning

Every file of the base model is linked (relative symlinks: no second copy of the
weights) except the chat template, which is the base template with the generation
prompt of `assets/reasoning_generation_prompt.jinja`. Idempotent; runs in milliseconds.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
GENERATION_PROMPT_FILE = ASSETS_DIR / "reasoning_generation_prompt.jinja"
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja")


def reasoning_template(base_template: str) -> str:
    """The base template rendered without its generation prompt, then ours: top-level
    `set` shadows the caller's add_generation_prompt for the base part."""
    return ("{%- set _genapi_generation_prompt = add_generation_prompt -%}"
            "{%- set add_generation_prompt = false -%}\n" + base_template
            + GENERATION_PROMPT_FILE.read_text(encoding="utf-8"))


def write_variant(base: str | os.PathLike, out: str | os.PathLike) -> Path:
    base, out = Path(base).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(base.iterdir()):
        if src.name in TEMPLATE_FILES or not src.is_file():
            continue
        link = out / src.name
        target = os.path.relpath(src, out.resolve())
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    template = reasoning_template((base / "chat_template.jinja").read_text(encoding="utf-8"))
    config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="models/tiny-chat")
    ap.add_argument("--out", default="models/tiny-chat-reasoning")
    args = ap.parse_args(argv)
    print(f"[reasoning_variant] wrote {write_variant(args.base, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
