"""BatchService: batches of the caller (its API key name). Creating one stores it as
VALIDATING and hands it to the runner (server/batches/runner.py); everything after that
happens there. Another owner's batch answers exactly like a missing one."""
from __future__ import annotations

import asyncio
import re
import time
import uuid

import grpc

from genapi import batch_lines
from genapi.v1 import batch_service_pb2 as pb
from genapi.v1 import batch_service_pb2_grpc as pb_grpc

from ..batches.runner import BatchRunner
from ..errors import STORE_UNAVAILABLE, GenapiError, abort, invalid, not_found, quote
from ..interceptors.auth import current_owner
from ..store import BatchRecord, Store
from ..store.outage import is_outage
from ..store.s3 import split_url
from .files import lookup_file

BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")
WINDOWS = {"24h": 24 * 3600}
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_PAGE = 100
DEFAULT_PAGE = 20

STATUS_ENUM = {
    "validating": pb.BATCH_STATUS_VALIDATING, "failed": pb.BATCH_STATUS_FAILED,
    "in_progress": pb.BATCH_STATUS_IN_PROGRESS, "finalizing": pb.BATCH_STATUS_FINALIZING,
    "completed": pb.BATCH_STATUS_COMPLETED, "expired": pb.BATCH_STATUS_EXPIRED,
    "cancelling": pb.BATCH_STATUS_CANCELLING, "cancelled": pb.BATCH_STATUS_CANCELLED,
}
_STAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
           "cancelled_at")


def batch_proto(b: BatchRecord) -> pb.Batch:
    out = pb.Batch(
        id=b.id, endpoint=b.endpoint, input_file_id=b.input_file_id, completion_window=b.completion_window,
        status=STATUS_ENUM[b.status], output_file_id=b.output_file_id, error_file_id=b.error_file_id,
        created_at=b.created_at, expires_at=b.expires_at, metadata=b.metadata, model=b.model,
        request_counts=pb.BatchRequestCounts(total=b.total, completed=b.completed, failed=b.failed),
        usage=pb.BatchUsage(input_tokens=b.input_tokens, output_tokens=b.output_tokens,
                            total_tokens=b.input_tokens + b.output_tokens),
    )
    for stamp in _STAMPS:
        if (value := getattr(b, stamp)) is not None:
            setattr(out, stamp, value)
    for e in b.errors:
        err = out.errors.add(code=e.get("code") or "", message=e.get("message") or "", param=e.get("param") or "")
        if e.get("line") is not None:
            err.line = e["line"]
    return out


def batch_not_found(batch_id: str) -> GenapiError:
    return not_found(f"No such Batch object: {quote(batch_id)}", "batch_id", "batch_not_found")


class BatchServicer(pb_grpc.BatchServiceServicer):
    def __init__(self, store: Store, runner: BatchRunner, window_s: float = 0.0,
                 s3_input_buckets: list[str] | tuple = ()):
        self.store = store
        self.runner = runner
        self.window_s = window_s  # test-only override of every completion window
        self.s3_input_buckets = set(s3_input_buckets)

    async def _lookup(self, batch_id: str) -> BatchRecord:
        b = await asyncio.to_thread(self.store.get_batch, current_owner(), batch_id) \
            if BATCH_ID.fullmatch(batch_id) else None
        if b is None:
            raise batch_not_found(batch_id)
        return b

    async def CreateBatch(self, request: pb.CreateBatchRequest, context):
        try:
            b = await self._create(request)
        except GenapiError as e:
            await abort(context, e)
            return
        self.runner.kick(b.id)
        return pb.CreateBatchResponse(batch=batch_proto(b))

    async def _create(self, request: pb.CreateBatchRequest) -> BatchRecord:
        owner = current_owner()
        if request.endpoint not in batch_lines.ENDPOINTS:
            raise invalid(f"Invalid 'endpoint': {quote(request.endpoint)} is not supported; expected one of "
                          + ", ".join(batch_lines.ENDPOINTS) + ".", "endpoint", "unsupported_value")
        if request.completion_window not in WINDOWS:
            raise invalid("Invalid 'completion_window': expected '24h'.", "completion_window", "unsupported_value")
        if len(request.metadata) > MAX_METADATA_PAIRS or any(
                len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE for k, v in request.metadata.items()):
            raise invalid(f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} pairs, keys up to "
                          f"{MAX_METADATA_KEY} and values up to {MAX_METADATA_VALUE} characters.", "metadata")
        input_id = request.input_file_id
        if input_id.startswith("s3://"):
            await self._check_s3_input(input_id)
        else:
            f = await lookup_file(self.store, owner, input_id, "input_file_id")
            if f.purpose != "batch":
                raise invalid(f"Invalid 'input_file_id': the file {quote(f.id)} has purpose '{f.purpose}', "
                              "not 'batch'.", "input_file_id")
        now = int(time.time())
        window = self.window_s if self.window_s > 0 else WINDOWS[request.completion_window]
        b = BatchRecord(id=f"batch_{uuid.uuid4().hex}", owner=owner, endpoint=request.endpoint,
                        input_file_id=input_id, completion_window=request.completion_window, created_at=now,
                        expires_at=int(now + window + 0.999), metadata=dict(request.metadata))
        await asyncio.to_thread(self.store.put_batch, b)
        return b

    async def _check_s3_input(self, url: str) -> None:
        """An s3:// input must be in an allowed bucket ([files] s3_input_buckets) and exist."""
        try:
            bucket, key = split_url(url)
        except ValueError:
            bucket, key = "", ""
        if not key or len(url) > 1024:
            raise invalid("Invalid 'input_file_id': expected a file id or s3://bucket/key.", "input_file_id")
        if bucket not in self.s3_input_buckets:
            raise invalid(f"Invalid 'input_file_id': batches may not read from the bucket {quote(bucket)} "
                          "([files] s3_input_buckets).", "input_file_id", "bucket_not_allowed")
        try:
            exists = await asyncio.to_thread(self.runner.urls.exists, url)
        except Exception as e:
            if is_outage(e):
                raise STORE_UNAVAILABLE from None
            raise GenapiError(grpc.StatusCode.UNAVAILABLE, "The object storage is unavailable; retry shortly.",
                              "storage_unavailable", retry_after_s=5) from None
        if not exists:
            raise not_found(f"No such object: {quote(url)}", "input_file_id", "file_not_found")

    async def GetBatch(self, request: pb.GetBatchRequest, context):
        try:
            return pb.GetBatchResponse(batch=batch_proto(await self._lookup(request.id)))
        except GenapiError as e:
            await abort(context, e)

    async def ListBatches(self, request: pb.ListBatchesRequest, context):
        size = request.page_size if request.HasField("page_size") else DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            await abort(context, invalid(f"Invalid 'limit': expected 1 to {MAX_PAGE}.", "limit"))
        recs = await asyncio.to_thread(self.store.list_batches, current_owner(), request.page_token or None, size + 1)
        out = pb.ListBatchesResponse(batches=[batch_proto(b) for b in recs[:size]])
        if len(recs) > size:
            out.next_page_token = recs[size - 1].id
        return out

    async def CancelBatch(self, request: pb.CancelBatchRequest, context):
        try:
            b = await self._lookup(request.id)
        except GenapiError as e:
            await abort(context, e)
            return
        if await asyncio.to_thread(self.store.transition, b.id, ("validating", "in_progress"),
                                   status="cancelling", cancelling_at=int(time.time())):
            self.runner.cancel(b.id)
        b = await asyncio.to_thread(self.store.get_batch, None, b.id)
        if b.status in ("completed", "failed", "expired"):  # cancelling/cancelled: already done
            await abort(context, GenapiError(grpc.StatusCode.FAILED_PRECONDITION,
                                             f"Cannot cancel a batch with status '{b.status}'.", "invalid_batch_status",
                                             "batch_id"))
            return
        return pb.CancelBatchResponse(batch=batch_proto(b))
