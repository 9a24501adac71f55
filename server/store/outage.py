"""Which failures of the state store or the object storage mean "it is down or unreachable
right now" (retry later) rather than a bug: PostgreSQL's connection errors and pool
timeouts, S3 endpoints that cannot be reached or answer 5xx. One predicate, used by the
RPC interceptor that turns them into UNAVAILABLE `store_unavailable` (HTTP 503 +
Retry-After) and by the runners, which log one warning line and try again."""
from __future__ import annotations

import functools


@functools.cache
def _outage_types() -> tuple[type, ...]:
    """The exception classes of an outage, of the drivers that are installed."""
    types: list[type] = []
    try:
        import psycopg  # OperationalError: refused, reset, admin shutdown; PoolTimeout and PoolClosed derive from it

        types.append(psycopg.OperationalError)
    except ImportError:
        pass
    try:
        from botocore import exceptions as b  # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ...

        types += [b.ConnectionError, b.HTTPClientError]
    except ImportError:
        pass
    return tuple(types)


def _server_side(e: BaseException) -> bool:
    """An S3 ClientError whose HTTP status is 5xx (ServiceUnavailable, SlowDown, InternalError)."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict) or type(e).__module__.split(".")[0] != "botocore":
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return isinstance(status, int) and status >= 500


def is_outage(e: BaseException | None) -> bool:
    """True when `e`, or an exception it was raised from (`from e`, or during its handling
    unless `from None`), says the store or the object storage cannot be reached."""
    for _ in range(8):
        if e is None:
            return False
        if isinstance(e, _outage_types()) or _server_side(e):
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


def describe(e: BaseException, limit: int = 300) -> str:
    """`e` on one line for a warning: its class and first words (no URL holds a password
    here: psycopg's messages name host and port, botocore's the endpoint)."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
