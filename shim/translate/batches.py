"""Pure OpenAI <-> genapi.v1 BatchService translation (the `batch` object of OpenAI's
spec, wire-shapes.md 2c)."""
from __future__ import annotations

from genapi.v1 import batch_service_pb2 as pb

from shim.translate.files import list_page

STATUS_NAMES = {
    pb.BATCH_STATUS_VALIDATING: "validating", pb.BATCH_STATUS_FAILED: "failed",
    pb.BATCH_STATUS_IN_PROGRESS: "in_progress", pb.BATCH_STATUS_FINALIZING: "finalizing",
    pb.BATCH_STATUS_COMPLETED: "completed", pb.BATCH_STATUS_EXPIRED: "expired",
    pb.BATCH_STATUS_CANCELLING: "cancelling", pb.BATCH_STATUS_CANCELLED: "cancelled",
}
TIMESTAMPS = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
              "cancelling_at", "cancelled_at")


def create_request(body: dict) -> pb.CreateBatchRequest:
    return pb.CreateBatchRequest(input_file_id=body["input_file_id"], endpoint=body["endpoint"],
                                 completion_window=body["completion_window"], metadata=body.get("metadata") or {})


def batch_to_dict(b: pb.Batch) -> dict:
    errors = None
    if b.errors:
        errors = {"object": "list", "data": [
            {"code": e.code, "message": e.message, "param": e.param or None,
             "line": e.line if e.HasField("line") else None} for e in b.errors]}
    out = {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model or None, "errors": errors,
        "input_file_id": b.input_file_id, "completion_window": b.completion_window,
        "status": STATUS_NAMES.get(b.status, "validating"), "output_file_id": b.output_file_id or None,
        "error_file_id": b.error_file_id or None, "created_at": b.created_at,
    }
    for stamp in TIMESTAMPS:
        out[stamp] = getattr(b, stamp) if b.HasField(stamp) else None
    out["request_counts"] = {"total": b.request_counts.total, "completed": b.request_counts.completed,
                             "failed": b.request_counts.failed}
    u = b.usage
    out["usage"] = {"input_tokens": u.input_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
                    "output_tokens": u.output_tokens,
                    "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
                    "total_tokens": u.total_tokens}
    out["metadata"] = dict(b.metadata) or None
    return out


def batch_list_to_dict(reply: pb.ListBatchesResponse) -> dict:
    return list_page([batch_to_dict(b) for b in reply.batches], bool(reply.next_page_token))
