"""Fuzz the REST shim with schemathesis (reliability plan Z1), positive and negative modes.

    python tools/fuzz.py                      # 5,000 cases per operation and mode, seed 0
    python tools/fuzz.py --cases 200 --seed 7 --mode negative --operation "POST /chat/completions"
    python tools/fuzz.py --base-url http://127.0.0.1:8000/v1   # against a running service

Without --base-url it starts `genapi serve` with the tiny model (completions capped at
16 tokens so that valid requests stay fast). The spec is tests/fuzz/openapi/
openai-subset.json, re-derived from OpenAI's full spec when that is at hand
(tools/openapi_subset.py). Every response is checked: no 5xx, status and content type
documented, body valid against its schema (each SSE event too), required headers
present (x-request-id; Retry-After on 429/503 and on no 4xx), invalid input refused with a 4xx,
no hang past the timeout. Each failure is printed with a curl command and, with
--save-failures (default tests/fuzz/regressions/), kept as a regression case that
tests/fuzz replays on every run. Exit status 1 when anything failed.

The same `fuzz_operation` runs in CI (tests/fuzz/test_openapi_fuzz.py) with a fixed
seed and a small number of cases per operation.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import openapi_subset  # noqa: E402

REGRESSIONS = ROOT / "tests" / "fuzz" / "regressions"
OPERATIONS = [f"{method.upper()} {path}" for path, method in openapi_subset.OPERATIONS.items()]
MODES = ("positive", "negative")
REQUEST_TIMEOUT_S = 60.0  # a response slower than this is a hang


def load_spec() -> dict:
    """The fuzzing spec: derived afresh from OpenAI's when present, else the committed one."""
    full = openapi_subset.find_full_spec()
    if full is not None:
        return openapi_subset.derive(openapi_subset.load_full_spec(full))
    return json.loads(openapi_subset.FIXTURE.read_text())


def load_schema(spec: dict | None = None):
    import schemathesis

    schema = schemathesis.openapi.from_dict(spec if spec is not None else load_spec())
    # Print curl commands as sent: nothing here is secret, and a "[Filtered]"
    # prompt_cache_key or max_completion_tokens would not reproduce.
    schema.config.output.sanitization.update(enabled=False)
    return schema


def checks():
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
            response_schema_conformance, negative_data_rejection, no_retry_after_on_4xx]


def no_retry_after_on_4xx(ctx, response, case):
    """B18: the SDKs retry whatever carries Retry-After; a client error never does."""
    if 400 <= response.status_code < 500 and response.status_code != 429:
        for header in ("retry-after", "retry-after-ms"):
            if header in {k.lower() for k in response.headers}:
                raise AssertionError(f"{response.status_code} carries {header}")
    return None


@dataclass
class Failure:
    operation: str
    mode: str
    status: int | None
    message: str
    case: dict
    curl: str

    def key(self) -> str:
        """Same request, same failure -> same key (the regression file name)."""
        blob = json.dumps([self.operation, self.case], sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Result:
    operation: str
    mode: str
    cases: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    exhausted: bool = False  # the mode has nothing to generate (e.g. negative without input)

    def summary(self) -> str:
        codes = " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items()))
        note = "  (no input to negate)" if self.exhausted and not self.cases else ""
        return (f"{self.operation:24} {self.mode:8} {self.cases:6d} cases {self.seconds:7.1f}s "
                f"{len(self.failures)} failures  [{codes}]{note}")


def case_to_dict(case) -> dict:
    """The parts of a schemathesis Case needed to replay it."""
    from schemathesis.core import NOT_SET

    out = {"method": case.method, "path": case.path, "path_parameters": dict(case.path_parameters or {}),
           "query": dict(case.query or {}), "headers": dict(case.headers or {}), "media_type": case.media_type}
    if case.body is not NOT_SET:
        out["body"] = case.body
    return json.loads(json.dumps(out, default=repr))


def case_from_dict(schema, data: dict):
    kwargs = {k: data[k] for k in ("path_parameters", "query", "headers", "media_type") if data.get(k)}
    if "body" in data:
        kwargs["body"] = data["body"]
    return schema[data["path"]][data["method"]].Case(**kwargs)


def call_and_check(case, base_url: str, session, timeout_s: float) -> tuple[int | None, str | None]:
    """(status, None) when every check passes, else (status or None, what failed)."""
    import requests

    try:
        response = case.call(base_url=base_url, session=session, timeout=timeout_s)
    except requests.Timeout:
        return None, f"hang: no complete response within {timeout_s:.0f}s"
    except requests.RequestException as e:
        return None, f"transport error: {type(e).__name__}: {e}"
    try:
        case.validate_response(response, checks=checks())
    except BaseException as e:  # FailureGroup (an exception group) or one Failure
        if isinstance(e, KeyboardInterrupt):
            raise
        parts = getattr(e, "exceptions", None) or [e]
        return response.status_code, "\n".join(f"{type(p).__name__}: {p}" for p in parts)
    return response.status_code, None


def fuzz_operation(schema, operation: str, mode: str, base_url: str, *, cases: int, seed: int,
                   timeout_s: float = REQUEST_TIMEOUT_S, on_failure=None) -> Result:
    """Runs `cases` generated cases of one operation in one mode; failures are collected
    (not raised) so that every case runs. Deterministic for a given seed and spec."""
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    method, path = operation.split(" ", 1)
    strategy = schema[path][method].as_strategy(generation_mode=GenerationMode(mode))
    result = Result(operation, mode)
    session = requests.Session()
    t0 = time.perf_counter()

    @hseed(seed)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False)
    @given(case=strategy)
    def run(case):
        result.cases += 1
        status, problem = call_and_check(case, base_url, session, timeout_s)
        if status is not None:
            result.statuses[status] = result.statuses.get(status, 0) + 1
        if problem:
            failure = Failure(operation, mode, status, problem, case_to_dict(case),
                              case.as_curl_command(base_url=base_url))
            result.failures.append(failure)
            if on_failure:
                on_failure(failure)

    try:
        run()
    except Unsatisfiable:  # nothing to generate in this mode (an operation without input)
        result.exhausted = True
    finally:
        session.close()
        result.seconds = time.perf_counter() - t0
    return result


# --- regression corpus ------------------------------------------------------------------

def save_regression(failure: Failure, directory: Path = REGRESSIONS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{failure.operation.split()[0].lower()}-{failure.key()}.json"
    if not path.exists():
        path.write_text(json.dumps({
            "operation": failure.operation, "mode": failure.mode, "found": time.strftime("%Y-%m-%d"),
            "status": failure.status, "failure": failure.message[:2000], "case": failure.case,
        }, indent=1, ensure_ascii=False) + "\n")
    return path


def load_regressions(directory: Path = REGRESSIONS) -> list[tuple[str, dict]]:
    return [(p.name, json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))]


def replay(schema, entry: dict, base_url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int | None, str | None]:
    """Replays one saved case: every check, and for a case of the negative mode (invalid
    by the spec) a 4xx, as negative_data_rejection demanded when it was generated."""
    import requests

    case = case_from_dict(schema, entry["case"])
    with requests.Session() as session:
        status, problem = call_and_check(case, base_url, session, timeout_s)
    if problem is None and entry.get("mode") == "negative" and status is not None and not 400 <= status < 500:
        problem = f"invalid data accepted: {status} (expected a 4xx)"
    return status, problem


# --- the on-demand run --------------------------------------------------------------------

def _start_service(tmp: Path):
    from tests.conftest import Service

    return Service(tmp, "fuzz", model_options="max_output_tokens = 16\n").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="cases per operation and mode (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="positive,negative")
    parser.add_argument("--operation", action="append", help=f"one of {OPERATIONS} (default: all)")
    parser.add_argument("--base-url", help="a running shim's /v1 URL (default: start one)")
    parser.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S, help="seconds before a case hangs")
    parser.add_argument("--save-failures", default=str(REGRESSIONS), help="directory for regression cases ('' off)")
    args = parser.parse_args(argv)

    schema = load_schema()
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    operations = args.operation or OPERATIONS
    service = None
    base_url = args.base_url
    if base_url is None:
        service = _start_service(Path(tempfile.mkdtemp(prefix="genapi-fuzz-")))
        base_url = service.base_url + "/v1"
        print(f"started genapi serve at {service.base_url} (log: {service.log_path})")

    def on_failure(failure: Failure) -> None:
        print(f"\nFAIL {failure.operation} [{failure.mode}] status={failure.status}\n{failure.message[:1500]}\n"
              f"  {failure.curl[:1500]}", flush=True)
        if args.save_failures:
            print(f"  saved as {save_regression(failure, Path(args.save_failures))}", flush=True)

    results = []
    try:
        for operation in operations:
            for mode in modes:
                result = fuzz_operation(schema, operation, mode, base_url, cases=args.cases, seed=args.seed,
                                        timeout_s=args.timeout, on_failure=on_failure)
                print(result.summary(), flush=True)
                results.append(result)
    finally:
        if service is not None:
            service.stop()
    total = sum(r.cases for r in results)
    failed = sum(len(r.failures) for r in results)
    print(f"\n{total} cases, {failed} failures")
    for r in results:
        print("  " + r.summary())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
