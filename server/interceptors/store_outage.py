"""Store outages, mapped once for every service: a call that fails because PostgreSQL or
the S3 endpoint is down or unreachable (server.store.outage.is_outage) ends with
UNAVAILABLE `store_unavailable` + retry_after_s, which the shim answers as 503 with
Retry-After, instead of the UNKNOWN (HTTP 500) an uncaught exception would give."""
from __future__ import annotations

import contextlib
import logging

import grpc

from ..errors import STORE_UNAVAILABLE, GenapiError
from ..store.outage import describe, is_outage
from . import wrap_handler

log = logging.getLogger("genapi.store")


@contextlib.asynccontextmanager
async def _outages_unavailable(context):
    try:
        yield
    except Exception as e:
        # an abort or a GenapiError already carries the status the service chose
        if isinstance(e, (grpc.aio.AbortError, GenapiError)) or not is_outage(e):
            raise
        log.warning("store unavailable: %s", describe(e))
        await context.abort_with_status(STORE_UNAVAILABLE.to_status())


class StoreOutageInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        return wrap_handler(await continuation(details), _outages_unavailable)
