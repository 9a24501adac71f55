"""The state store on SQLite and on PostgreSQL (every store test runs on both: a
throw-away cluster, tests/postgres_cluster.py), the object directory and the batch file
format, without servers: migrations, owner isolation, pagination, compare-and-set
transitions, batch and line claims with leases (two stores on one database stand for two
replicas), insert-once results, responses and conversations, hashed atomic object names,
input validation (D4), byte-identical result files on a second finalize (D7)."""
from __future__ import annotations

import json
import threading

import pytest

from genapi import batch_lines
from server.batches.runner import BatchRunner, result_file_id
from server.store import (BatchRecord, ConversationItem, ConversationRecord, FileRecord, LineResult, LocalObjects,
                          PostgresStore, ResponseRecord, SqliteStore)
from server.store.line_claims import LineRun, overlapping_runs
from server.store.sqlite import MIGRATIONS

CHAT = "/v1/chat/completions"


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path):
    """Opens stores on one fresh database (two of them stand for two replicas)."""
    if request.param == "sqlite":
        make = lambda: SqliteStore(tmp_path / "state.db")  # noqa: E731
    else:
        url = request.getfixturevalue("pg_cluster").create_database()
        make = lambda: PostgresStore(url)  # noqa: E731
    opened = []

    def factory():
        opened.append(make())
        return opened[-1]
    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store):
    return open_store()


def batch(owner="a", **kw) -> BatchRecord:
    import uuid

    return BatchRecord(id=kw.pop("id", f"batch_{uuid.uuid4().hex}"), owner=owner, endpoint=CHAT,
                       input_file_id="file-" + "1" * 32, completion_window="24h", created_at=1, expires_at=100, **kw)


def test_schema_is_versioned_and_migrating_twice_changes_nothing(open_store):
    store = open_store()
    assert store.migrate() == len(MIGRATIONS)
    again = open_store()
    assert again.migrate() == len(MIGRATIONS)
    assert tuple(store._query("SELECT COUNT(*), MAX(version) FROM schema_version")[0]) == (len(MIGRATIONS),
                                                                                         len(MIGRATIONS))
    if isinstance(store, SqliteStore):
        assert store._query("PRAGMA journal_mode")[0][0] == "wal"


def test_postgres_replicas_starting_together_migrate_once(pg_cluster):
    url = pg_cluster.create_database()  # (one SQLite file is one node's; BEGIN IMMEDIATE serializes it)
    stores, errors = [], []

    def start():
        try:
            stores.append(PostgresStore(url))
        except Exception as e:  # the failure the test looks for
            errors.append(e)
    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert tuple(stores[0]._query("SELECT COUNT(*), MAX(version) FROM schema_version")[0]) == (len(MIGRATIONS),
                                                                                             len(MIGRATIONS))
    for s in stores:
        s.close()


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


def test_in_progress_batches_are_every_nodes_and_finalizing_one_nodes(store):
    running, validating = batch(status="in_progress"), batch()
    store.put_batch(running)
    store.put_batch(validating)
    assert store.claim_batches("node-1", 60, now=1000) == [running.id, validating.id]  # oldest first
    assert store.claim_batches("node-2", 60, now=1001) == [running.id]  # shared; validating is node-1's
    assert store.transition(running.id, ("in_progress",), status="finalizing")
    assert store.lease_batch(running.id, "node-2", 60, now=1002)  # in progress it had no lease
    assert not store.lease_batch(running.id, "node-1", 60, now=1003)  # node-2 finalizes it
    assert store.claim_batches("node-1", 60, now=1004) == [validating.id]
    assert store.lease_batch(running.id, "node-1", 60, now=1100)  # node-2's lease ran out
    assert store.transition(validating.id, ("validating",), status="in_progress", lease_holder=None, lease_until=None)
    assert store.lease_batch(validating.id, "node-2", 60, now=1101)  # the cleared lease is anyone's


def in_progress_with_lines(store, n: int) -> BatchRecord:
    b = batch(status="in_progress", total=n)
    store.put_batch(b)
    store.add_batch_lines(b.id, [(i, f"c{i}", False) for i in range(1, n + 1)])
    store.add_batch_lines(b.id, [(i, f"c{i}", False) for i in range(1, n + 1)])  # every replica may: kept once
    return b


def test_line_leases_expire_renew_release_and_end_with_the_result(store):
    b = in_progress_with_lines(store, 4)
    assert store.claim_lines(b.id, "n1", "n1/a", 2, 10, now=100) == [1, 2]
    assert store.claim_lines(b.id, "n2", "n2/a", 5, 10, now=101) == [3, 4]
    assert store.claim_lines(b.id, "n2", "n2/a", 5, 10, now=102) == []  # all leased
    assert store.renew_lines("n1/a", 10, now=105, running=[(b.id, 1), (b.id, 2)]) == []  # both until 115
    assert store.renew_lines("n2/a", 10, now=105, running=[]) == []  # runs none: its leases still end at 111
    assert store.put_result(b.id, LineResult("c1", 1, True, "{}", holder="n1/a"))
    assert store.claim_lines(b.id, "n3", "n3/a", 5, 10, now=112) == [3, 4]  # n2's leases ran out at 111
    assert store.claim_lines(b.id, "n3", "n3/a", 5, 10, now=116) == [2]  # n1's at 115; 1 has its result
    store.release_lines(b.id, "n3/a", now=117)
    assert store.claim_lines(b.id, "n1", "n1/b", 1, 10, now=118) == [2]  # released: anyone's at once
    assert store.claim_lines(b.id, "n1", "n1/c", 5, 10, now=119) == [2, 3, 4]  # n1 restarted: takes its line back
    assert store.renew_lines("n1/b", 10, now=120, running=[(b.id, 2)]) == [(b.id, 2)]  # taken: it must stop
    assert store.put_result(b.id, LineResult("c2", 2, True, "{}", holder="n1/c"))
    assert store.renew_lines("n1/b", 10, now=121, running=[(b.id, 2)]) == [(b.id, 2)]  # and finished: still lost
    runs = {(r.line, r.holder): r for r in store.line_runs(b.id)}
    assert runs[(1, "n1/a")].finished_at is not None and runs[(1, "n1/a")].lease_until == 115
    assert runs[(2, "n1/a")].ended_at == 115 and runs[(3, "n2/a")].ended_at == 111  # died: their leases bound them
    assert runs[(2, "n3/a")].finished_at == 117 and runs[(2, "n1/b")].ended_at == 119
    assert overlapping_runs(store.line_runs(b.id)) == []
    late = LineRun(2, "x/y", started_at=116.5, lease_until=130, finished_at=117.5)  # began before n3/a ended
    assert overlapping_runs([*store.line_runs(b.id), late]) == [(runs[(2, "n3/a")], late)]
    assert store.transition(b.id, ("in_progress",), status="cancelling")
    assert store.claim_lines(b.id, "n1", "n1/d", 5, 10, now=200) == []  # only in-progress batches' lines


def test_a_claim_takes_at_most_its_limit_on_an_analyzed_table(store):
    """PostgreSQL may run `IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` once per outer
    row once the planner has statistics: a claim of one line then took every open line."""
    done = [in_progress_with_lines(store, 1500).id for _ in range(3)]  # a store that has run a few batches
    b = in_progress_with_lines(store, 1500)
    if isinstance(store, PostgresStore):
        with store._tx() as db:
            for other in done:
                db.execute("UPDATE batch_lines SET done = 1, holder = 'x', node = 'x', lease_until = 1 "
                           "WHERE batch_id = ?", (other,))
            db.execute("ANALYZE batch_lines")
    assert store.claim_lines(b.id, "n1", "n1/a", 1, 30, now=100) == [1]
    assert store.claim_lines(b.id, "n2", "n2/a", 3, 30, now=100) == [2, 3, 4]
    assert len(store.line_runs(b.id)) == 4


def test_two_replicas_claiming_at_once_never_share_a_line(open_store):
    replicas = [open_store(), open_store()]
    b = in_progress_with_lines(replicas[0], 200)
    got: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claim(store, holder):
        start.wait()
        while lines := store.claim_lines(b.id, holder, holder, 3, 60, now=1000):
            got[holder] += lines
    threads = [threading.Thread(target=claim, args=(s, h)) for s, h in zip(replicas, got)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["a"] + got["b"]) == list(range(1, 201))  # each line exactly once, whoever won which
    assert len(replicas[1].line_runs(b.id)) == 200


def test_responses_and_conversations_belong_to_their_owner(store):
    store.put_response(ResponseRecord(id="resp_1", owner="a", created_at=1, status="queued", data="{}",
                                      background=True))
    assert store.get_response("a", "resp_1").background and store.get_response("b", "resp_1") is None
    assert store.claimable_responses("node1", now=10) == ["resp_1"]
    assert store.claim_response("resp_1", "node1", 30, now=10)
    assert store.claimable_responses("node2", now=20) == [] and not store.claim_response("resp_1", "node2", 30, 20)
    assert store.claim_response("resp_1", "node2", 30, now=41)  # node1's lease expired
    store.put_response(ResponseRecord(id="resp_1", owner="a", created_at=1, status="in_progress", data='{"x":1}',
                                      background=True))  # replaced
    assert store.get_response(None, "resp_1").data == '{"x":1}'
    assert store.set_response_status("resp_1", ("in_progress",), "completed", data='{"x":2}')
    assert not store.set_response_status("resp_1", ("queued", "in_progress"), "in_progress")
    assert not store.delete_response("b", "resp_1") and store.delete_response("a", "resp_1")
    assert store.get_response("a", "resp_1") is None
    store.put_conversation(ConversationRecord("conv_1", "a", 1, {"k": "v"}))
    store.add_conversation_items("conv_1", [ConversationItem("conv_1", f"msg_{i}", "{}") for i in range(3)])
    assert store.get_conversation("b", "conv_1") is None
    assert store.get_conversation("a", "conv_1").metadata == {"k": "v"}
    assert store.update_conversation("a", "conv_1", {"k": "w"}) and not store.update_conversation("b", "conv_1", {})
    assert store.delete_conversation_item("conv_1", "msg_1")
    assert [i.item_id for i in store.conversation_items("conv_1")] == ["msg_0", "msg_2"]
    assert store.delete_conversation("a", "conv_1") and store.get_conversation("a", "conv_1") is None


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


def test_two_runners_finalize_a_batch_once(open_store, tmp_path):
    import asyncio

    replicas = [open_store(), open_store()]
    b = batch(status="finalizing")
    replicas[0].put_batch(b)
    replicas[0].put_result(b.id, LineResult("a", 1, True, '{"custom_id":"a"}'))
    replicas[0].put_result(b.id, LineResult("b", 2, False, '{"custom_id":"b"}'))
    objects = LocalObjects(tmp_path / "files")
    writes = []
    put = objects.put
    objects.put = lambda key, chunks: (writes.append(key), put(key, chunks))[1]
    runners = [BatchRunner(s, objects, {}, registry=None, concurrency=1, holder=f"node-{i}")
               for i, s in enumerate(replicas)]

    async def both():
        await asyncio.gather(*(r._run(b.id) for r in runners))
    asyncio.run(both())
    done = replicas[1].get_batch(None, b.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    assert sorted(writes) == sorted([done.output_file_id, done.error_file_id])  # one replica wrote them, once


def test_postgres_store_survives_a_server_restart(pg_cluster):
    store = PostgresStore(pg_cluster.create_database())
    try:
        store.put_file(FileRecord("file-" + "7" * 32, "a", "kept", "batch", 1, 1))
        pg_cluster.restart()  # the pooled connection is now broken
        assert store.get_file("a", "file-" + "7" * 32).filename == "kept"  # replaced, not failed
    finally:
        store.close()


def test_a_cancelled_batch_is_finished_after_the_lines_other_replicas_still_run(open_store, tmp_path):
    import asyncio
    import time

    here, there = open_store(), open_store()
    b = in_progress_with_lines(here, 2)
    assert here.put_result(b.id, LineResult("c1", 1, True, '{"custom_id":"c1"}'))
    assert there.claim_lines(b.id, "n2", "n2/a", 1, 60, now=time.time()) == [2]  # runs on the other replica
    assert here.transition(b.id, ("in_progress",), status="cancelling")
    assert here.lines_held(b.id, time.time()) == 1
    runner = BatchRunner(here, LocalObjects(tmp_path / "files"), {}, registry=None, concurrency=1, holder="n1")

    async def scenario():
        task = asyncio.create_task(runner._run(b.id))
        while here.get_batch(None, b.id) and here._query("SELECT lease_holder FROM batches WHERE id = ?",
                                                         (b.id,))[0][0] != "n1":
            await asyncio.sleep(0.01)  # until this runner took the batch to finish it
        assert here.get_batch(None, b.id).status == "cancelling"  # waiting for n2's line
        assert there.put_result(b.id, LineResult("c2", 2, False, '{"custom_id":"c2"}', holder="n2/a"))
        await asyncio.wait_for(task, 30)
    asyncio.run(scenario())
    done = here.get_batch(None, b.id)
    assert done.status == "cancelled" and (done.completed, done.failed) == (1, 1)
    assert b'"c2"' in LocalObjects(tmp_path / "files").read(done.error_file_id)  # the late result is in the files


def test_a_store_error_while_claiming_gives_the_runners_slot_back(tmp_path):
    """A failed claim (the store down for a moment) must not keep the concurrency slot it
    was taken for: after `concurrency` such errors the core would never run a line again."""
    import asyncio
    import dataclasses
    import types

    store = SqliteStore(tmp_path / "state.db")
    objects = LocalObjects(tmp_path / "files")
    b = dataclasses.replace(batch(status="in_progress"), expires_at=2**40)
    objects.put(b.input_file_id, [line("a").encode()])
    store.put_batch(b)
    runner = BatchRunner(store, objects, {}, registry=types.SimpleNamespace(models={}), concurrency=2)

    def down(*args, **kwargs):
        raise OSError("store down")
    store.claim_lines = down
    for _ in range(2):
        with pytest.raises(OSError):
            asyncio.run(runner._execute(b))
    assert runner.slots._value == 2  # (without the fix a third claim would wait forever)
