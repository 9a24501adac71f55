"""Resident memory of the service across refused large images (issue 12, row B11).

Starts `genapi serve` on the tiny vision model twice: once with genapi's glibc malloc
settings for the tiers (genapi/cli.py MALLOC_ENV, the default) and once with glibc's
(8 arenas per core, and the 32 MB mmap threshold that glibc's dynamic threshold reaches
once blocks that large have been freed; `genapi serve` keeps values set in the
environment). Each side
sends `--requests` chat requests, `--concurrency` at a time, whose image is a ~15 MB
data: URL of random bytes (refused: 400), and prints each process's RSS before and after
and the growth ratio of the two sides.

    .venv/bin/python bench/media_memory.py
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import os
import sys
import tempfile

import httpx

from common import ROOT, free_port, http_ready, process_tree, running

sys.path.insert(0, str(ROOT))

GLIBC_DEFAULTS = {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1)), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def rss_mb(root: int) -> dict[str, int]:
    """Resident MB by role (shim workers summed with the master, core, engine)."""
    out: dict[str, int] = {}
    for pid, (_, cmd) in process_tree(root).items():
        try:
            kb = int(next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith("VmRSS")).split()[1])
        except (OSError, StopIteration):
            continue
        role = "shim" if b"gunicorn" in cmd else "engine" if b"spawn_main" in cmd else "core" if b"core" in cmd else None
        if role:
            out[role] = out.get(role, 0) + kb // 1024
    return out


def side(env_overrides: dict[str, str], args) -> tuple[dict, dict]:
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f'[[models]]\nname = "v"\npath = "{ROOT / "models" / "tiny-vision"}"\n')
    config.close()
    port = free_port()
    argv = [sys.executable, "-m", "genapi", "serve", "--config", config.name, "--port", str(port),
            "--grpc-port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_DEFAULTS}
    env.update({k: v for k, v in env_overrides.items() if v})
    with running(argv, http_ready(f"http://127.0.0.1:{port}/health"), log_name="bench-media-memory.log",
                 env=env) as proc:
        junk = "data:image/png;base64," + base64.b64encode(os.urandom(11 * 1024 * 1024)).decode()
        body = {"model": "v", "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": junk}}]}]}

        def one(_):
            return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=600).status_code
        one(0)
        before = rss_mb(proc.pid)
        with cf.ThreadPoolExecutor(args.concurrency) as ex:
            codes = set(ex.map(one, range(args.requests)))
        assert codes == {400}, codes
        return before, rss_mb(proc.pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    from genapi.cli import MALLOC_ENV

    results = {"genapi": side(MALLOC_ENV, args), "glibc": side(GLIBC_DEFAULTS, args)}
    growth = {}
    for name, (before, after) in results.items():
        growth[name] = sum(after.values()) - sum(before.values())
        print(f"{name:7s} before {before}  after {after}  growth {growth[name]} MB")
    print(f"growth ratio genapi/glibc: {growth['genapi'] / max(1, growth['glibc']):.2f}")


if __name__ == "__main__":
    main()
