"""server/limits.py without a server: OpenAI's header formats, per-key rpm/tpm on the
memory storage, up-front token charges and their refunds, the non-retryable refusal."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from genapi.config import ApiKey, hash_key
from genapi.keys import KeyChecker
from server.errors import GenapiError
from genapi.durations import go_duration, parse_go_duration
from server.limits import Budget, RateLimiter, RateState


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.02, "20ms"), (0.9994, "999ms"), (1, "1s"), (6.5, "6.5s"), (59.9996, "1m0s"),
    (60, "1m0s"), (150, "2m30s"), (360, "6m0s"), (-3, "0s"),
])
def test_go_duration_is_openais_reset_format(seconds, text):
    assert go_duration(seconds) == text


@pytest.mark.parametrize("text, seconds", [
    ("0s", 0.0), ("0ms", 0.0), ("20ms", 0.02), ("1s", 1.0), ("6.5s", 6.5), ("1m0s", 60.0), ("2m30s", 150.0), ("1h2m3s", 3723.0),
])
def test_parse_go_duration_reads_what_go_duration_writes(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)
    assert parse_go_duration(go_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "-1s", "1d", "1s junk", "s", "1.s"])
def test_parse_go_duration_refuses_anything_else(text):
    assert parse_go_duration(text) is None


def test_state_metadata_names_and_values():
    md = dict(RateState(Budget(60, 59, 1.0), Budget(1000, -5, 0.02)).metadata())
    assert md == {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                  "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "1000",
                  "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}
    assert RateState(None, None).metadata() == ()  # unlimited: no headers


def limiter(**keys) -> RateLimiter:
    checker = KeyChecker([ApiKey(name, hash_key(name), rpm=rpm, tpm=tpm) for name, (rpm, tpm) in keys.items()])
    return RateLimiter("memory://", checker, default_rpm=5, default_tpm=0)


def run(coro):
    return asyncio.run(coro)


def test_rpm_counts_requests_per_key_and_refuses_with_retry_after():
    lim = limiter(a=(2, None), b=(None, None))

    async def go():
        t1 = await lim.admit("a")
        t2 = await lim.admit("a")
        assert (t1.state.requests.remaining, t2.state.requests.remaining) == (1, 0)
        with pytest.raises(GenapiError) as e:
            await lim.admit("a")
        err = e.value
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "rate_limit_exceeded"
        assert err.retry_after_s >= 1 and err.should_retry is None
        assert dict(err.metadata)["x-ratelimit-remaining-requests"] == "0"
        assert "model `m`" in str((await _refusal(lim.admit("a", "m"))))  # still refused: nothing was added
        # "b" has the default limit (5) and its own counter
        tb = await lim.admit("b")
        assert tb.state.requests == Budget(5, 4, tb.state.requests.reset_s)
    run(go())


async def _refusal(coro) -> GenapiError:
    with pytest.raises(GenapiError) as e:
        await coro
    return e.value


def test_tokens_charged_up_front_and_refunded_to_use():
    lim = limiter(t=(0, 100))

    async def go():
        t1 = await lim.admit("t")
        assert t1.state.requests is None  # rpm 0 = unlimited: no request headers
        await t1.charge(60)
        assert t1.state.tokens.remaining == 40
        t2 = await lim.admit("t")
        with pytest.raises(GenapiError) as e:  # 60 + 50 > 100: retry later
            await t2.charge(50)
        assert e.value.retry_after_s >= 1 and dict(e.value.metadata)["x-ratelimit-remaining-tokens"] == "40"
        await t1.settle(15)  # used 15 of the 60 charged: 45 back
        t3 = await lim.admit("t")
        assert t3.state.tokens.remaining == 85
        await t3.charge(50)
        assert t3.state.tokens.remaining == 35
    run(go())


def test_a_request_over_the_whole_budget_is_not_retryable():
    lim = limiter(t=(0, 100))

    async def go():
        t = await lim.admit("t")
        with pytest.raises(GenapiError) as e:
            await t.charge(101)
        err = e.value
        assert err.retry_after_s is None and err.should_retry is False
        info = err.to_status()
        assert any(k == "x-ratelimit-limit-tokens" and v == "100" for k, v in info.trailing_metadata)
        assert (await lim.admit("t")).state.tokens.remaining == 100  # nothing was charged
    run(go())


def test_reloaded_keys_apply_to_the_next_request():
    checker = KeyChecker([ApiKey("a", hash_key("a"), rpm=1)])
    lim = RateLimiter("memory://", checker)

    async def go():
        await lim.admit("a")
        with pytest.raises(GenapiError):
            await lim.admit("a")
        checker.replace([ApiKey("a", hash_key("a"), rpm=10)])
        raised = (await lim.admit("a")).state.requests
        assert (raised.limit, raised.remaining) == (10, 8)  # the window keeps what the key used (a refusal adds nothing)
        checker.replace([ApiKey("a", hash_key("a"), rpm=2)])  # lowered below what it used: no fresh budget
        with pytest.raises(GenapiError):
            await lim.admit("a")
    run(go())


class RecordingContext:
    """The slice of grpc.aio.ServicerContext the encoder servicers use."""

    def __init__(self):
        self.initial: dict | None = None
        self.status = None

    def invocation_metadata(self):
        return ()

    async def send_initial_metadata(self, md):
        self.initial = dict(md)

    async def abort_with_status(self, status):
        self.status = status
        raise grpc.aio.AbortError()


def test_embeddings_count_their_request_up_front_and_their_tokens_after():
    from types import SimpleNamespace

    from genapi.config import Task
    from server.drain import Drain
    from server.services.encoder import _unary

    sm = SimpleNamespace(config=SimpleNamespace(task=Task.EMBEDDING))
    registry = SimpleNamespace(get=lambda name: sm if name == "emb" else None, models={"emb": sm}, loaded=True,
                               available=lambda task=None, allowed=None: "")
    lim = RateLimiter("memory://", KeyChecker([]), default_rpm=2, default_tpm=10)  # everyone: ANONYMOUS
    request = SimpleNamespace(model="emb", request_id="r1")

    async def call(served, engine_id):
        return SimpleNamespace(usage=SimpleNamespace(prompt_tokens=7))

    async def go():
        ctx = RecordingContext()
        await _unary(registry, Drain(), request, ctx, Task.EMBEDDING, call, lim)
        assert ctx.initial["x-ratelimit-remaining-requests"] == "1"
        assert ctx.initial["x-ratelimit-remaining-tokens"] == "3"  # 7 of 10 used after it ran
        ctx = RecordingContext()
        await _unary(registry, Drain(), request, ctx, Task.EMBEDDING, call, lim)
        assert ctx.initial["x-ratelimit-remaining-tokens"] == "0"
        ctx = RecordingContext()
        with pytest.raises(grpc.aio.AbortError):
            await _unary(registry, Drain(), request, ctx, Task.EMBEDDING, call, lim)
        assert ctx.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and ctx.initial is None
        assert dict(ctx.status.trailing_metadata)["x-ratelimit-remaining-requests"] == "0"
    run(go())
