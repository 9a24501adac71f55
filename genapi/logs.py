"""Log lines of both tiers: text (default) or JSON (`[logging] format = "json"`), each with
the request id and trace id of the request it belongs to, when there is one.

`setup(fmt, context)` configures the root logger; `context()` returns the current
request's ids ({} outside a request): the core reads its context variables
(server/tracing.py), the shim flask.g (shim/tracing.py). Text lines end with
` request_id=... trace_id=...`; JSON lines are one object per line with `ts`, `level`,
`logger`, `message`, the ids, and an access line's fields (`extra={"access": {...}}`).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

from genapi.untrusted import clip

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
# The format a spawned process (an engine) inherits from the core: "text" or "json".
FORMAT_ENV = "GENAPI_LOG_FORMAT"


class ContextFilter(logging.Filter):
    """Adds `request_id` and `trace_id` (or "") to every record."""

    def __init__(self, context: Callable[[], dict]):
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            ctx = self.context() or {}
        except Exception:
            ctx = {}
        for k in ("request_id", "trace_id"):
            if not getattr(record, k, None):
                # Client-supplied (x-request-id): escaped and bounded like every logged value.
                setattr(record, k, clip(ctx.get(k, "")) if ctx.get(k) else "")
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if getattr(record, "access", None):  # the access line names its ids itself
            return line
        rid, tid = getattr(record, "request_id", ""), getattr(record, "trace_id", "")
        if rid and f"request {rid}" not in line and f"request_id={rid}" not in line:
            line += f" request_id={rid}"
        if tid:
            line += f" trace_id={tid}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "process": record.process}
        access = getattr(record, "access", None)
        if access:
            out.update(access)
        else:
            out["message"] = record.getMessage()
        for k in ("request_id", "trace_id"):
            if (v := getattr(record, k, "")) and k not in out:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: str, fmt: str = "text", context: Callable[[], dict] = dict,
          logger: logging.Logger | None = None, text_format: str = TEXT_FORMAT) -> None:
    """One stderr handler on `logger` (default root) with the chosen format and the ids."""
    target = logger or logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(text_format))
    handler.addFilter(ContextFilter(context))
    for h in list(target.handlers):
        target.removeHandler(h)
    target.addHandler(handler)
    target.setLevel(level)
