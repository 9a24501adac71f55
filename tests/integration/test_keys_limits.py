"""Keys as named principals and per-key rate limits through the official openai SDK
(reliability plan L3, L4, X3): two keys, one flooding; requests and tokens per minute with
the up-front charge and its refund; the non-retryable request over the whole budget;
per-key model lists; SIGHUP revocation; no key or prompt text in any log.

The limits are enforced by the core (server/limits.py); the shim copies the state into
OpenAI's x-ratelimit-* headers. Windows are one minute long, so every test uses keys of
its own."""
from __future__ import annotations

import signal

import httpx
import openai
import pytest

from prometheus_client.parser import text_string_to_metric_families

from genapi.config import hash_key
from genapi.durations import parse_go_duration

from ..conftest import (EMBED_MODEL, MINILM_PATH, MODEL, TINY_MODEL, Service, free_port, leaked_secrets, never_logged,
                        user_messages, wait_until)

OTHER_MODEL = "genapi-tiny-chat-b"
KEYS = {  # name -> (key, extra TOML lines)
    "flood": ("sk-flood-0123456789abcdef", "rpm = 3"),
    "calm": ("sk-calm-0123456789abcdef", ""),
    "tokens": ("sk-tokens-0123456789abcdef", "rpm = 0\ntpm = 600"),
    "small": ("sk-small-0123456789abcdef", "tpm = 300"),
    "narrow": ("sk-narrow-0123456789abcdef", f'models = ["{MODEL}"]'),
    "revoked": ("sk-revoked-0123456789abcdef", ""),
    "embeds": ("sk-embeds-0123456789abcdef", "rpm = 0\ntpm = 40"),
    "quiet": ("sk-quiet-0123456789abcdef", "tpm = 5000"),
    "spent": ("sk-spent-0123456789abcdef", "rpm = 1"),
}
DEFAULT_RPM = 100
SECRET_PROMPT = never_logged("zanzibar-quokka-prompt-7f3a")  # and after the session, no log has it


def keys_toml(names) -> str:
    return "".join(f'[[auth.keys]]\nname = "{n}"\nsha256 = "{hash_key(KEYS[n][0])}"\n{KEYS[n][1]}\n' for n in names)


def config_tables(names, metrics_port: int) -> str:
    return f"[core]\nmetrics_port = {metrics_port}\n[limits]\nrpm = {DEFAULT_RPM}\n" + keys_toml(names)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    metrics_port = free_port()
    s = Service(tmp, "limits", extra_toml=config_tables(KEYS, metrics_port),
                model_options=f'\n[[models]]\nname = "{OTHER_MODEL}"\npath = "{TINY_MODEL}"\n'
                              f'[models.options.fault]\npause_decode_file = "{tmp / "pause"}"\n'
                              f'[[models]]\nname = "{EMBED_MODEL}"\ntask = "embedding"\npath = "{MINILM_PATH}"\n')
    s.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    s.pause_file = tmp / "pause"  # while it exists, OTHER_MODEL's requests stop after their first token
    s.start()
    yield s
    s.pause_file.unlink(missing_ok=True)
    s.stop()


def sdk(svc: Service, name: str) -> openai.OpenAI:
    return svc.sdk(api_key=KEYS[name][0], timeout=60)


def chat_raw(client: openai.OpenAI, text: str = "hi", **kw):
    kw.setdefault("max_tokens", 4)
    return client.chat.completions.with_raw_response.create(model=kw.pop("model", MODEL),
                                                            messages=user_messages(text), temperature=0, **kw)


def ratelimit_headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-ratelimit-")}


def test_the_flooding_key_is_limited_and_the_other_is_not(svc):
    flood, calm = sdk(svc, "flood"), sdk(svc, "calm")
    remaining, refused, calm_ok = [], [], 0
    for _ in range(5):
        try:
            raw = chat_raw(flood)
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        except openai.RateLimitError as e:
            refused.append(e)
        raw = chat_raw(calm)
        assert raw.headers["x-ratelimit-limit-requests"] == str(DEFAULT_RPM)
        calm_ok += 1
    assert remaining == [2, 1, 0]
    assert len(refused) == 2 and calm_ok == 5
    for e in refused:
        assert e.status_code == 429 and e.code == "rate_limit_exceeded"
        assert "requests per min" in e.message and "flood" in e.message
        h = e.response.headers
        assert int(h["retry-after"]) >= 1 and "x-should-retry" not in h
        assert ratelimit_headers(h)["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == "0"
    # the calm key's counter moved by its own requests only
    assert int(chat_raw(calm).headers["x-ratelimit-remaining-requests"]) == DEFAULT_RPM - 6


def test_streamed_responses_carry_the_headers_too(svc):
    with sdk(svc, "calm").chat.completions.with_streaming_response.create(
            model=MODEL, messages=user_messages("hi"), max_tokens=2, stream=True) as resp:
        assert resp.headers["x-ratelimit-limit-requests"] == str(DEFAULT_RPM)
        assert int(resp.headers["x-ratelimit-remaining-requests"]) < DEFAULT_RPM
        assert b"[DONE]" in b"".join(resp.iter_bytes())


def test_tokens_are_charged_up_front_and_refunded_to_what_was_used(svc):
    """The response's remaining tokens are after its up-front charge (prompt + max_tokens);
    the next response shows that the first was refunded down to prompt + completion."""
    client = sdk(svc, "tokens")
    max_tokens = 40
    # Greedy output is deterministic: a stop string from its start ends the next ones early.
    probe = chat_raw(sdk(svc, "calm"), max_tokens=max_tokens).parse().choices[0].message.content
    stop = probe[2:5]
    assert stop.strip(), probe
    first = chat_raw(client, max_tokens=max_tokens, stop=[stop])
    usage = first.parse().usage
    assert usage.completion_tokens < max_tokens  # something to refund
    h1 = first.headers
    assert "x-ratelimit-limit-requests" not in h1  # rpm = 0: unlimited, no request headers
    assert h1["x-ratelimit-limit-tokens"] == "600"
    assert int(h1["x-ratelimit-remaining-tokens"]) == 600 - (usage.prompt_tokens + max_tokens)
    second = chat_raw(client, max_tokens=max_tokens, stop=[stop])
    used_by_first = usage.prompt_tokens + usage.completion_tokens
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == \
        600 - used_by_first - (usage.prompt_tokens + max_tokens)
    # Until the budget cannot hold another charge: then 429 with Retry-After.
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(20):
            chat_raw(client, max_tokens=200)
    h = e.value.response.headers
    assert "tokens per min" in e.value.message and int(h["retry-after"]) >= 1
    assert int(h["x-ratelimit-remaining-tokens"]) < 200 + usage.prompt_tokens


def test_embeddings_charged_after_they_run_are_refused_once_the_budget_is_spent(svc):
    client = sdk(svc, "embeds")  # tpm = 40
    text = "tokens " * 12  # ~14 tokens with the special ones
    served = 0
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(6):
            client.embeddings.create(model=EMBED_MODEL, input=[text, text])
            served += 1
    assert 1 <= served <= 2  # charged after each run: the one that spent the rest still ran
    assert "tokens per min" in e.value.message and int(e.value.response.headers["retry-after"]) >= 1


def test_a_request_over_the_whole_token_budget_is_not_retryable(svc):
    client = sdk(svc, "small")
    with pytest.raises(openai.RateLimitError) as e:
        chat_raw(client, max_tokens=None)  # the model's default: the whole context, over 300
    h = e.value.response.headers
    assert e.value.code == "rate_limit_exceeded" and "Request too large" in e.value.message
    assert h["x-should-retry"] == "false" and "retry-after" not in h
    assert h["x-ratelimit-limit-tokens"] == "300" and h["x-ratelimit-remaining-tokens"] == "300"
    assert chat_raw(client, max_tokens=4).parse().choices  # nothing was charged


def test_a_limited_key_gets_responses_and_its_400s(svc):
    calm = sdk(svc, "calm")  # under the default rpm limit
    out = calm.responses.create(model=MODEL, input="hi", max_output_tokens=4, temperature=0)
    assert out.status in ("completed", "incomplete") and out.usage.output_tokens > 0
    with pytest.raises(openai.BadRequestError) as e:  # bad input stays a 400 with the limit state attached
        chat_raw(calm, max_tokens=100_000)
    assert "x-ratelimit-limit-requests" in e.value.response.headers


def test_every_response_of_a_limited_key_carries_the_state_and_only_model_calls_are_charged(svc):
    quiet = sdk(svc, "quiet")
    auth = {"Authorization": f"Bearer {KEYS['quiet'][0]}"}

    def state_of(resp) -> tuple[int, int]:
        h = ratelimit_headers(resp.headers)
        assert h["x-ratelimit-limit-requests"] == str(DEFAULT_RPM) and h["x-ratelimit-limit-tokens"] == "5000"
        assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-ratelimit-reset-tokens"].endswith("s")
        return int(h["x-ratelimit-remaining-requests"]), int(h["x-ratelimit-remaining-tokens"])

    uncharged = [
        quiet.models.with_raw_response.list(),
        quiet.files.with_raw_response.list(),
        quiet.batches.with_raw_response.list(),
        httpx.post(f"{svc.base_url}/v1/chat/completions", content=b"{not json", headers={**auth, "Content-Type": "application/json"}),  # the shim's own 400
        httpx.get(f"{svc.base_url}/v1/no-such-route", headers=auth),  # a 404
        httpx.get(f"{svc.base_url}/v1/files/file-missing", headers=auth),  # the core's 404
    ]
    assert [r.status_code for r in uncharged[3:]] == [400, 404, 404]
    assert {state_of(r) for r in uncharged} == {(DEFAULT_RPM, 5000)}  # none of them charged anything
    chat = chat_raw(quiet, max_tokens=4)
    used = chat.parse().usage.total_tokens
    assert state_of(quiet.models.with_raw_response.list()) == (DEFAULT_RPM - 1, 5000 - used)
    # A key without limits pays no lookup and gets no headers.
    free = httpx.get(f"{svc.base_url}/v1/models", headers={"Authorization": f"Bearer {KEYS['tokens'][0]}"})
    assert "x-ratelimit-limit-requests" not in free.headers  # rpm = 0 for it; its tpm shows
    assert free.headers["x-ratelimit-limit-tokens"] == "600"


def test_grpc_callers_read_their_state_with_get_rate_limits(svc):
    import grpc

    from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc

    with grpc.insecure_channel(svc.grpc_target) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        reply, call = stub.GetRateLimits.with_call(admin_service_pb2.GetRateLimitsRequest(),
                                                   metadata=[("authorization", f"Bearer {KEYS['embeds'][0]}")], timeout=10)
        assert not reply.HasField("requests")  # rpm = 0
        assert reply.tokens.limit == 40 and 0 <= reply.tokens.remaining <= 40 and 0 < reply.tokens.reset_ms <= 60_000
        assert dict(call.initial_metadata())["x-ratelimit-limit-tokens"] == "40"
        with pytest.raises(grpc.RpcError) as e:
            stub.GetRateLimits(admin_service_pb2.GetRateLimitsRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_key_sees_only_its_models(svc):
    narrow, calm = sdk(svc, "narrow"), sdk(svc, "calm")
    assert [m.id for m in narrow.models.list()] == [MODEL]
    assert {m.id for m in calm.models.list()} == {MODEL, OTHER_MODEL, EMBED_MODEL}
    for call in (lambda: chat_raw(narrow, model=OTHER_MODEL), lambda: narrow.models.retrieve(OTHER_MODEL)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.code == "model_not_found"
        assert "does not exist or you do not have access to it" in e.value.message
        assert f"`{OTHER_MODEL}`" in e.value.message and e.value.message.count("`") == 4  # only its own model listed
    with pytest.raises(openai.NotFoundError) as e:  # served, but not to this key: nothing false said about it
        narrow.embeddings.create(model=EMBED_MODEL, input="hi")
    assert e.value.message.endswith("This key may use no embedding models."), e.value.message
    assert chat_raw(narrow).parse().choices
    assert chat_raw(calm, model=OTHER_MODEL).parse().choices


def test_a_batch_line_may_use_only_the_models_of_its_owners_key(svc):
    from .batch_support import assert_exactly_once, chat_line, upload, wait_batch

    narrow = sdk(svc, "narrow")
    f = upload(narrow, [chat_line("mine"), chat_line("other", model=OTHER_MODEL)])
    batch = wait_batch(narrow, narrow.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                     completion_window="24h").id, timeout_s=120)
    assert batch.status == "completed"
    out, err = assert_exactly_once(narrow, batch, ["mine", "other"])
    assert [r["custom_id"] for r in out] == ["mine"] and out[0]["response"]["status_code"] == 200
    assert err[0]["custom_id"] == "other" and err[0]["response"]["status_code"] == 404
    assert err[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_sighup_revokes_a_key_and_lets_its_request_in_flight_finish(svc):
    revoked = sdk(svc, "revoked")
    svc.pause_file.touch()  # the request below stays in flight (decoding paused) across the reload
    try:
        with revoked.chat.completions.with_streaming_response.create(
                model=OTHER_MODEL, messages=user_messages("tell me a story"), max_tokens=8, stream=True,
                extra_headers={"x-request-id": "in-flight-at-sighup"}) as resp:
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # admitted, streaming
            svc.config.write_text(svc.config.read_text().replace(keys_toml(["revoked"]), ""))
            svc.proc.send_signal(signal.SIGHUP)
            # the core, and each of the shim's two workers (in place: no restart)
            assert wait_until(lambda: svc.log().count("SIGHUP: reloaded") == 3, timeout_s=30), svc.log()[-3000:]
            assert "request in-flight-at-sighup done" not in svc.log()
            svc.pause_file.unlink()
            rest = [line for line in lines if line]
    finally:
        svc.pause_file.unlink(missing_ok=True)
    assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
    assert "request in-flight-at-sighup done" in svc.log()
    for _ in range(4):  # whichever worker takes it, on the same connection as before or a new one
        with pytest.raises(openai.AuthenticationError):
            revoked.models.list()
        r = httpx.get(f"{svc.base_url}/v1/models", headers={"Authorization": f"Bearer {KEYS['revoked'][0]}"})
        assert r.status_code == 401
    assert chat_raw(sdk(svc, "calm")).parse().choices
    assert "Booting worker" not in svc.log().partition("SIGHUP")[2]  # no worker was restarted


def core_refusals(svc: Service, key: str) -> float:
    """genapi_rate_limit_rejections_total{key, limit="requests"} on the core's /metrics."""
    return refusals_in(httpx.get(svc.metrics_url, timeout=10).text, key)


def refusals_in(text: str, key: str, name: str = "genapi_rate_limit_rejections_total") -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and s.labels.get("key") == key
               and s.labels.get("limit") == "requests")


def test_a_spent_requests_window_is_answered_by_the_shim_until_it_resets(svc):
    """Reliability plan L3: once the core has refused a key for its rpm, each shim worker
    answers that key's model calls itself (no gRPC call) with the same 429 and aged
    headers, until the window resets or the limits are reloaded."""
    spent = sdk(svc, "spent")
    assert chat_raw(spent).parse().choices  # rpm = 1: the window is spent now
    refused = []
    for i in range(12):  # chat, embeddings and a stream, whichever worker takes each
        with pytest.raises(openai.RateLimitError) as e:
            if i % 3 == 0:
                chat_raw(spent)
            elif i % 3 == 1:
                spent.embeddings.create(model=EMBED_MODEL, input="hi")
            else:
                spent.chat.completions.create(model=MODEL, messages=user_messages("hi"), max_tokens=2, stream=True)
        refused.append(e.value)
    # the core saw at most one refusal per shim worker (two), not twelve; the shim counts the rest
    core = core_refusals(svc, "spent")
    assert 1 <= core <= 2
    shim_metrics = httpx.get(f"{svc.base_url}/metrics", headers={"Authorization": f"Bearer {KEYS['calm'][0]}"}).text
    assert core + refusals_in(shim_metrics, "spent", "genapi_http_rate_limit_rejections_total") == 12
    resets = []
    for e in refused:
        h = e.response.headers
        assert e.status_code == 429 and e.code == "rate_limit_exceeded" and e.type == "rate_limit_error"
        assert "requests per min" in e.message and "`spent`" in e.message
        assert h["x-ratelimit-limit-requests"] == "1" and h["x-ratelimit-remaining-requests"] == "0"
        assert "x-should-retry" not in h and 1 <= int(h["retry-after"]) <= 60
        wait = parse_go_duration(h["x-ratelimit-reset-requests"])
        assert wait is not None and 0 < wait <= 60 and e.message.endswith(f"Please try again in {h['x-ratelimit-reset-requests']}.")
        resets.append(wait)
    assert resets[-1] <= resets[0] + 1.0  # counting down, within Redis-free memory storage's wobble
    # other keys are untouched, and a reload that raises the limit takes effect at once
    assert chat_raw(sdk(svc, "calm")).parse().choices
    reloads = svc.log().count("SIGHUP: reloaded")
    svc.config.write_text(svc.config.read_text().replace(keys_toml(["spent"]),
                                                         keys_toml(["spent"]).replace("rpm = 1", "rpm = 50")))
    svc.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: svc.log().count("SIGHUP: reloaded") == reloads + 3, timeout_s=30), svc.log()[-3000:]
    for _ in range(4):  # both workers forgot the refusal
        assert chat_raw(spent).parse().choices


def test_no_key_and_no_prompt_in_the_logs(svc):
    chat_raw(sdk(svc, "calm"), SECRET_PROMPT)
    httpx.get(f"{svc.base_url}/v1/models", headers={"Authorization": f"Bearer {SECRET_PROMPT}-not-a-key"})
    log = svc.log()
    for key, _ in KEYS.values():
        assert key not in log and key[4:-4] not in log
    assert SECRET_PROMPT not in log
    assert "flood" in log  # key names do appear
    assert not leaked_secrets()  # every log of the session so far (X3; checked again at its end)
