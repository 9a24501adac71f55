"""The shim's HTTP front under a burst, and its CPU cost per request.

Starts `genapi serve` on the tiny chat model with the default admission settings
(max_batch 32, max_queue 256: the core holds 288 requests; [shim] workers 2, threads
auto unless --threads), then:

  burst  3x the core's capacity (864 requests) sent at once on pre-opened connections,
         non-streaming, `--tokens` each; prints how the connections split between the
         workers, what each request got (200, 429 from the core `engine_overloaded`, 429
         from the front `server_overloaded`) and how long after its send the first byte of
         the answer came. With --before, both checkouts in turn each round, and the ratio of
         their refusals' p50.
  cpu    CPU seconds of the gunicorn workers (from /proc) per request: GET /v1/models on a
         kept-alive connection, on a new connection each time, a 1-token chat completion.

    .venv/bin/python bench/http_front.py
    .venv/bin/python bench/http_front.py --skip cpu --rounds 2 --before /path/to/other/checkout
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, cpu_seconds, free_port, http_ready, pct, process_tree, running

MODEL = "genapi-tiny-chat"


def write_config(root: Path, threads: int | None) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write("[shim]\nworkers = 2\n" + (f"threads = {threads}\n" if threads is not None else ""))
    f.write(f'[[models]]\nname = "{MODEL}"\npath = "{root / "models" / "tiny-chat"}"\n')
    f.close()
    return Path(f.name)


def worker_pids(master_parent: int) -> list[int]:
    """gunicorn workers: gunicorn processes whose parent is a gunicorn process."""
    tree = process_tree(master_parent)
    return [p for p, (pp, cmd) in tree.items() if b"gunicorn" in cmd and b"gunicorn" in tree.get(pp, (0, b""))[1]]


def chat_bytes(tokens: int) -> bytes:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Describe the harbour at night."}],
                       "max_tokens": tokens, "temperature": 0, "ignore_eos": True}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def socket_fds(pid: int) -> int:
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))


def burst(host: str, port: int, workers: list[int], n: int, tokens: int) -> list[float]:
    """Prints the outcomes; returns the refusals' times to first byte (ms)."""
    held = [socket_fds(w) for w in workers]
    socks = [socket.create_connection((host, port), timeout=120) for _ in range(n)]
    time.sleep(1.0)  # all accepted
    print("burst: connections per worker: " + ", ".join(str(socket_fds(w) - h) for w, h in zip(workers, held)))
    sel = selectors.DefaultSelector()
    sent, first, raw = {}, {}, {s: b"" for s in socks}
    data = chat_bytes(tokens)
    t0 = time.monotonic()
    for s in socks:
        sent[s] = time.monotonic()
        s.sendall(data)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print(f"burst: {n} requests sent in {(time.monotonic() - t0) * 1000:.0f} ms")

    def complete(b: bytes) -> bool:
        head, sep, rest = b.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
        return len(rest) >= length

    pending, deadline = set(socks), time.monotonic() + 900
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk and s not in first:
                first[s] = time.monotonic()
            raw[s] += chunk
            if not chunk or complete(raw[s]):
                pending.discard(s)
                sel.unregister(s)
    outcomes: dict[str, list[float]] = {}
    for s in socks:
        status = raw[s][9:12].decode() or "none"
        if status == "429":
            status += " " + json.loads(raw[s].partition(b"\r\n\r\n")[2])["error"]["code"]
            assert b"\r\nretry-after:" in raw[s].lower()
        outcomes.setdefault(status, []).append((first.get(s, deadline) - sent[s]) * 1000)
        s.close()
    for k, v in sorted(outcomes.items()):
        print(f"  {len(v):4d} x {k:26} first byte after send: p50 {pct(v, 50):.0f} ms, p90 {pct(v, 90):.0f} ms, "
              f"max {max(v):.0f} ms")
    return [t for k, v in outcomes.items() if k.startswith("429") for t in v]


def cpu(host: str, port: int, workers: list[int], rounds: int) -> None:
    chat = chat_bytes(1).partition(b"\r\n\r\n")[2]

    def keepalive_models(n):
        c = http.client.HTTPConnection(host, port)
        for _ in range(n):
            c.request("GET", "/v1/models")
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        c.close()

    def fresh_models(n):
        for _ in range(n):
            c = http.client.HTTPConnection(host, port)
            c.request("GET", "/v1/models")
            c.getresponse().read()
            c.close()

    def chat_keepalive(n):
        c = http.client.HTTPConnection(host, port)
        for _ in range(n):
            c.request("POST", "/v1/chat/completions", chat, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        c.close()

    keepalive_models(50)
    chat_keepalive(10)
    for name, fn, n in (("GET /v1/models, kept alive", keepalive_models, 1000),
                        ("GET /v1/models, new connection", fresh_models, 1000),
                        ("chat, 1 token, kept alive", chat_keepalive, 200)):
        per_request = []
        for _ in range(rounds):
            c0 = cpu_seconds(workers)
            fn(n)
            per_request.append((cpu_seconds(workers) - c0) / n * 1000)
        print(f"cpu: {name:32} worker CPU per request: median {pct(per_request, 50):.2f} ms "
              f"(min {min(per_request):.2f}, {rounds} rounds of {n})")


def serve(root: Path, threads: int | None, work) -> None:
    """Runs `work(port, workers)` against `genapi serve` started from `root`'s directory,
    so that its own genapi, shim and server run."""
    port, grpc_port = free_port(), free_port()
    cfg = write_config(root, threads)
    argv = [sys.executable, "-c", f"import os, sys; os.chdir({str(root)!r}); sys.path.insert(0, ''); "
            "from genapi.cli import main; main()",
            "serve", "--config", str(cfg), "--port", str(port), "--grpc-port", str(grpc_port)]
    with running(argv, http_ready(f"http://127.0.0.1:{port}/health"), log_name="bench-http-front.log") as proc:
        workers = worker_pids(proc.pid)
        print(f"{root}: {len(workers)} shim workers")
        work(port, workers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout to run")
    ap.add_argument("--before", type=Path, default=None, help="checkout to compare the burst with")
    ap.add_argument("--threads", type=int, default=None, help="[shim] threads (default: the config's default)")
    ap.add_argument("--tokens", type=int, default=4, help="max_tokens of each burst request")
    ap.add_argument("--requests", type=int, default=864, help="burst size (3x the default core capacity)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip", choices=["burst", "cpu"], action="append", default=[])
    args = ap.parse_args()
    sides = [args.before.resolve(), args.root.resolve()] if args.before else [args.root.resolve()]
    refusals: dict[Path, list[float]] = {root: [] for root in sides}
    if "burst" not in args.skip:
        for _ in range(args.rounds):  # alternating, so that both sides see the same machine
            for root in sides:
                serve(root, args.threads,
                      lambda port, workers: refusals[root].extend(burst("127.0.0.1", port, workers, args.requests,
                                                                        args.tokens)))
        for root in sides:
            if refusals[root]:
                print(f"{root}: {len(refusals[root])} refusals over {args.rounds} rounds, "
                      f"p50 {pct(refusals[root], 50):.0f} ms")
        if args.before and all(refusals.values()):
            print(f"refusal p50, before / after: {pct(refusals[sides[0]], 50) / pct(refusals[sides[1]], 50):.2f}x")
    if "cpu" not in args.skip:
        serve(args.root.resolve(), args.threads, lambda port, workers: cpu("127.0.0.1", port, workers, args.rounds))


if __name__ == "__main__":
    main()
