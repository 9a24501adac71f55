"""`genapi chat "question"`: ask a running genapi (or any OpenAI-compatible server) from
a terminal and print the answer as it streams. The standard library only (the openai
SDK is a test extra), so it works from any install.

Exit codes: 0 answered; 1 the server refused (its OpenAI error message is printed) or
could not be reached; 2 bad usage (no question).
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def add_arguments(p) -> None:
    p.add_argument("question", nargs="*", help="the question (default: read from stdin)")
    p.add_argument("--url", default=os.environ.get("GENAPI_URL", DEFAULT_URL),
                   help="the API's base URL (default: $GENAPI_URL, else %(default)s)")
    p.add_argument("--model", help="model name (default: the first chat model GET /models lists)")
    p.add_argument("--system", help="a system message sent before the question")
    p.add_argument("--max-tokens", type=int, help="cap on the answer's length in tokens")
    p.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    p.add_argument("--api-key", default=os.environ.get("GENAPI_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                   help="bearer key (default: $GENAPI_API_KEY, else $OPENAI_API_KEY)")


class ChatError(Exception):
    """A refusal or an unreachable server, as one line for the terminal."""


def _request(args, path: str, body: dict | None = None):
    headers = {"Accept": "text/event-stream" if body else "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    try:
        req = urllib.request.Request(args.url.rstrip("/") + path, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    except ValueError:  # not a URL at all
        raise ChatError(f"--url {args.url!r} is not an http(s) URL (e.g. {DEFAULT_URL})") from None
    if req.type not in ("http", "https"):
        raise ChatError(f"--url {args.url!r} is not an http(s) URL (e.g. {DEFAULT_URL})")
    try:
        return urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as e:
        raise ChatError(f"{e.code}: {_error_message(e.read())}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ChatError(f"cannot reach {args.url}: {reason} (is `genapi serve` running?)") from None


def _error_message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:500] or "no details"


def first_chat_model(models: list[dict]) -> str | None:
    """The id of the first chat model of a GET /models `data` list (genapi marks each
    model with its `task`; other servers' models, which carry none, count as chat)."""
    return next((m["id"] for m in models if m.get("task", "chat") == "chat"), None)


def _first_model(args) -> str:
    with _request(args, "/models") as r:
        model = first_chat_model(json.loads(r.read()).get("data") or [])
    if model is None:
        raise ChatError(f"{args.url} serves no chat model")
    return model


def stream_answer(args, question: str, out=sys.stdout) -> None:
    """POSTs one chat completion with `stream: true` and writes each text delta to `out`
    as it arrives, then a newline; a reasoning model's thinking goes to stderr as it
    arrives. Raises ChatError."""
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": question}]
    body = {"model": args.model or _first_model(args), "messages": messages, "stream": True,
            "stream_options": {"include_obfuscation": False}}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    with _request(args, "/chat/completions", body) as r:
        for raw in r:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise ChatError(chunk["error"].get("message") or "the stream failed")
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if thought := delta.get("reasoning_content"):  # a reasoning model's thinking: on stderr
                    sys.stderr.write(thought)
                    sys.stderr.flush()
                if text := delta.get("content"):
                    out.write(text)
                    out.flush()
    out.write("\n")
    out.flush()


def main(args) -> None:
    question = " ".join(args.question) if args.question else sys.stdin.read()
    if not question.strip():
        print("genapi chat: no question (give it as arguments or on stdin)", file=sys.stderr)
        sys.exit(2)
    try:
        stream_answer(args, question.strip())
    except ChatError as e:
        print(f"genapi chat: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
