"""`genapi batch submit|list|get|cancel`: batches from the command line, over HTTP
against the shim (httpx), so it works against any genapi (or OpenAI-compatible) server.

    genapi batch submit requests.jsonl --endpoint /v1/chat/completions [--output DIR]
    genapi batch list [--limit N]      genapi batch get BATCH_ID      genapi batch cancel BATCH_ID

`submit` uploads the file (purpose "batch"), creates the batch, shows a progress bar
(completed/failed/total, rate, ETA) while polling, and downloads the results next to the
input (or into --output) as `{name}-output.jsonl` and `{name}-error.jsonl`. The server is
--base-url or $GENAPI_BASE_URL (default http://127.0.0.1:8000/v1); the key is --api-key or
$GENAPI_API_KEY / $OPENAI_API_KEY. Exit status: 0 completed, 1 any other end or an error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TERMINAL = ("completed", "failed", "expired", "cancelled")
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def register(sub) -> None:
    """Adds `batch` and its subcommands to the `genapi` argument parser."""
    # --base-url and --api-key go before or after the subcommand (`genapi batch --base-url U
    # submit f` or `genapi batch submit f --base-url U`): the subcommands know them too,
    # without defaults of their own, so a value given before is kept.
    def shared(with_defaults: bool) -> argparse.ArgumentParser:
        opts = argparse.ArgumentParser(add_help=False)
        env_url = os.environ.get("GENAPI_BASE_URL", DEFAULT_BASE_URL)
        env_key = os.environ.get("GENAPI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        opts.add_argument("--base-url", default=env_url if with_defaults else argparse.SUPPRESS,
                          help=f"REST API base URL (default $GENAPI_BASE_URL or {DEFAULT_BASE_URL})")
        opts.add_argument("--api-key", default=env_key if with_defaults else argparse.SUPPRESS,
                          help="API key (default $GENAPI_API_KEY or $OPENAI_API_KEY)")
        return opts

    p = sub.add_parser("batch", parents=[shared(True)],
                       help="submit, list, inspect or cancel batches (HTTP client of the REST API)")
    common = shared(False)
    ops = p.add_subparsers(dest="batch_cmd", required=True)

    def add(name: str, **kw):
        return ops.add_parser(name, parents=[common], **kw)

    s = add("submit", help="upload a JSONL file, run it as a batch, download the results")
    s.add_argument("file", type=Path, help="JSONL input: one {custom_id, method, url, body} per line")
    s.add_argument("--endpoint", default="/v1/chat/completions", help="endpoint of every line")
    s.add_argument("--output", type=Path, help="directory for the result files (default: beside the input)")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between progress polls")
    s.add_argument("--no-wait", action="store_true", help="print the batch and return without waiting")
    s.set_defaults(func=cmd_submit)
    ls = add("list", help="list batches, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_list)
    for name, func, text in (("get", cmd_get, "show one batch"), ("cancel", cmd_cancel, "cancel a batch")):
        q = add(name, help=text)
        q.add_argument("batch_id")
        q.set_defaults(func=func)


class ApiError(Exception):
    pass


def _client(args):
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.base_url.rstrip("/"), headers=headers, timeout=600)


def _check(resp):
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:500]
        raise ApiError(f"HTTP {resp.status_code}: {message}")
    return resp


def _run(func):
    def wrapped(args):
        import httpx

        try:
            sys.exit(func(args) or 0)
        except (ApiError, httpx.HTTPError, OSError) as e:
            print(f"genapi batch: {e}", file=sys.stderr)
            sys.exit(1)
    return wrapped


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


@_run
def cmd_list(args):
    with _client(args) as c:
        _print(_check(c.get("/batches", params={"limit": args.limit})).json())


@_run
def cmd_get(args):
    with _client(args) as c:
        _print(_check(c.get(f"/batches/{args.batch_id}")).json())


@_run
def cmd_cancel(args):
    with _client(args) as c:
        _print(_check(c.post(f"/batches/{args.batch_id}/cancel")).json())


@_run
def cmd_submit(args):
    from tqdm import tqdm

    with _client(args) as c:
        with open(args.file, "rb") as f:
            uploaded = _check(c.post("/files", data={"purpose": "batch"}, files={"file": (args.file.name, f)})).json()
        batch = _check(c.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": args.endpoint,
                                                "completion_window": "24h"})).json()
        print(f"batch {batch['id']} created from {uploaded['id']}", file=sys.stderr)
        if args.no_wait:
            _print(batch)
            return 0
        with tqdm(total=0, unit="line", desc=batch["id"][:18], file=sys.stderr, dynamic_ncols=True) as bar:
            while True:
                counts = batch["request_counts"] or {}
                bar.total = counts.get("total") or bar.total
                bar.update(counts.get("completed", 0) + counts.get("failed", 0) - bar.n)
                bar.set_postfix(status=batch["status"], failed=counts.get("failed", 0))
                if batch["status"] in TERMINAL:
                    break
                time.sleep(args.interval)
                batch = _check(c.get(f"/batches/{batch['id']}")).json()
        out_dir = args.output or args.file.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        for key, suffix in (("output_file_id", "output"), ("error_file_id", "error")):
            if batch.get(key):
                path = out_dir / f"{args.file.stem}-{suffix}.jsonl"
                with c.stream("GET", f"/files/{batch[key]}/content") as resp, open(path, "wb") as out:
                    _check(resp)
                    for chunk in resp.iter_bytes():
                        out.write(chunk)
                print(f"{suffix}: {path}", file=sys.stderr)
        for e in (batch.get("errors") or {}).get("data") or []:
            print(f"line {e.get('line')}: {e.get('code')}: {e.get('message')}", file=sys.stderr)
        print(f"batch {batch['id']} {batch['status']}", file=sys.stderr)
        return 0 if batch["status"] == "completed" else 1
