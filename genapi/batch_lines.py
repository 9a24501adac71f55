"""The OpenAI batch file format, shared by the core's batch runner and the CLI: input line
validation, output and error lines, and one codec per batch endpoint.

Why here: the core knows no OpenAI JSON (DESIGN rule 2), yet a batch's result files are
OpenAI JSON and must hold exactly what the interactive endpoint would have answered.
So the runner (server/batches/) handles only typed requests, event streams and gRPC
statuses, and calls a `LineCodec` for the JSON at each end. The codecs reuse the
shim's own pure modules (protocol validation, translate functions, the one gRPC ->
HTTP error table), imported lazily when a batch first needs them, so a batch line and an
interactive request go through the very same validation, translation and error bodies,
and nothing of it is written twice. `server/` itself never imports `shim/`.

Adding an endpoint is one entry in ENDPOINTS (plus, for a new core service, one executor
in server/batches/runner.py EXECUTORS).

Input line: {"custom_id": str, "method": "POST", "url": <the batch endpoint>, "body": {...}}.
Output line: {"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id",
"body"}, "error": null}; lines the batch never ran: "response": null, "error": {"code",
"message"}.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

MAX_LINES = 50_000  # OpenAI's limit per batch
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_ERRORS = 100  # validation errors reported per batch
MAX_CUSTOM_ID_CHARS = 512

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


@dataclass
class InputLine:
    custom_id: str
    line: int  # 1-based
    body: dict


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_input(data: bytes, endpoint: str) -> tuple[list[InputLine], list[dict]]:
    """The lines of a batch input file, or the validation errors (each with its 1-based
    `line`; at most MAX_ERRORS): bad JSON, missing or duplicate custom_id, method other
    than POST, url other than `endpoint`, more than MAX_LINES lines or MAX_INPUT_BYTES.
    Blank lines are skipped."""
    if len(data) > MAX_INPUT_BYTES:
        return [], [_error("file_too_large", f"The input file is larger than {MAX_INPUT_BYTES} bytes.")]
    lines: list[InputLine] = []
    errors: list[dict] = []
    seen: set[str] = set()
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors write one)
    for number, raw in enumerate(data.split(b"\n"), 1):
        if len(errors) >= MAX_ERRORS:
            break
        if not raw.strip():
            continue
        if len(lines) + len(errors) >= MAX_LINES:
            errors.append(_error("too_many_requests", f"The input file has more than {MAX_LINES} requests.",
                                 number))
            break
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            errors.append(_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
            continue
        if not isinstance(obj, dict):
            errors.append(_error("invalid_json_line", "This line is not a JSON object.", number))
            continue
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            errors.append(_error("missing_custom_id", "Each line needs a non-empty string `custom_id`.", number,
                                 "custom_id"))
            continue
        if len(cid) > MAX_CUSTOM_ID_CHARS:
            errors.append(_error("invalid_custom_id", f"`custom_id` is longer than {MAX_CUSTOM_ID_CHARS} "
                                 "characters.", number, "custom_id"))
            continue
        if cid in seen:
            errors.append(_error("duplicate_custom_id", "The custom_id for this request is a duplicate of "
                                 "another request. The custom_id parameter must be unique for each request "
                                 "in a batch.", number, "custom_id"))
            continue
        if obj.get("method", "POST") != "POST":
            errors.append(_error("invalid_method", "Only the POST method is supported.", number, "method"))
            continue
        if obj.get("url") != endpoint:
            errors.append(_error("mismatched_url", f"The url of each line must be the batch's endpoint "
                                 f"{endpoint}.", number, "url"))
            continue
        if not isinstance(obj.get("body"), dict):
            errors.append(_error("invalid_body", "Each line needs a JSON object `body`.", number, "body"))
            continue
        seen.add(cid)
        lines.append(InputLine(cid, number, obj["body"]))
    if not lines and not errors:
        errors.append(_error("empty_file", "The input file has no requests."))
    return lines, errors


def new_line_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def response_line(custom_id: str, request_id: str, status_code: int, body: dict) -> str:
    """An output (status 200) or error-file line for a request that ran or was refused."""
    return _dumps({"id": new_line_id(), "custom_id": custom_id,
                   "response": {"status_code": status_code, "request_id": request_id, "body": body},
                   "error": None})


def unrun_line(custom_id: str, code: str, message: str) -> str:
    """An error-file line for a request the batch never ran (e.g. `batch_expired`)."""
    return _dumps({"id": new_line_id(), "custom_id": custom_id, "response": None,
                   "error": {"code": code, "message": message}})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class LineRejected(Exception):
    """A line's body the endpoint refuses before calling the core: HTTP status and body."""

    def __init__(self, status_code: int, body: dict):
        super().__init__(status_code)
        self.status_code = status_code
        self.body = body


@dataclass(frozen=True)
class LineCodec:
    """OpenAI JSON at both ends of one batch endpoint.

    service:    which core service runs the line (server/batches/runner.py EXECUTORS)
    to_request: (body, request_id) -> request proto; raises LineRejected (status, body)
    accumulator: (body) -> object with add(event) and result() -> response body dict
    error:      grpc.Status -> (HTTP status, OpenAI error body)
    usage:      response body -> (input tokens, output tokens)
    """

    service: str
    to_request: Callable
    accumulator: Callable
    error: Callable
    usage: Callable


class _StatusCall:
    """A grpc.Status seen as a failed call (what shim.errors.from_grpc_error reads)."""

    def __init__(self, status):
        self._status = status

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def _rejecting(validate, to_proto) -> Callable:
    """to_request: the interactive endpoint's validation and translation, its 4xx as a
    LineRejected."""
    from shim.errors import APIError

    def to_request(body: dict, request_id: str):
        try:
            return to_proto(validate(body), request_id)
        except APIError as e:
            raise LineRejected(e.status, e.envelope()) from None

    return to_request


def _http_error(status) -> tuple[int, dict]:
    from shim.errors import from_grpc_error

    e = from_grpc_error(_StatusCall(status), not_found_param="model", not_found_code="model_not_found")
    return e.status, e.envelope()


def _usage(result: dict) -> tuple[int, int]:
    u = result.get("usage") or {}
    return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)


def _chat_codec() -> LineCodec:
    from shim.protocol.chat import validate_chat_request
    from shim.translate.chat import ChatCompletionAccumulator, chat_request_to_proto

    def validate(body: dict) -> dict:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}  # results are whole
        return validate_chat_request(body)

    def accumulator(body: dict):
        return ChatCompletionAccumulator(model=body["model"], n=body.get("n") or 1,
                                         logprobs=body.get("logprobs") is True)

    return LineCodec("generation", _rejecting(validate, chat_request_to_proto), accumulator, _http_error, _usage)


class _OneReply:
    """The accumulator of a unary endpoint: its one reply, as the endpoint's JSON."""

    def __init__(self, to_dict: Callable):
        self._to_dict = to_dict
        self._reply = None

    def add(self, reply) -> None:
        self._reply = reply

    def result(self) -> dict:
        return self._to_dict(self._reply)


def _embeddings_codec() -> LineCodec:
    from shim.protocol.embeddings import validate_embeddings_request
    from shim.translate.embeddings import embed_response_to_dict, embeddings_request_to_proto

    def accumulator(body: dict):
        return _OneReply(lambda reply: embed_response_to_dict(reply, body.get("encoding_format")))

    return LineCodec("embedding", _rejecting(validate_embeddings_request, embeddings_request_to_proto),
                     accumulator, _http_error, _usage)


#: Batch endpoint -> codec factory (responses joins when it exists).
ENDPOINTS: dict[str, Callable[[], LineCodec]] = {
    "/v1/chat/completions": _chat_codec,
    "/v1/embeddings": _embeddings_codec,
}


@lru_cache(maxsize=None)
def codec(endpoint: str) -> LineCodec:
    """The codec of a supported endpoint (KeyError for others)."""
    return ENDPOINTS[endpoint]()
