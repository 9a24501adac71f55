"""The SQLite state store, the object directory and the batch file format, without
servers: migrations, owner isolation, pagination, compare-and-set transitions, claims,
insert-once results, hashed atomic object names, input validation (D4), byte-identical
result files on a second finalize (D7)."""
from __future__ import annotations

import json
import sqlite3

import pytest

from genapi import batch_lines
from server.batches.runner import BatchRunner, result_file_id
from server.store import BatchRecord, FileRecord, LineResult, LocalObjects, SqliteStore
from server.store.sqlite import MIGRATIONS

CHAT = "/v1/chat/completions"


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "state.db")
    yield s
    s.close()


def batch(owner="a", **kw) -> BatchRecord:
    import uuid

    return BatchRecord(id=kw.pop("id", f"batch_{uuid.uuid4().hex}"), owner=owner, endpoint=CHAT,
                       input_file_id="file-" + "1" * 32, completion_window="24h", created_at=1, expires_at=100, **kw)


def test_schema_is_versioned_and_migrating_twice_changes_nothing(tmp_path, store):
    assert store.migrate() == len(MIGRATIONS)
    again = SqliteStore(tmp_path / "state.db")
    assert again.migrate() == len(MIGRATIONS)
    again.close()
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("SELECT COUNT(*), MAX(version) FROM schema_version").fetchone() == (len(MIGRATIONS),
                                                                                       len(MIGRATIONS))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_files_belong_to_their_owner_and_page_by_cursor(store):
    for i in range(5):
        store.put_file(FileRecord(f"file-{i:032x}", "a" if i != 2 else "b", f"f{i}", "batch", i, i))
    assert store.get_file("b", f"file-{0:032x}") is None and store.get_file("a", f"file-{0:032x}").filename == "f0"
    assert store.get_file(None, f"file-{2:032x}").owner == "b"
    newest = store.list_files("a", None, None, 2, ascending=False)
    assert [f.filename for f in newest] == ["f4", "f3"]
    assert [f.filename for f in store.list_files("a", None, newest[-1].id, 10, False)] == ["f1", "f0"]
    assert [f.filename for f in store.list_files("a", "batch", None, 10, True)] == ["f0", "f1", "f3", "f4"]
    assert store.list_files("a", None, f"file-{2:032x}", 10, False) == []  # b's id is no cursor for a
    assert not store.delete_file("b", f"file-{0:032x}") and store.delete_file("a", f"file-{0:032x}")
    assert store.get_file("a", f"file-{0:032x}") is None and not store.delete_file("a", f"file-{0:032x}")
    store.put_file(FileRecord(f"file-{1:032x}", "a", "changed", "batch", 9, 9))  # existing id: kept as it was
    assert store.get_file("a", f"file-{1:032x}").filename == "f1"


def test_transition_is_compare_and_set(store):
    b = batch()
    store.put_batch(b)
    assert store.transition(b.id, ("validating",), status="in_progress", total=3, in_progress_at=5)
    assert not store.transition(b.id, ("validating",), status="failed")
    got = store.get_batch("a", b.id)
    assert (got.status, got.total, got.in_progress_at) == ("in_progress", 3, 5)
    assert store.get_batch("b", b.id) is None
    with pytest.raises(ValueError):
        store.transition(b.id, ("in_progress",), no_such_field=1)


def test_results_are_recorded_and_counted_once(store):
    b = batch(status="in_progress")
    store.put_batch(b)
    assert store.put_result(b.id, LineResult("x", 2, True, '{"n":1}', 5, 2))
    assert not store.put_result(b.id, LineResult("x", 2, False, '{"n":2}', 5, 2))  # a re-run line: ignored
    assert store.put_result(b.id, LineResult("y", 1, False, '{"n":3}'))
    got = store.get_batch(None, b.id)
    assert (got.completed, got.failed, got.input_tokens, got.output_tokens) == (1, 1, 5, 2)
    assert store.done_custom_ids(b.id) == {"x", "y"}
    assert [r.data for r in store.results(b.id, True)] == ['{"n":1}']


def test_claims_take_unleased_and_own_batches_only(store):
    mine, theirs, done = batch(), batch(), batch(status="completed")
    for b in (mine, theirs, done):
        store.put_batch(b)
    assert set(store.claim_batches("node-1", 60, now=1000)) == {mine.id, theirs.id}
    assert store.claim_batches("node-2", 60, now=1010) == []  # leased to node-1
    assert set(store.claim_batches("node-1", 60, now=1020)) == {mine.id, theirs.id}  # a restarted node-1
    assert set(store.claim_batches("node-2", 60, now=2000)) == {mine.id, theirs.id}  # leases ran out


def test_object_names_are_hashes_and_writes_atomic(tmp_path):
    objects = LocalObjects(tmp_path / "files")
    for key in ("../../etc/passwd", "/etc/passwd", "file-abc"):
        p = objects.path(key)
        assert p.parent == objects.root and len(p.name) == 64
    objects.put("file-abc", [b"one", b"two"])
    assert objects.read("file-abc") == b"onetwo"
    with pytest.raises(RuntimeError):
        objects.put("file-abc", (b"x" if i == 0 else (_ for _ in ()).throw(RuntimeError("disk")) for i in range(2)))
    assert objects.read("file-abc") == b"onetwo"  # the failed write left the old content whole
    assert not list(objects.root.glob(".tmp-*"))


def test_finalize_twice_writes_identical_files(tmp_path, store):
    objects = LocalObjects(tmp_path / "files")
    b = batch(status="finalizing")
    store.put_batch(b)
    store.put_result(b.id, LineResult("b", 2, True, '{"custom_id":"b"}'))
    store.put_result(b.id, LineResult("a", 1, True, '{"custom_id":"a"}'))
    store.put_result(b.id, LineResult("c", 3, False, '{"custom_id":"c"}'))
    runner = BatchRunner(store, objects, {}, registry=None, concurrency=1)
    first = runner._write_files(b)
    data = [objects.read(i) for i in first]
    assert runner._write_files(b) == first == (result_file_id(b.id, "output"), result_file_id(b.id, "error"))
    assert [objects.read(i) for i in first] == data
    assert data[0] == b'{"custom_id":"a"}\n{"custom_id":"b"}\n'  # input-line order


def line(cid, **kw) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": {"model": "m"}, **kw})


@pytest.mark.parametrize("text, code, line_no", [
    ("not json", "invalid_json_line", 1),
    ("[1, 2]", "invalid_json_line", 1),
    (line("a") + "\n" + json.dumps({"url": CHAT, "body": {}}), "missing_custom_id", 2),
    (line("a") + "\n" + line(""), "missing_custom_id", 2),
    (line("a") + "\n\n" + line("a"), "duplicate_custom_id", 3),
    (line("a", url="/v1/embeddings"), "mismatched_url", 1),
    (line("a", method="GET"), "invalid_method", 1),
    (json.dumps({"custom_id": "a", "url": CHAT, "body": "x"}), "invalid_body", 1),
    ("\n\n", "empty_file", None),
])
def test_input_validation_names_the_line(text, code, line_no):
    lines, errors = batch_lines.parse_input(text.encode(), CHAT)
    assert errors and (errors[0]["code"], errors[0]["line"]) == (code, line_no)


def test_input_limits():
    many = "\n".join(line(str(i)) for i in range(batch_lines.MAX_LINES + 1)).encode()
    lines, errors = batch_lines.parse_input(many, CHAT)
    assert errors[-1]["code"] == "too_many_requests" and errors[-1]["line"] == batch_lines.MAX_LINES + 1
    ok, none = batch_lines.parse_input(many.rsplit(b"\n", 1)[0], CHAT)
    assert len(ok) == batch_lines.MAX_LINES and none == []
    big = b" " * (batch_lines.MAX_INPUT_BYTES + 1)
    assert batch_lines.parse_input(big, CHAT)[1][0]["code"] == "file_too_large"


def test_result_lines_have_the_openai_shape():
    done = json.loads(batch_lines.response_line("a", "req_1", 200, {"object": "chat.completion"}))
    assert set(done) == {"id", "custom_id", "response", "error"} and done["error"] is None
    assert done["response"] == {"status_code": 200, "request_id": "req_1", "body": {"object": "chat.completion"}}
    expired = json.loads(batch_lines.unrun_line("a", "batch_expired", batch_lines.EXPIRED_MESSAGE))
    assert expired["response"] is None and expired["error"]["code"] == "batch_expired"
