"""What the Responses API's state costs over chat completions: the same conversation
turns, sequentially, through /v1/chat/completions (the client resends the history),
/v1/responses with store=false (the same, as items) and /v1/responses continuing with
previous_response_id (the core loads and stores the state, SQLite synchronous=FULL).

Starts `genapi serve` once (the embedded tiny chat model) and runs --rounds rounds; each
round plays a --turns-turn conversation on every side (sides alternate within a round,
so machine drift hits all of them). Prints per side the latency per turn (p50, p90) and
the p50 ratio to chat.

    .venv/bin/python bench/responses.py [--rounds 5] [--turns 6] [--tokens 8]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, free_port, http_ready, pct, running

MODEL = "genapi-tiny-chat"
QUESTIONS = ["Hi", "Tell me a joke", "Another one", "Why is the sky blue?", "What is 2+2?", "Thanks",
             "Tell me more", "Goodbye"]


def chat_side(c: httpx.Client, turns: int, tokens: int) -> list[float]:
    messages, times = [], []
    for i in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        t0 = time.perf_counter()
        r = c.post("/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": tokens,
                                              "temperature": 0}).raise_for_status().json()
        times.append(time.perf_counter() - t0)
        messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
    return times


def items_side(c: httpx.Client, turns: int, tokens: int) -> list[float]:
    items, times = [], []
    for i in range(turns):
        items.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        t0 = time.perf_counter()
        r = c.post("/responses", json={"model": MODEL, "input": items, "max_output_tokens": tokens,
                                       "temperature": 0, "store": False}).raise_for_status().json()
        times.append(time.perf_counter() - t0)
        items += r["output"]
    return times


def stored_side(c: httpx.Client, turns: int, tokens: int) -> list[float]:
    previous, times = None, []
    for i in range(turns):
        body = {"model": MODEL, "input": QUESTIONS[i % len(QUESTIONS)], "max_output_tokens": tokens,
                "temperature": 0}
        if previous:
            body["previous_response_id"] = previous
        t0 = time.perf_counter()
        previous = c.post("/responses", json=body).raise_for_status().json()["id"]
        times.append(time.perf_counter() - t0)
    return times


SIDES = {"chat (history resent)": chat_side, "responses store=false (items)": items_side,
         "responses previous_response_id": stored_side}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=8, help="output tokens per turn")
    args = ap.parse_args()

    port, grpc_port = free_port(), free_port()
    cfg = Path(tempfile.mkdtemp()) / "bench.toml"
    cfg.write_text(f'[shim]\nworkers = 2\n[[models]]\nname = "{MODEL}"\npath = "{ROOT / "models" / "tiny-chat"}"\n')
    argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "genapi", "serve", "--config", str(cfg),
            "--port", str(port), "--grpc-port", str(grpc_port)]
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    with running(argv, http_ready(f"http://127.0.0.1:{port}/health"), log_name="bench-responses.log"), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=120) as c:
        for side in SIDES.values():  # warm-up
            side(c, 2, args.tokens)
        for _ in range(args.rounds):
            for name, side in SIDES.items():
                times[name] += side(c, args.turns, args.tokens)
    base = pct(times["chat (history resent)"], 50)
    print(f"{args.rounds} rounds x {args.turns} turns, {args.tokens} output tokens per turn")
    for name, ts in times.items():
        print(f"{name:34s} p50 {pct(ts, 50) * 1000:7.1f} ms  p90 {pct(ts, 90) * 1000:7.1f} ms  "
              f"p50 ratio to chat {pct(ts, 50) / base:.2f}")


if __name__ == "__main__":
    main()
