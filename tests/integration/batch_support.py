"""Helpers of the batch and file tests: input files, polling, reading result files."""
from __future__ import annotations

import json

from ..conftest import MODEL, wait_until

TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, model: str = MODEL, max_tokens: int = 2, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": f"say {custom_id}"}],
                     "max_tokens": max_tokens, "temperature": 0, **body}}


def jsonl(lines) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def upload(client, lines, name: str = "input.jsonl", purpose: str = "batch"):
    return client.files.create(file=(name, jsonl(lines)), purpose=purpose)


def wait_batch(client, batch_id: str, until=TERMINAL, timeout_s: float = 300, interval_s: float = 0.2):
    """The batch once its status is in `until` (or as it is at the timeout)."""
    last = []

    def reached() -> bool:
        last[:] = [client.batches.retrieve(batch_id)]
        return last[0].status in until

    wait_until(reached, timeout_s, interval_s)
    return last[0]


def result_lines(client, file_id: str | None) -> list[dict]:
    if not file_id:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def assert_exactly_once(client, batch, custom_ids) -> tuple[list[dict], list[dict]]:
    """Every custom_id once across the output and error files, and request_counts match."""
    out, err = result_lines(client, batch.output_file_id), result_lines(client, batch.error_file_id)
    seen = [r["custom_id"] for r in out + err]
    assert sorted(seen) == sorted(custom_ids), "custom_ids missing or repeated"
    assert batch.request_counts.completed == len(out) and batch.request_counts.failed == len(err)
    assert batch.request_counts.total == len(custom_ids)
    return out, err
