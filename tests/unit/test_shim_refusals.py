"""shim/ratelimit.py's memory of spent rpm windows, without a server: what is kept, the
429 made for the request at hand, when it is forgotten."""
from __future__ import annotations

from shim.ratelimit import CHARGED_PATHS, Refusals, refusals_hold, requests_spent_for

SPENT = {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "40s",
         "x-ratelimit-limit-tokens": "900", "x-ratelimit-remaining-tokens": "850", "x-ratelimit-reset-tokens": "40s"}


def test_only_a_spent_requests_window_is_remembered():
    assert requests_spent_for(SPENT) == 40.0
    assert requests_spent_for({**SPENT, "x-ratelimit-remaining-requests": "1"}) is None
    assert requests_spent_for({**SPENT, "x-ratelimit-reset-requests": "0ms"}) is None
    assert requests_spent_for({**SPENT, "x-ratelimit-reset-requests": "soon"}) is None
    assert requests_spent_for({**SPENT, "x-ratelimit-limit-requests": "x"}) is None
    # a spent token budget is not: refunds of running requests free tokens before the reset
    tokens_spent = {"x-ratelimit-limit-tokens": "900", "x-ratelimit-remaining-tokens": "0",
                    "x-ratelimit-reset-tokens": "40s"}
    assert requests_spent_for(tokens_spent) is None
    assert not Refusals().remember("k", tokens_spent)


def test_the_answer_is_an_rpm_refusal_counting_down_to_the_reset():
    refusals = Refusals()
    assert refusals.remember("k", SPENT, now=100.0)
    err = refusals.answer("k", now=112.5)
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "rate_limit_error"
    # whatever the first refusal said (a model, the token budget), this one is about the rpm
    assert err.message == ("Rate limit reached for key `k` on requests per min (RPM): Limit 3, Used 3, "
                           "Requested 1. Please try again in 27.5s.")
    assert err.headers == {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
                           "x-ratelimit-reset-requests": "27.5s", "Retry-After": "28"}  # no stale token state
    assert refusals.answer("other", now=112.5) is None
    assert refusals.answer("k", now=140.0) is None  # the window reset: ask the core again
    assert refusals.answer("k", now=112.5) is None  # and it was forgotten


def test_clear_forgets_every_key():
    refusals = Refusals()
    refusals.remember("a", SPENT, now=0.0)
    refusals.remember("b", SPENT, now=0.0)
    refusals.clear()
    assert refusals.answer("a", now=1.0) is None and refusals.answer("b", now=1.0) is None


def test_every_charged_path_is_a_post_route_of_the_shim():
    from shim import create_app

    rules = {r.rule for r in create_app().url_map.iter_rules() if "POST" in r.methods}
    assert CHARGED_PATHS <= rules


def test_refusals_are_replayed_only_where_one_window_counts_for_every_core():
    from genapi.config import Config

    one_core = Config(core_targets=["127.0.0.1:50051"])
    assert refusals_hold(one_core)
    # several cores with their own memory:// counters: one core's spent window is not another's
    assert not refusals_hold(Config(core_targets=["127.0.0.1:50051", "127.0.0.1:50052"]))
    assert not refusals_hold(Config(core_targets=["dns:///cores:50051"]))
    assert refusals_hold(Config(core_targets=["dns:///cores:50051"], limits_storage="redis://127.0.0.1:6379"))
