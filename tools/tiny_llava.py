"""Builds the embedded tiny vision-language checkpoint `genapi-tiny-vision`: a
LlavaForConditionalGeneration whose language model is the trained tiny chat LM
(`models/tiny-chat`, tools/tiny_models.py) and whose vision tower (CLIP, 32x32 pixels,
8x8 patches: 16 image tokens per image) and projector have seeded random weights. Its
answers are those of the tiny chat model, nudged by meaningless image features: a demo
that runs every real code path of image input (processor, image token expansion, vision
encoder, embedding splice), not an image describer.

Real processor files, made here offline:
- the tiny chat tokenizer plus one special token, `<image>` (id 4096; the embedding and
  lm_head get one row each: the embedding is never read, the image features replace it,
  and the lm_head row copies the pad token's, which the model never chooses);
- `CLIPImageProcessor` (resize the shortest edge to 32, center-crop 32x32, CLIP's mean/std)
  and `LlavaProcessor` (patch 8, feature strategy "default": the CLS feature dropped);
- the tiny chat model's ChatML template with image parts rendered as `<image>` where they
  stand in the message.

    python -m tools.tiny_llava [--base models/tiny-chat] [--out models/tiny-vision] [--force]

Idempotent: `genapi_fingerprint.json` records this module's code and the base model's
fingerprint; a rebuild is skipped when both match. Builds in seconds (no training).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 20261203
FINGERPRINT_FILE = "genapi_fingerprint.json"
VERSION = 1  # bump when the build changes
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH_SIZE = 8
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "projection_dim": 32}
# The text part of the base template that image parts join (where a text part is rendered).
TEMPLATE_ANCHOR = "{%- elif part is mapping and part.type in ['text', 'input_text', 'output_text'] and part.text is string -%}"


def part_branch(types: list[str], text: str) -> str:
    """A render_content branch writing `text` for parts of these types, where they stand."""
    return ("{%- elif part is mapping and part.type in " + repr(types) + " -%}\n"
            "                {{- ('' if ns.first else '\\n') + '" + text + "' -}}\n"
            "                {%- set ns.first = false -%}\n            ")


def _log(msg: str, tool: str = "tiny_llava") -> None:
    print(f"[{tool}] {msg}", file=sys.stderr, flush=True)


def fingerprint(base: Path, module_file: str = __file__) -> dict:
    """What a build is a pure function of: the base model's fingerprint and the code (the
    builder's module and this one, whose helpers every builder uses)."""
    base_fp = json.loads((base / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for path in dict.fromkeys([Path(module_file).resolve(), Path(__file__).resolve()]):
        h.update(path.read_bytes())
    return {"version": VERSION, "code_sha256": h.hexdigest(), "base": base_fp}


def template_with(base_template: str, types: list[str], text: str) -> str:
    """The base ChatML template with parts of these types rendered as `text` in place."""
    if TEMPLATE_ANCHOR not in base_template:
        raise ValueError("the base chat template has changed: tools/tiny_llava.py TEMPLATE_ANCHOR not found")
    return base_template.replace(TEMPLATE_ANCHOR, part_branch(types, text) + TEMPLATE_ANCHOR, 1)


def vision_template(base_template: str) -> str:
    """The base ChatML template with image parts rendered as IMAGE_TOKEN in place."""
    return template_with(base_template, ["image", "image_url", "input_image"], IMAGE_TOKEN)


def with_template_tokens(base: Path, tokens: list[str], template: str):
    """The base tokenizer plus `tokens` (special, never split) and `template`."""
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                                for t in tokens]})
    tokenizer.chat_template = template
    return tokenizer


def load_language_model(lm_module, base: Path, rows: int, pad_id: int):
    """The base LM's weights into `lm_module` (a LlamaModel); returns (its lm_head weight,
    its generation config), both grown to `rows` rows (the new ones copy the pad token's:
    the embedding is never read, the head row never chosen)."""
    import torch
    from transformers import LlamaForCausalLM

    lm = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        state = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
        emb = state["embed_tokens.weight"]
        extra = rows - emb.shape[0]
        state["embed_tokens.weight"] = torch.cat([emb, emb[pad_id:pad_id + 1].expand(extra, -1)])
        lm_module.load_state_dict(state)
        head = lm.lm_head.weight
        return torch.cat([head, head[pad_id:pad_id + 1].expand(extra, -1)]), lm.generation_config


def save_with_language_model(model, base: Path, rows: int, pad_id: int, out: Path) -> None:
    """Puts the base LM's weights (load_language_model) into a seeded multimodal `model`
    (`model.model.language_model`, `model.lm_head`) and saves it to `out`."""
    import torch

    head, model.generation_config = load_language_model(model.model.language_model, base, rows, pad_id)
    with torch.no_grad():
        model.lm_head.weight.copy_(head)
    model.save_pretrained(out)


def text_config(base: Path, rows: int) -> dict:
    """The base LM's config with `rows` embedding rows."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    cfg.vocab_size = rows
    return cfg.to_dict()


def _build(base: Path, out: Path) -> int:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(SEED)
    tokenizer = with_template_tokens(base, [IMAGE_TOKEN],
                                     vision_template((base / "chat_template.jinja").read_text(encoding="utf-8")))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    rows, pad_id = len(tokenizer), tokenizer.pad_token_id or 0
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION).to_dict(), text_config=text_config(base, rows),
                      image_token_index=image_id, projector_hidden_act="gelu", vision_feature_select_strategy="default",
                      vision_feature_layer=-2, image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
                      tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(cfg).eval()  # seeded random vision tower and projector
    save_with_language_model(model, base, rows, pad_id, out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=tokenizer.chat_template, image_token=IMAGE_TOKEN)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def build(base: str | Path = "models/tiny-chat", out: str | Path = "models/tiny-vision", force: bool = False) -> Path:
    """Builds (or keeps, when up to date) the checkpoint in `out`; returns its path.
    FileNotFoundError when `base` is not a built tiny chat model; FileExistsError when
    `out` holds something this module did not build."""
    return build_dir(base, out, _build, __file__, force)


def build_dir(base, out, builder, module_file: str, force: bool = False) -> Path:
    """The idempotent build of a checkpoint derived from the tiny chat model: `builder(base,
    tmp_dir)` -> parameter count, into a temporary directory renamed to `out` when done."""
    base, out = Path(base).resolve(), Path(out).resolve()
    if not (base / FINGERPRINT_FILE).is_file():
        raise FileNotFoundError(f"{base} is not a built tiny chat model (run tools.tiny_models first)")
    fp = fingerprint(base, module_file)
    tool = Path(module_file).stem
    try:
        current = json.loads((out / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current == fp and not force:
        _log(f"{out} up to date", tool)
        return out
    if out.exists() and current is None and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a genapi tiny checkpoint; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        n = builder(base, tmp)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(fp, indent=2) + "\n", encoding="utf-8")  # last
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"built {out}: {n / 1e6:.2f}M parameters", tool)
    return out


def cli(build_fn, doc: str, default_out: str, argv: list[str] | None = None) -> int:
    """The command line every tiny multimodal builder shares: --base, --out, --force."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--base", default="models/tiny-chat")
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    build_fn(args.base, args.out, args.force)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(build, __doc__, "models/tiny-vision", argv)


if __name__ == "__main__":
    raise SystemExit(main())
