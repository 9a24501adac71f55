"""Continuous batching vs. sequential Hugging Face generate(), on the same checkpoint.

Side A: transformers `generate()` at batch 1, one prompt after another (greedy, EOS
ignored so every request yields exactly --tokens tokens).
Side B: the same prompts through the gRPC core at 1, 8 and 32 concurrent streams.
Prints aggregate output tokens/s, the ratio B/A, and TTFT / inter-token latency
percentiles. `--device cuda` also prints single-stream decode speed as a fraction of the
memory-bandwidth roofline (use `--preset 1b --dtype bfloat16` for that).

    .venv/bin/python bench/engine.py                      # CPU, ~30M-parameter model
    .venv/bin/python bench/engine.py --device cuda --preset 1b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from common import ROOT, bench_model, free_port, grpc_ready, latency_summary, prompts, running, write_config

sys.path.insert(0, str(ROOT))


def hf_sequential(model_dir, texts, tokens, device, dtype_name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                              tokenize=False), add_special_tokens=False) for t in texts]
    def gen(x):
        with torch.inference_mode():
            inp = torch.tensor([x], device=device)
            out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return out.shape[1] - len(x)
    gen(ids[0])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    produced = sum(gen(x) for x in ids)
    if device == "cuda":
        torch.cuda.synchronize()
    return produced, time.perf_counter() - t0


def roofline(model_dir, tokens_per_s, context_tokens, bandwidth_gbs):
    """Decode must read every weight and the KV cache once per step."""
    import json

    from safetensors import safe_open

    cfg = json.load(open(model_dir / "config.json"))
    weight_bytes = 0
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        for k in f.keys():
            if "embed_tokens" in k and not cfg.get("tie_word_embeddings"):
                continue  # a decode step reads one row of the input embedding, not the table
            t = f.get_slice(k)
            n = 1
            for d in t.get_shape():
                n *= d
            weight_bytes += n * {"F32": 4, "BF16": 2, "F16": 2}[t.get_dtype()]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_bytes = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 2 * context_tokens  # bf16 K+V
    step_bytes = weight_bytes + kv_bytes
    ceiling = bandwidth_gbs * 1e9 / step_bytes
    return weight_bytes, kv_bytes, ceiling, tokens_per_s / ceiling


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--hf-requests", type=int, default=8)
    ap.add_argument("--bandwidth-gbs", type=float, default=4800, help="HBM bandwidth for the roofline (H200: 4800)")
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    model_dir = bench_model(args.preset, dtype)
    levels = [int(x) for x in args.levels.split(",")]
    print(f"model {model_dir.name}, device {args.device}/{dtype}, {args.tokens} tokens per request, EOS ignored")

    texts = prompts(args.hf_requests)

    def side_a(label):
        tokens, secs = hf_sequential(model_dir, texts, args.tokens, args.device, dtype)
        print(f"A{label} HF generate(), batch 1, sequential: {tokens} tokens in {secs:.2f}s = {tokens / secs:.1f} tok/s")
        return tokens / secs

    # Side A runs before and after side B; the ratio uses their mean, so drift of a
    # shared machine during the run hits both sides alike.
    a_before = side_a("1")

    from grpc_load import run

    port = free_port()
    cfg = write_config(model_dir, args.device, max_batch=max(levels), dtype=dtype)
    argv = [sys.executable, "-m", "genapi", "core", "--config", str(cfg), "--grpc-port", str(port)]
    target = f"127.0.0.1:{port}"
    with running(argv, grpc_ready(target), log_name="bench-engine-core.log"):
        asyncio.run(run(target, "bench", prompts(2), 2, 8))  # warm-up
        single_tps, results = None, []
        for c in levels:
            n = max(2 * c, 4)
            toks, secs, ttft, itl = asyncio.run(run(target, "bench", prompts(n), c, args.tokens))
            if c == 1:  # decode speed: the inverse of the mean inter-token gap
                single_tps = len(itl) / sum(itl) if itl else toks / secs
            results.append((c, toks, secs, ttft, itl))
    hf_tps = (a_before + side_a("2")) / 2
    for c, toks, secs, ttft, itl in results:
        tps = toks / secs
        print(f"B  core, {c:>2} streams: {toks} tokens in {secs:.2f}s = {tps:.1f} tok/s  "
              f"ratio vs mean A = {tps / hf_tps:.2f}x")
        print("   " + latency_summary(f"{c} streams", ttft, itl))
    if args.device == "cuda" and single_tps:
        ctx = len(prompts(1)[0].split()) * 2 + args.tokens // 2
        w, kv, ceiling, frac = roofline(model_dir, single_tps, ctx, args.bandwidth_gbs)
        print(f"roofline: weights {w / 1e9:.2f} GB + KV {kv / 1e6:.1f} MB per step at {args.bandwidth_gbs:.0f} GB/s "
              f"-> ceiling {ceiling:.0f} tok/s; single-stream decode {single_tps:.0f} tok/s = {frac:.0%} of roofline")


if __name__ == "__main__":
    main()
