"""Scale-out on loopback: two cores sharing one PostgreSQL store (a throw-away cluster,
tests/postgres_cluster.py) and one S3 bucket (moto's server), two shims each balancing
over both cores (round-robin, client-side health checking).

- A Responses conversation is continued through the other shim and the other core.
- Row D3: a 1,000-line batch claimed by both cores; one core is killed (-9) mid-run; the
  batch completes on the other, every custom_id exactly once, and the store's claim
  records show no line ever ran on two holders at once.
- Row F1 at scale: one core is killed (-9) during 50 streams spread over both: the
  streams it served end with one error frame within 5 s, the others finish, and new
  requests through either shim succeed.
"""
from __future__ import annotations

import json
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genapi.v1 import (admin_service_pb2, admin_service_pb2_grpc, content_pb2, generation_service_pb2,
                       generation_service_pb2_grpc, response_service_pb2, response_service_pb2_grpc)

from server.store.line_claims import overlapping_runs

from ..conftest import MODEL, Service, free_port, never_logged, wait_until
from ..postgres_cluster import PASSWORD
from .batch_support import CHAT, assert_exactly_once, chat_line, upload, wait_batch

BUCKET = "genapi-replicas"
LEASE_S = 4  # [batches] lease_s: a dead core's lines are claimed again this long after its last renewal
STREAMS = 50


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def test_a_core_with_an_unreachable_store_stops_at_once_with_the_password_masked(tmp_path):
    secret = never_logged("db-password-never-shown")
    url = f"postgresql://genapi:{secret}@127.0.0.1:{free_port()}/x"  # nothing listens there
    core = Service(tmp_path, "badstore", extra_toml=f'[store]\nurl = "{url}"\n')
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited") as e:
        core.start_core(timeout_s=60)
    assert time.monotonic() - started < 30  # the refused connection, not a pool timeout
    assert "[store] url postgresql://genapi:***@127.0.0.1:" in str(e.value) and "cannot open the store" in str(e.value)
    assert secret not in core.log()


class Replicas:
    def __init__(self, cores: list[Service], shims: list[Service], store_url: str, pause_file):
        self.cores, self.shims, self.store_url, self.pause_file = cores, shims, store_url, pause_file

    def store(self):
        from server.store import PostgresStore

        return PostgresStore(self.store_url)

    def active(self, core: Service) -> int:
        """Chat requests the core holds (running or waiting)."""
        with grpc.insecure_channel(core.grpc_target) as ch:
            stats = admin_service_pb2_grpc.AdminServiceStub(ch).GetEngineStats(
                admin_service_pb2.GetEngineStatsRequest(model=MODEL), timeout=5).engines[0]
        return stats.active_sequences + stats.queued_requests

    def finished(self, core: Service) -> int:
        with grpc.insecure_channel(core.grpc_target) as ch:
            return admin_service_pb2_grpc.AdminServiceStub(ch).GetEngineStats(
                admin_service_pb2.GetEngineStatsRequest(model=MODEL), timeout=5).engines[0].requests_finished

    def balanced(self, core: Service) -> bool:
        """Whether every shim sends requests to `core` again (after its restart): a few
        requests through each, and the core's finished count grew for each shim."""
        for shim in self.shims:
            before = self.finished(core)
            for _ in range(4):
                shim.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=1)
            if self.finished(core) == before:
                return False
        return True

    def restart(self, core: Service) -> None:
        """Starts a killed core again, on its port (the same node name)."""
        if core.proc is None or core.proc.poll() is not None:
            core.start_core()


def _start_all(services, start) -> None:
    errors = []

    def run(s):
        try:
            start(s)
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=run, args=(s,)) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def replicas(pg_cluster, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    never_logged(PASSWORD)
    url = pg_cluster.create_database()
    pause = tmp / "pause-decode"  # while it exists, the cores' engines take no decode step
    toml = (f'[store]\nurl = "{url}"\n[files]\nurl = "s3://{BUCKET}/objects"\n'
            f'[batches]\nlease_s = {LEASE_S}\nconcurrency = 16\n')
    fault = f'[models.options.fault]\npause_decode_file = "{pause}"\n'
    cores = [Service(tmp, f"core{i}", extra_toml=toml, env=s3, model_options=fault, max_batch=STREAMS)
             for i in range(2)]
    shims = [Service(tmp, f"shim{i}", env=s3) for i in range(2)]
    try:
        _start_all(cores, Service.start_core)
        _start_all(shims, lambda s: s.start_shim([c.grpc_target for c in cores]))
        yield Replicas(cores, shims, url, pause)
    finally:
        for s in shims + cores:
            s.stop()


def test_a_conversation_continues_through_the_other_shim_and_core(replicas):
    first = replicas.shims[0].sdk().responses.create(model=MODEL, input="Remember the word teal.",
                                                     max_output_tokens=4, temperature=0)
    previous, tokens = first, [first.usage.input_tokens]
    for turn in range(4):  # alternating shims, each alternating cores: every turn reads the one before
        r = replicas.shims[(turn + 1) % 2].sdk().responses.create(
            model=MODEL, input=f"turn {turn}", previous_response_id=previous.id, max_output_tokens=4, temperature=0)
        assert r.status in ("completed", "incomplete") and r.previous_response_id == previous.id  # (4 tokens)
        previous = r
        tokens.append(r.usage.input_tokens)
    assert tokens == sorted(set(tokens))  # the whole history each time, whichever core stored it
    assert replicas.shims[1].sdk().responses.retrieve(first.id).output_text == first.output_text
    for core in replicas.cores:  # every core reads every stored response
        with grpc.insecure_channel(core.grpc_target) as ch:
            got = response_service_pb2_grpc.ResponseServiceStub(ch).GetResponse(
                response_service_pb2.GetResponseRequest(id=previous.id), timeout=10)
        assert got.response.id == previous.id


def test_d3_batch_shared_by_both_cores_survives_a_kill_9(replicas):
    client = replicas.shims[0].sdk()
    ids = [f"d3-{i:04d}" for i in range(1000)]
    # 8 decoded tokens a line: 1-token lines could all finish on a fast machine between the
    # check that both cores claim and the kill, which must land mid-run.
    f = upload(client, [chat_line(cid, max_tokens=8, ignore_eos=True) for cid in ids])
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    store = replicas.store()
    try:
        def both_claiming() -> bool:
            holders = {r.holder.split("/")[0] for r in store.line_runs(batch.id)}
            return len(holders) == 2 and client.batches.retrieve(batch.id).request_counts.completed >= 100
        assert wait_until(both_claiming, timeout_s=240, interval_s=0.3), client.batches.retrieve(batch.id)
        victim = replicas.cores[0]
        victim.kill()
        killed_at = time.time()
        assert client.batches.retrieve(batch.id).status == "in_progress"  # killed mid-run
        done = wait_batch(replicas.shims[1].sdk(), batch.id, timeout_s=300)
        assert done.status == "completed", done
        assert_exactly_once(client, done, ids)
        runs = store.line_runs(batch.id)
        assert overlapping_runs(runs) == []
        by_line: dict[int, list] = {}
        for r in runs:
            by_line.setdefault(r.line, []).append(r)
        taken_over = [claims for claims in by_line.values() if len(claims) > 1]
        assert taken_over, "no line of the killed core was claimed again"
        for claims in taken_over:  # re-claimed only once the dead core's lease ran out
            assert claims[-1].started_at >= claims[-2].ended_at and claims[-1].finished_at is not None
        survivor_node = {r.holder.split("/")[0] for r in runs if r.started_at > killed_at + 1}
        assert len(survivor_node) == 1  # after the kill, only the survivor claims
    finally:
        store.close()
        replicas.restart(replicas.cores[0])


def _stream(base_url: str, n: int, out: dict) -> None:
    """One raw SSE chat stream; records its HTTP status, whether it ended with a finish
    reason, an error frame, and when it ended."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"stream {n}"}], "max_tokens": 24,
            "temperature": 0, "stream": True}
    rec = out[n] = {"status": None, "finished": False, "error": None, "done": False, "ended_at": None}
    try:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as r:
            rec["status"] = r.status_code
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    rec["done"] = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec["error"] = chunk["error"]
                elif any(c.get("finish_reason") for c in chunk.get("choices", [])):
                    rec["finished"] = True
    except httpx.HTTPError as e:
        rec["error"] = {"transport": repr(e)}
    rec["ended_at"] = time.time()


def test_f1_kill_9_of_a_core_mid_stream_ends_its_streams_and_the_rest_carries_on(replicas):
    replicas.restart(replicas.cores[0])
    victim, survivor = replicas.cores
    assert wait_until(lambda: replicas.balanced(victim), 30, 0.5)  # both shims use both cores
    replicas.pause_file.touch()
    out: dict[int, dict] = {}
    threads = [threading.Thread(target=_stream, args=(replicas.shims[n % 2].base_url, n, out), daemon=True)
               for n in range(STREAMS)]
    try:
        for t in threads:
            t.start()
        # every stream admitted (first token out, decoding paused) on one core or the other
        assert wait_until(lambda: replicas.active(victim) + replicas.active(survivor) == STREAMS, 120, 0.2)
        assert wait_until(lambda: len(out) == STREAMS and all(r["status"] == 200 for r in out.values()), 30)
        on_victim = replicas.active(victim)
        assert 0 < on_victim < STREAMS  # spread over both
        victim.kill()
        killed_at = time.time()
    finally:
        replicas.pause_file.unlink(missing_ok=True)
    for t in threads:
        t.join(120)
    errored = [r for r in out.values() if r["error"] is not None]
    finished = [r for r in out.values() if r["error"] is None]
    assert len(errored) == on_victim and len(finished) == STREAMS - on_victim
    for r in errored:  # one error frame, then [DONE], within 5 s of the kill
        assert r["done"] and "transport" not in r["error"] and r["ended_at"] - killed_at < 5, r
    assert all(r["finished"] and r["done"] for r in finished)
    for shim in replicas.shims:  # new requests go to the survivor
        for _ in range(4):
            got = shim.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=2)
            assert got.choices[0].finish_reason in ("stop", "length")
    replicas.restart(victim)


def test_a_core_not_serving_gets_no_new_requests(replicas):
    """A core whose health is NOT_SERVING (here: restarted, loading its models) is skipped:
    every request sent while it is so succeeds on the other."""
    victim = replicas.cores[0]
    victim.kill()
    restart = threading.Thread(target=replicas.restart, args=(victim,), daemon=True)
    restart.start()
    # Reconnect at once: the restart waits out its dead node name's heartbeat (up to 10 s)
    # before it listens, and gRPC's default backoff would by then retry only every few
    # seconds, long enough to miss the whole (short) load of the tiny model.
    fast = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 100)]
    with grpc.insecure_channel(victim.grpc_target, options=fast) as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def status():
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return None
        assert wait_until(lambda: status() is not None, 120, 0.05)  # listening
        sent, direct = 0, None
        while status() == health_pb2.HealthCheckResponse.NOT_SERVING:
            if direct is None:  # a direct caller that does not wait for SERVING: 503-like, not an internal error
                try:
                    list(generation_service_pb2_grpc.GenerationServiceStub(ch).Generate(
                        generation_service_pb2.GenerateRequest(model=MODEL, messages=[content_pb2.ChatMessage(
                            role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hi")])]), timeout=30))
                    direct = "served"  # loading finished meanwhile
                except grpc.RpcError as e:
                    direct = e.code()
                    assert direct == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
                    assert "still loading" in e.details()
            got = replicas.shims[sent % 2].sdk().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
            assert got.choices[0].finish_reason in ("stop", "length")
            sent += 1
        assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, 120)
    restart.join(120)
    assert sent > 0, "the core was never seen NOT_SERVING while loading"
