"""Store outages and start-up checks (issue 15): one core and shim (`genapi serve`) on a
throw-away PostgreSQL cluster of this module's own (tests/postgres_cluster.py) and a moto
S3 server.

- PostgreSQL stopped (pg_ctl stop -m immediate) mid-batch: files, responses and batches
  calls answer 503 `store_unavailable` in the OpenAI error shape with Retry-After within a
  few seconds, /health still answers, no traceback is logged; once it is back the first
  call succeeds, and the batch completes with every custom_id once and no line ever run
  twice at once.
- S3 stopped: uploads and downloads answer 503, then succeed once it is back.
- A core refuses to start, with one line naming the setting, when its bucket is missing,
  its S3 endpoint unreachable, or its [store] node name held by another live core.
"""
from __future__ import annotations

import time

import grpc
import httpx
import openai
import pytest

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc
from server.store import PostgresStore
from server.store.line_claims import overlapping_runs

from ..conftest import MODEL, Service, free_port, throwaway_cluster, wait_until
from .batch_support import CHAT, assert_exactly_once, chat_line, upload, wait_batch

BUCKET = "genapi-outage"
NODE = "outage-core"
FAST_S = 15  # "within a few seconds" ([store] timeout_s = 3), with room for a loaded machine


class S3:
    """moto's server on a fixed port, stoppable and startable again (its data lives in
    this process, so it survives)."""

    def __init__(self):
        self.port = free_port()
        self.server = None
        self.env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> "S3":
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this module's own: its tests stop and start it."""
    with throwaway_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def s3():
    import boto3

    server = S3().start()
    boto3.client("s3", endpoint_url=server.env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def setup(cluster, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outage")
    url = cluster.create_database()
    pause = tmp / "pause-decode"
    toml = (f'[store]\nurl = "{url}"\nnode = "{NODE}"\ntimeout_s = 3\n[files]\nurl = "s3://{BUCKET}/objects"\n'
            '[batches]\nlease_s = 4\nconcurrency = 4\n')
    svc = Service(tmp, "outage", extra_toml=toml, env=s3.env,
                  model_options=f'[models.options.fault]\npause_decode_file = "{pause}"\n').start()
    yield {"svc": svc, "url": url, "toml": toml, "pause": pause, "tmp": tmp}
    svc.stop()


def _unavailable(call) -> float:
    """Runs `call`, which must fail with 503 store_unavailable in the OpenAI error shape
    with Retry-After; returns how long it took."""
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        call()
    took = time.monotonic() - started
    assert e.value.status_code == 503, (e.value.status_code, e.value.response.text)
    assert e.value.response.json() == {"error": {"message": "The state store is unavailable; retry shortly.",
                                                 "type": "server_error", "param": None, "code": "store_unavailable"}}
    assert e.value.response.headers["retry-after"] == "5"
    return took


def _running_lines(svc: Service) -> int:
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stats = admin_service_pb2_grpc.AdminServiceStub(ch).GetEngineStats(
            admin_service_pb2.GetEngineStatsRequest(model=MODEL), timeout=5).engines[0]
    return stats.active_sequences


def test_postgresql_down_is_503_at_once_and_the_first_call_after_it_succeeds(setup, cluster):
    svc, client = setup["svc"], setup["svc"].sdk(timeout=60)
    f = upload(client, [chat_line(f"pg-{i}", max_tokens=3) for i in range(6)])
    response = client.responses.create(model=MODEL, input="hello", max_output_tokens=2)
    setup["pause"].touch()  # the batch's lines stop decoding: they are running when the store goes
    try:
        batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
        assert wait_until(lambda: _running_lines(svc) >= 1, 120, 0.2)
        cluster.crash()
        calls = {"files.list": lambda: client.files.list(),
                 "files.retrieve": lambda: client.files.retrieve(f.id),
                 "responses.retrieve": lambda: client.responses.retrieve(response.id),
                 "batches.list": lambda: client.batches.list(),
                 "batches.retrieve": lambda: client.batches.retrieve(batch.id),
                 "batches.create": lambda: client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                                                 completion_window="24h")}
        took = {name: _unavailable(call) for name, call in calls.items()}
        assert max(took.values()) < FAST_S, took
        assert httpx.get(f"{svc.base_url}/health", timeout=10).status_code == 200
        # The runner cannot renew its lines' leases: it stops them before they run out.
        assert wait_until(lambda: "its lease cannot be renewed (store unavailable or slow)" in svc.log(), 60, 0.2)
    finally:
        setup["pause"].unlink(missing_ok=True)
    cluster.resume()
    assert client.files.retrieve(f.id).id == f.id  # the first call once it is back
    done = wait_batch(client, batch.id, timeout_s=300)
    assert done.status == "completed", done
    assert_exactly_once(client, done, [f"pg-{i}" for i in range(6)])
    store = PostgresStore(setup["url"])
    try:
        runs = store.line_runs(batch.id)
    finally:
        store.close()
    assert overlapping_runs(runs) == []
    assert len(runs) > 6  # the lines stopped during the outage ran again
    assert client.responses.retrieve(response.id).id == response.id
    assert "Traceback" not in svc.log()


def test_s3_down_is_503_and_works_again_once_it_is_back(setup, s3):
    svc, client = setup["svc"], setup["svc"].sdk(timeout=60)
    f = client.files.create(file=("notes.txt", b"kept through the outage"), purpose="user_data")
    s3.stop()
    try:
        took = [_unavailable(lambda: client.files.content(f.id)),
                _unavailable(lambda: client.files.create(file=("more.txt", b"x"), purpose="user_data"))]
        assert max(took) < FAST_S, took
        assert client.files.retrieve(f.id).id == f.id  # metadata is in PostgreSQL: still served
        assert httpx.get(f"{svc.base_url}/health", timeout=10).status_code == 200
    finally:
        s3.start()
    assert client.files.content(f.id).read() == b"kept through the outage"
    assert client.files.create(file=("more.txt", b"x"), purpose="user_data").bytes == 1
    assert "Traceback" not in svc.log()


def _refused(tmp, name: str, toml: str, env: dict) -> str:
    """Starts a core that must refuse to start; its log (one line about it, no traceback)."""
    core = Service(tmp, name, extra_toml=toml, env=env)
    with pytest.raises(RuntimeError, match="exited"):
        core.start_core(timeout_s=120)
    log = core.log()
    assert core.proc.returncode == 2 and "Traceback" not in log, log
    return log


def test_a_core_refuses_to_start_without_its_bucket_or_s3_endpoint_or_with_a_live_nodes_name(setup, s3):
    tmp, url = setup["tmp"], setup["url"]
    store = f'[store]\nurl = "{url}"\n'
    log = _refused(tmp, "nobucket", store + '[files]\nurl = "s3://no-such-bucket/x"\n', s3.env)
    assert "[files] url s3://no-such-bucket/x: cannot use the object storage: the bucket 'no-such-bucket' " \
           "does not exist" in log
    unreachable = dict(s3.env, AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{free_port()}")  # nothing listens
    log = _refused(tmp, "nos3", store + f'[files]\nurl = "s3://{BUCKET}/x"\n', unreachable)
    assert f"[files] url s3://{BUCKET}/x: cannot use the object storage: the bucket '{BUCKET}' cannot be reached" \
           in log
    # the module's core is live under NODE (its heartbeat moves): a second one is refused
    log = _refused(tmp, "dup", setup["toml"], s3.env)
    assert f"[store] node '{NODE}' is in use by another live core ({NODE}/" in log
    assert "give every core its own node name" in log
    assert setup["svc"].sdk().files.list().data is not None  # the first core is unaffected
