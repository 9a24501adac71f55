"""Files and batches through the official openai SDK against the real core and shim
(rows D4, D6, X6, X7 of the reliability plan): upload, create, poll, download results;
validation failures with line numbers; per-line errors equal to the interactive ones;
list and pagination; cancel mid-run; per-key isolation and path-like ids; the upload cap.

One service with two API keys (owners A and B) and a 1 MB upload cap serves the module.
"""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from ..conftest import MODEL, Service, wait_until
from .batch_support import CHAT, assert_exactly_once, chat_line, result_lines, upload, wait_batch

KEY_A, KEY_B = "sk-owner-a-0123456789abcdef", "sk-owner-b-0123456789abcdef"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("batches"), "batches", extra_toml="[files]\nmax_upload_mb = 1\n",
                env={"GENAPI_API_KEYS": f"{KEY_A},{KEY_B}"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def a(svc):
    return svc.sdk(api_key=KEY_A)


@pytest.fixture(scope="module")
def b(svc):
    return svc.sdk(api_key=KEY_B)


def test_batch_runs_every_line_and_writes_chat_bodies(a):
    ids = [f"req-{i}" for i in range(12)]
    f = upload(a, [chat_line(cid) for cid in ids] + [chat_line("bad-model", model="no-such-model")])
    assert (f.purpose, f.status, f.filename) == ("batch", "processed", "input.jsonl")
    batch = a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                             metadata={"job": "nightly"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"job": "nightly"}
    batch = wait_batch(a, batch.id)
    assert batch.status == "completed", batch
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at
    assert batch.model is None  # the lines name two models
    out, err = assert_exactly_once(a, batch, ids + ["bad-model"])
    assert sorted(r["custom_id"] for r in out) == sorted(ids)
    for r in out:
        assert r["error"] is None and r["id"].startswith("batch_req_")
        assert r["response"]["status_code"] == 200 and r["response"]["request_id"]
        body = r["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert body["usage"]["completion_tokens"] <= 2
    assert batch.usage.output_tokens == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in out)
    # The failed line carries what the interactive endpoint answers for the same body.
    with pytest.raises(openai.NotFoundError) as interactive:
        a.chat.completions.create(**chat_line("x", model="no-such-model")["body"])
    assert err[0]["custom_id"] == "bad-model" and err[0]["error"] is None
    assert err[0]["response"]["status_code"] == 404
    assert err[0]["response"]["body"] == interactive.value.response.json()
    assert a.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_bad_parameter_line_gets_the_interactive_400(a):
    f = upload(a, [chat_line("ok"), chat_line("hot", temperature=9)])
    batch = wait_batch(a, a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "completed" and batch.model == MODEL  # every line names it
    _, err = assert_exactly_once(a, batch, ["ok", "hot"])
    with pytest.raises(openai.BadRequestError) as interactive:
        a.chat.completions.create(**chat_line("hot", temperature=9)["body"])
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"] == interactive.value.response.json()


@pytest.mark.parametrize("lines, code, line_no", [
    (['{"custom_id": "a", ', chat_line("b")], "invalid_json_line", 1),
    ([chat_line("a"), {"method": "POST", "url": CHAT, "body": {}}], "missing_custom_id", 2),
    ([chat_line("a"), chat_line("b"), chat_line("a")], "duplicate_custom_id", 3),
    ([chat_line("a"), {**chat_line("b"), "url": "/v1/embeddings"}], "mismatched_url", 2),
])
def test_invalid_input_fails_with_the_line(a, lines, code, line_no):
    f = upload(a, lines)
    batch = wait_batch(a, a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "failed" and batch.failed_at
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == (code, line_no)
    assert batch.output_file_id is None and batch.request_counts.completed == 0


@pytest.mark.parametrize("endpoint, window, param", [
    ("/v1/completions", "24h", "endpoint"),
    ("/v1/images/generations", "24h", "endpoint"),
    (CHAT, "1h", "completion_window"),
])
def test_unsupported_endpoint_or_window_is_400(a, endpoint, window, param):
    f = upload(a, [chat_line("a")])
    with pytest.raises(openai.BadRequestError) as e:
        a.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window=window)
    assert e.value.body["param"] == param


def test_list_and_paginate_files_and_batches(svc):
    c = svc.sdk(api_key=KEY_B)
    files = [upload(c, [chat_line(f"p{i}")], name=f"page{i}.jsonl") for i in range(3)]
    page = c.files.list(limit=2, purpose="batch")
    assert [f.id for f in page.data] == [files[2].id, files[1].id] and page.has_more
    rest = c.files.list(limit=2, purpose="batch", after=page.data[-1].id)
    assert files[0].id in [f.id for f in rest.data]
    assert [f.id for f in c.files.list(order="asc", purpose="batch").data][:3] == [f.id for f in files]
    batches = [c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h") for f in files]
    first = c.batches.list(limit=2)
    assert [x.id for x in first.data] == [batches[2].id, batches[1].id] and first.has_more
    second = c.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == batches[0].id
    assert {x.id for x in batches} <= {x.id for x in c.batches.list(limit=2)}  # the SDK follows `after`
    for x in batches:
        wait_batch(c, x.id)


def test_cancel_mid_run_keeps_finished_results(a):
    ids = [f"c{i}" for i in range(300)]
    f = upload(a, [chat_line(cid, max_tokens=32) for cid in ids])
    batch = a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert wait_until(lambda: a.batches.retrieve(batch.id).request_counts.completed >= 2, timeout_s=300)
    cancelled = a.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at
    done = wait_batch(a, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    out = result_lines(a, done.output_file_id)
    finished = len(out) + len(result_lines(a, done.error_file_id))
    assert 2 <= len(out) and finished < len(ids)  # partial results kept, the rest never started
    assert done.request_counts.completed == len(out)
    again = wait_batch(a, batch.id)  # nothing starts after the cancel
    assert again.request_counts.completed == done.request_counts.completed
    assert a.batches.cancel(batch.id).status == "cancelled"  # cancelling twice is harmless


def test_a_finished_batch_cannot_be_cancelled_and_a_bom_is_ignored(a):
    f = a.files.create(file=("bom.jsonl", b"\xef\xbb\xbf" + json.dumps(chat_line("bom")).encode() + b"\n"),
                       purpose="batch")
    batch = wait_batch(a, a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts.completed == 1
    with pytest.raises(openai.BadRequestError) as e:
        a.batches.cancel(batch.id)
    assert e.value.code == "invalid_batch_status" and e.value.param == "batch_id"
    assert e.value.body["message"] == "Cannot cancel a batch with status 'completed'."


# ---- security: X6 (path-like ids), X7 (per-key isolation), upload cap ------------------

def test_other_owner_and_path_like_ids_are_404(svc, a, b):
    f = upload(a, [chat_line("iso")])
    batch = wait_batch(a, a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    other_file, other_batch = "file-" + "0" * 32, "batch_" + "0" * 32  # ids nobody has
    calls = [
        (b.files.retrieve, f.id, other_file), (b.files.content, f.id, other_file), (b.files.delete, f.id, other_file),
        (b.files.content, batch.output_file_id, other_file),
        (b.batches.retrieve, batch.id, other_batch), (b.batches.cancel, batch.id, other_batch),
        (lambda i: b.batches.create(input_file_id=i, endpoint=CHAT, completion_window="24h"), f.id, other_file),
    ]
    for call, theirs, nobodys in calls:
        errors = []
        for object_id in (theirs, nobodys):
            with pytest.raises(openai.NotFoundError) as e:
                call(object_id)
            errors.append({**e.value.body, "message": e.value.body["message"].replace(object_id, "ID")})
        assert errors[0] == errors[1]  # another owner's id answers exactly like a missing one
    assert f.id not in [x.id for x in b.files.list().data]
    assert batch.id not in [x.id for x in b.batches.list().data]
    headers = {"Authorization": f"Bearer {KEY_A}"}
    for path in ("../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
                 "%2Fetc%2Fpasswd", f"..%2F{f.id}", "file-../../x", "file-%2e%2e%2f"):
        for suffix in ("", "/content"):
            r = httpx.get(f"{svc.base_url}/v1/files/{path}{suffix}", headers=headers, timeout=30)
            assert r.status_code == 404, (path, r.text)
            assert "root:" not in r.text and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_deleted_file_is_404_everywhere(a):
    f = upload(a, [chat_line("gone")])
    assert a.files.delete(f.id).deleted is True
    for call in (lambda: a.files.retrieve(f.id), lambda: a.files.content(f.id), lambda: a.files.delete(f.id),
                 lambda: a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in a.files.list().data]


def test_upload_over_the_cap_is_413_and_at_the_cap_is_stored(a):
    cap = 1024 * 1024
    for size in (cap + 1, 4 * cap):  # within the multipart slack (checked after parsing), and far over
        with pytest.raises(openai.APIStatusError) as e:
            a.files.create(file=("big.jsonl", b"x" * size), purpose="user_data")
        assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
    f = a.files.create(file=("fits.bin", b"y" * cap), purpose="user_data")
    assert f.bytes == cap and a.files.content(f.id).content == b"y" * cap


def test_user_data_vision_assistants_are_stored_and_bad_purpose_is_400(a):
    for purpose in ("user_data", "assistants", "vision"):
        f = a.files.create(file=("n.txt", b"hello"), purpose=purpose)
        assert f.purpose == purpose and a.files.content(f.id).content == b"hello"
    with pytest.raises(openai.BadRequestError) as e:
        a.files.create(file=("n.txt", b"hello"), purpose="batch_output")
    assert e.value.body["param"] == "purpose"


def test_runner_log_lines_carry_the_batch_id_not_the_request_that_created_it(svc, a):
    """The runner's task is created inside CreateBatch: its log lines must not carry that
    request's id (a task copies its creator's context variables) but the batch's."""
    f = upload(a, [chat_line(f"rid-{i}") for i in range(3)])
    batch = a.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                             extra_headers={"x-request-id": "req-create-batch-leak-check"})
    assert wait_batch(a, batch.id).status == "completed"
    assert wait_until(lambda: f"batch {batch.id} completed" in svc.log(), 30)
    runner_lines = [ln for ln in svc.log().splitlines() if f"batch {batch.id}" in ln and "[genapi.batches]" in ln]
    assert len(runner_lines) >= 2, runner_lines  # "N lines in progress", "completed"
    for line in runner_lines:
        assert line.endswith(f"request_id={batch.id}") and "req-create-batch-leak-check" not in line, line
