"""S3 object storage through boto3 against a real S3-protocol server on loopback
(moto's ThreadedMotoServer): uploaded files and batch results stored under hashed keys
of `[files] url = "s3://bucket/prefix"`, Scaleway-style `s3://bucket/key` inputs with
results written beside them, and an S3 outage mid-batch (server stopped, restarted)
that loses nothing."""
from __future__ import annotations

import hashlib
import json

import boto3
import openai
import pytest

from ..conftest import Service, free_port, wait_until
from .batch_support import CHAT, chat_line, jsonl, upload, wait_batch

FILES_BUCKET, INPUT_BUCKET = "genapi-files", "genapi-batch-in"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    for bucket in (FILES_BUCKET, INPUT_BUCKET, "not-allowed"):
        client.create_bucket(Bucket=bucket)
    state = {"server": server, "port": port, "client": client, "env": env}
    yield state
    state["server"].stop()


@pytest.fixture(scope="module")
def svc(s3, tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("s3"), "s3", env=s3["env"], extra_toml=(
        f'[files]\nurl = "s3://{FILES_BUCKET}/objects"\ns3_input_buckets = ["{INPUT_BUCKET}"]\n')).start()
    yield s
    s.stop()


def read_lines(s3, bucket: str, key: str) -> list[dict]:
    body = s3["client"].get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(x) for x in body.splitlines()]


def test_files_and_results_live_in_the_bucket_under_hashed_keys(svc, s3):
    client = svc.sdk()
    f = upload(client, [chat_line("s1"), chat_line("s2")])
    key = "objects/" + hashlib.sha256(f.id.encode()).hexdigest()
    assert s3["client"].head_object(Bucket=FILES_BUCKET, Key=key)["ContentLength"] == f.bytes
    done = wait_batch(client, client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert done.status == "completed"
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in out) == ["s1", "s2"]
    client.files.delete(f.id)
    assert "Contents" not in s3["client"].list_objects_v2(Bucket=FILES_BUCKET, Prefix=key)


def test_a_file_whose_object_left_the_bucket_is_a_404_not_a_500(svc, s3):
    client = svc.sdk()
    f = upload(client, [chat_line("gone")])
    s3["client"].delete_object(Bucket=FILES_BUCKET, Key="objects/" + hashlib.sha256(f.id.encode()).hexdigest())
    with pytest.raises(openai.NotFoundError) as e:
        client.files.content(f.id)
    assert e.value.body["code"] == "file_not_found" and f.id in e.value.body["message"]
    assert client.files.retrieve(f.id).id == f.id  # the record is still there, and says so
    client.files.delete(f.id)


def test_s3_input_outside_the_allowed_buckets_or_missing_is_refused(svc, s3):
    client = svc.sdk()
    s3["client"].put_object(Bucket="not-allowed", Key="in.jsonl", Body=jsonl([chat_line("x")]))
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id="s3://not-allowed/in.jsonl", endpoint=CHAT, completion_window="24h")
    assert e.value.body["code"] == "bucket_not_allowed"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id=f"s3://{INPUT_BUCKET}/nothing.jsonl", endpoint=CHAT,
                              completion_window="24h")


def test_s3_input_writes_results_beside_it_through_an_outage(svc, s3):
    client = svc.sdk()
    ids = [f"o{i}" for i in range(60)]
    lines = [chat_line(cid) for cid in ids] + [chat_line("bad", model="no-such-model")]
    s3["client"].put_object(Bucket=INPUT_BUCKET, Key="jobs/in.jsonl", Body=jsonl(lines))
    batch = client.batches.create(input_file_id=f"s3://{INPUT_BUCKET}/jobs/in.jsonl", endpoint=CHAT,
                                  completion_window="24h")
    assert wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1, timeout_s=300)
    s3["server"].stop()  # S3 goes away mid-batch: lines keep running, the results cannot be written
    try:
        stuck = wait_batch(client, batch.id, until={"finalizing", "completed", "failed"}, timeout_s=300)
        assert stuck.status == "finalizing"
        assert wait_until(lambda: f"batch {batch.id}: storage unavailable" in svc.log(), timeout_s=60)
        assert client.batches.retrieve(batch.id).status == "finalizing"
    finally:
        from moto.server import ThreadedMotoServer

        s3["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=s3["port"], verbose=False)
        s3["server"].start()
    done = wait_batch(client, batch.id, timeout_s=120)
    assert done.status == "completed"
    assert done.output_file_id == f"s3://{INPUT_BUCKET}/jobs/in-output.jsonl"
    assert done.error_file_id == f"s3://{INPUT_BUCKET}/jobs/in-error.jsonl"
    out = read_lines(s3, INPUT_BUCKET, "jobs/in-output.jsonl")
    err = read_lines(s3, INPUT_BUCKET, "jobs/in-error.jsonl")
    assert sorted(r["custom_id"] for r in out + err) == sorted(ids + ["bad"])  # every line exactly once
    assert [r["response"]["status_code"] for r in err] == [404]
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))
