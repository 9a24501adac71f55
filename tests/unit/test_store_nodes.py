"""Live node names in the store (server/store/nodes.py), on SQLite and PostgreSQL: a name
is one live core's; a dead core's name is taken over once its heartbeat is older than the
TTL; a starting core that sees the heartbeat move refuses to start. And the outage
predicate (server/store/outage.py) that maps store failures to 503."""
from __future__ import annotations

import time

import psycopg
import psycopg_pool
import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

from server.store.nodes import Heartbeat, NodeNameInUse, take_node_name
from server.store.outage import is_outage

from .test_store import open_store, store  # noqa: F401 (fixtures: both backends)


def test_a_node_name_is_one_holders_until_its_heartbeat_is_older_than_the_ttl(store):
    assert store.claim_node("n1", "n1/a", now=100.0, ttl_s=10)
    assert store.claim_node("n1", "n1/a", now=105.0, ttl_s=10)  # its own heartbeat
    assert not store.claim_node("n1", "n1/b", now=114.0, ttl_s=10)  # a live core has it
    assert store.node_holder("n1") == ("n1/a", 105.0)
    assert store.claim_node("n1", "n1/b", now=115.5, ttl_s=10)  # a's heartbeat is 10.5 s old: dead
    assert store.node_holder("n1") == ("n1/b", 115.5)
    assert not store.claim_node("n1", "n1/a", now=116.0, ttl_s=10)
    assert store.claim_node("n2", "n2/a", now=116.0, ttl_s=10)  # other names are independent
    store.release_node("n1", "n1/a")  # not a's any more: nothing changes
    assert store.node_holder("n1")[0] == "n1/b"
    store.release_node("n1", "n1/b")
    assert store.node_holder("n1") is None
    assert store.claim_node("n1", "n1/c", now=117.0, ttl_s=10)


def test_a_second_core_with_a_live_name_is_refused_and_a_dead_ones_name_is_taken_over(open_store):
    first, second = open_store(), open_store()
    take_node_name(first, "gpu-0", "gpu-0/first", ttl_s=3)
    beat = Heartbeat(first, "gpu-0", "gpu-0/first", interval_s=0.2, ttl_s=3)
    beat.start()
    try:
        started = time.monotonic()
        with pytest.raises(NodeNameInUse, match=r"\[store\] node 'gpu-0' is in use by another live core "
                                                r"\(gpu-0/first, heartbeat \d+s ago\)"):
            take_node_name(second, "gpu-0", "gpu-0/second", ttl_s=3, poll_s=0.1)
        assert time.monotonic() - started < 3  # refused as soon as the heartbeat moved, before the TTL
    finally:
        beat._stop.set()  # the first core dies: no heartbeat, its row stays (no release)
        beat._thread.join()
    assert first.node_holder("gpu-0")[0] == "gpu-0/first"
    take_node_name(second, "gpu-0", "gpu-0/second", ttl_s=1, poll_s=0.1)  # stale after the TTL: taken over
    assert second.node_holder("gpu-0")[0] == "gpu-0/second"
    Heartbeat(second, "gpu-0", "gpu-0/second").stop()  # a clean stop frees the name
    assert second.node_holder("gpu-0") is None


def _raised_from(cause: BaseException, suppress: bool = False) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException:
            if suppress:
                raise RuntimeError("wrapped") from None
            raise RuntimeError("wrapped")
    except RuntimeError as e:
        return e


@pytest.mark.parametrize("error, outage", [
    (psycopg.OperationalError("connection refused"), True),
    (psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"), True),
    (psycopg.errors.UniqueViolation("duplicate key"), False),  # a bug, not an outage
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    (ConnectTimeoutError(endpoint_url="http://10.0.0.1"), True),
    (ClientError({"Error": {"Code": "ServiceUnavailable"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                 "PutObject"), True),
    (ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject"),
     False),
    (ValueError("bad"), False),
    (_raised_from(psycopg.OperationalError("reset")), True),  # raised while handling one
    (_raised_from(psycopg.OperationalError("reset"), suppress=True), False),  # `from None`: its own status
])
def test_outages_are_connection_failures_and_server_errors_only(error, outage):
    assert is_outage(error) is outage
