"""Per-key rate limits: requests and tokens per minute, on the `limits` library (written
against limits 5.x, FixedWindowRateLimiter).

Enforced in the core, the one place every request passes once: REST requests through the
shim and direct gRPC callers alike; only the core knows a request's prompt tokens (it
templates and tokenizes) and what it really used. The shim copies the state the core
reports (gRPC metadata `x-ratelimit-*`) into the HTTP headers.

Accounting, per key name and one-minute window:
- requests: one per Generate/Embed/Rerank/Transcribe RPC, counted when it arrives (`admit`);
- tokens: a generation is charged prompt tokens + n x max_tokens (or the model's default)
  up front (`Ticket.charge`) and refunded down to what it really used when it ends
  (`Ticket.settle`); embeddings and rerank are charged their input tokens after the fact.
A refusal charges nothing. A request larger than a whole window's token budget can never
run: 429 with `should_retry=false` (the shim: `x-should-retry: false`, no Retry-After).

Storage: `memory://` (this core's memory) or `redis://host:port` (shared by every core
replica). Redis calls run on a worker thread so the event loop never waits on the network.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

import grpc
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from genapi.durations import go_duration
from genapi.keys import ANONYMOUS, KeyChecker
from genapi.untrusted import clip

from . import metrics
from .errors import GenapiError
from .interceptors.auth import current_owner

log = logging.getLogger("genapi.limits")

# Two windows of the same counter differ by about a minute; reset times read from Redis
# (TTL in whole seconds) wobble by one.
SAME_WINDOW_S = 2.0
RATE_LIMIT_CODE = "rate_limit_exceeded"


class PerMinute(RateLimitItemPerMinute):
    """A one-minute limit whose counter does not depend on its amount: `limits` names the
    counter after the amount, so a SIGHUP that changed a key's rpm or tpm would start it
    at 0 mid-window (a lowered limit handing out a fresh budget)."""

    def key_for(self, *identifiers) -> str:
        return "/".join([self.namespace, *map(str, identifiers), "minute"])


@dataclass(frozen=True)
class Budget:
    """One dimension (requests or tokens) of a key's limit, as the headers show it."""

    limit: int
    remaining: int
    reset_s: float  # seconds until the window restarts with the whole limit


@dataclass
class RateState:
    """What `x-ratelimit-*` say; a dimension without a limit is None (no headers)."""

    requests: Budget | None = None
    tokens: Budget | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata (the shim copies it into HTTP headers verbatim)."""
        out = []
        for kind, b in (("requests", self.requests), ("tokens", self.tokens)):
            if b is not None:
                out += [(f"x-ratelimit-limit-{kind}", str(b.limit)),
                        (f"x-ratelimit-remaining-{kind}", str(max(0, b.remaining))),
                        (f"x-ratelimit-reset-{kind}", go_duration(b.reset_s))]
        return tuple(out)


def rate_limited(key: str, limit: str, message: str, state: RateState, retry_after_s: float | None) -> GenapiError:
    """RESOURCE_EXHAUSTED rate_limit_exceeded with the state in the trailers; retry_after_s
    None marks it not retryable (a request over the whole budget). Counted in
    genapi_rate_limit_rejections_total{key, limit} (limit: requests, tokens, request_too_large)."""
    metrics.RATE_LIMITED.labels(key, limit).inc()
    err = GenapiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, RATE_LIMIT_CODE,
                      retry_after_s=None if retry_after_s is None else max(1, math.ceil(retry_after_s)),
                      metadata=state.metadata())
    if retry_after_s is None:
        err.should_retry = False
    return err


@dataclass
class Ticket:
    """One admitted request of `key`: the token charge it holds and the state to report."""

    limiter: "RateLimiter | None"
    key: str
    state: RateState = field(default_factory=RateState)
    charged: int = 0
    _window_reset: float = 0.0  # epoch seconds the charged window ends

    async def charge(self, tokens: int, what: str = "") -> None:
        """Charges `tokens` up front; raises the 429 GenapiError when they do not fit
        (nothing charged), the non-retryable one when they exceed the whole budget."""
        if self.limiter is not None:
            await self.limiter._charge(self, tokens, what)

    async def settle(self, used: int) -> None:
        """At the end: refunds the charge above `used` (within the same window), or for a
        request charged nothing up front, charges `used` without refusing. Never raises."""
        if self.limiter is None:
            return
        try:
            await self.limiter._settle(self, used)
        except Exception:  # storage gone: the next admit reports it; never fail a finished request
            log.warning("rate-limit settle failed for key %s", self.key, exc_info=True)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.state.metadata()


UNLIMITED = Ticket(None, ANONYMOUS)


class RateLimiter:
    """Per-key rpm/tpm over one `limits` storage. `keys` gives each key's own limits
    (re-read at every request, so a SIGHUP reload applies at once); keys without their own
    (and ANONYMOUS without configured keys) get `default_rpm` / `default_tpm`; 0 = none."""

    def __init__(self, storage_uri: str, keys: KeyChecker, default_rpm: int = 0, default_tpm: int = 0):
        self.storage_uri = storage_uri
        self.storage = storage_from_string(storage_uri)
        self.strategy = FixedWindowRateLimiter(self.storage)
        self.keys = keys
        self.default_rpm, self.default_tpm = default_rpm, default_tpm
        self._inline = storage_uri.startswith("memory://")
        self._items: dict[int, PerMinute] = {}

    def set_defaults(self, rpm: int, tpm: int) -> None:
        self.default_rpm, self.default_tpm = rpm, tpm

    def limits_of(self, key: str) -> tuple[int, int]:
        """(rpm, tpm) of `key`; 0 = unlimited."""
        return self.keys.limits_of(key, self.default_rpm, self.default_tpm)

    def _item(self, amount: int) -> PerMinute:
        item = self._items.get(amount)
        if item is None:
            item = self._items[amount] = PerMinute(amount, namespace="genapi")
        return item

    async def _run(self, fn, *args, **kw):
        """`fn` on the storage; a storage that cannot be reached (Redis down) is UNAVAILABLE
        with Retry-After (a 503 the client retries), never an internal error."""
        try:
            if self._inline:
                return fn(*args, **kw)
            return await asyncio.to_thread(fn, *args, **kw)
        except (OSError, ConnectionError) as e:
            raise self._unavailable(e) from None
        except Exception as e:
            if type(e).__module__.startswith("redis"):  # redis.exceptions.ConnectionError, TimeoutError
                raise self._unavailable(e) from None
            raise

    @staticmethod
    def _unavailable(e: Exception) -> GenapiError:
        log.warning("rate-limit storage unavailable: %s", clip(str(e), 300))
        return GenapiError(grpc.StatusCode.UNAVAILABLE, "The rate-limit storage is unavailable; retry shortly.",
                           "limits_unavailable", retry_after_s=5)

    async def _hit(self, amount: int, kind: str, key: str, cost: int) -> tuple[bool, Budget]:
        """Adds `cost` to the counter; when it went over, takes it back. (ok, budget after)."""
        item = self._item(amount)

        def hit():
            ok = self.strategy.hit(item, kind, key, cost=cost)
            if not ok:  # FixedWindow counts a refused hit too: undo it
                self.strategy.hit(item, kind, key, cost=-cost)
            stats = self.strategy.get_window_stats(item, kind, key)
            return ok, stats
        ok, stats = await self._run(hit)
        return ok, Budget(amount, stats.remaining, stats.reset_time - time.time())

    async def _peek(self, amount: int, kind: str, key: str) -> Budget:
        item = self._item(amount)
        stats = await self._run(self.strategy.get_window_stats, item, kind, key)
        return Budget(amount, stats.remaining, stats.reset_time - time.time())

    async def state_of(self, key: str) -> RateState:
        """`key`'s budgets now, charging nothing (AdminService.GetRateLimits)."""
        rpm, tpm = self.limits_of(key)
        state = RateState()
        if rpm:
            state.requests = await self._peek(rpm, "requests", key)
        if tpm:
            state.tokens = await self._peek(tpm, "tokens", key)
        return state

    async def admit(self, key: str, model: str = "") -> Ticket:
        """Counts one request of `key`; raises the 429 GenapiError when its rpm is used up.
        The ticket's state also shows the token budget left (peeked)."""
        rpm, tpm = self.limits_of(key)
        ticket = Ticket(self, key)
        if rpm:
            ok, budget = await self._hit(rpm, "requests", key, 1)
            ticket.state.requests = budget
            if not ok:
                if tpm:
                    ticket.state.tokens = await self._peek(tpm, "tokens", key)
                raise rate_limited(key, "requests",
                                   f"Rate limit reached for {_for(model)}key `{key}` on requests per min (RPM): "
                                   f"Limit {rpm}, Used {rpm}, Requested 1. Please try again in "
                                   f"{go_duration(budget.reset_s)}.", ticket.state, budget.reset_s)
        if tpm:
            ticket.state.tokens = budget = await self._peek(tpm, "tokens", key)
            if budget.remaining <= 0:  # spent: refused before it runs (embeddings and rerank, charged after)
                raise rate_limited(key, "tokens",
                                   f"Rate limit reached for {_for(model)}key `{key}` on tokens per min (TPM): "
                                   f"Limit {tpm}, Used {tpm - budget.remaining}. Please try again in "
                                   f"{go_duration(budget.reset_s)}.", ticket.state, budget.reset_s)
        return ticket

    async def _charge(self, ticket: Ticket, tokens: int, what: str) -> None:
        _, tpm = self.limits_of(ticket.key)
        if not tpm or tokens <= 0:
            return
        if tokens > tpm:
            ticket.state.tokens = await self._peek(tpm, "tokens", ticket.key)
            raise rate_limited(ticket.key, "request_too_large",
                               f"Request too large for {_for(what)}key `{ticket.key}` on tokens per min (TPM): "
                               f"Limit {tpm}, Requested {tokens}. The input or output tokens must be reduced "
                               "in order to run successfully.", ticket.state, None)
        ok, budget = await self._hit(tpm, "tokens", ticket.key, tokens)
        ticket.state.tokens = budget
        if not ok:
            used = tpm - budget.remaining
            raise rate_limited(ticket.key, "tokens",
                               f"Rate limit reached for {_for(what)}key `{ticket.key}` on tokens per min (TPM): "
                               f"Limit {tpm}, Used {used}, Requested {tokens}. Please try again in "
                               f"{go_duration(budget.reset_s)}.", ticket.state, budget.reset_s)
        ticket.charged = tokens
        ticket._window_reset = time.time() + budget.reset_s

    async def _settle(self, ticket: Ticket, used: int) -> None:
        _, tpm = self.limits_of(ticket.key)
        if not tpm:
            return
        if ticket.charged == 0:  # charged after the fact (embeddings, rerank)
            if used > 0:
                await self._run(self.strategy.hit, self._item(tpm), "tokens", ticket.key, cost=used)
                ticket.state.tokens = await self._peek(tpm, "tokens", ticket.key)  # what the headers say
            return
        refund = ticket.charged - max(0, used)
        if refund <= 0:
            return
        budget = await self._peek(tpm, "tokens", ticket.key)
        if abs(time.time() + budget.reset_s - ticket._window_reset) > SAME_WINDOW_S:
            return  # the charged window is over: its tokens are back anyway
        await self._run(self.strategy.hit, self._item(tpm), "tokens", ticket.key, cost=-refund)
        ticket.charged -= refund


async def admit(limiter: RateLimiter | None, context, model: str = "") -> Ticket:
    """The caller's ticket for one rate-limited RPC (Generate, Embed, Rerank): counts the
    request, raises the 429 GenapiError over the limit. Batch lines (run in-process, their
    context marks them `exempt_from_limits`) and a core without a limiter are not limited."""
    if limiter is None or getattr(context, "exempt_from_limits", False):
        return UNLIMITED
    return await limiter.admit(current_owner(), model)


def _for(model: str) -> str:
    return f"model `{model}`, " if model else ""
