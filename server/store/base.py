"""The state-store interface: records and the few operations batches and files need.

Two implementations share one schema (`tables.py`): SQLite (one node) and PostgreSQL
(several core replicas, claims with leases and SKIP LOCKED). Every record has an `owner` (an API key's name,
or genapi.keys.ANONYMOUS); every owner-facing read takes the owner, so another owner's
id behaves exactly like a missing one. Timestamps are Unix seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol


@dataclass
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str  # "batch", "batch_output", "user_data", "assistants", "vision"
    bytes: int
    created_at: int
    status: str = "processed"


@dataclass
class BatchRecord:
    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    status: str = "validating"  # validating in_progress finalizing completed failed expired cancelling cancelled
    metadata: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # [{"code", "message", "param", "line"}]
    model: str = ""
    output_file_id: str = ""
    error_file_id: str = ""
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


#: Statuses in which a batch still has work for a runner.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
              "cancelled_at")


@dataclass
class LineResult:
    """One finished input line: `data` is its output-file line (JSON text, no newline)."""

    custom_id: str
    line: int  # 1-based line in the input file
    ok: bool  # True: output file; False: error file
    data: str
    input_tokens: int = 0
    output_tokens: int = 0
    holder: str = ""  # the holder whose claim ran it (ends that claim in batch_line_runs)


@dataclass
class ResponseRecord:
    """A stored response. `data` is the response (JSON text of a genapi.v1.Response);
    `history` and `input` are JSON lists of items (genapi.v1.Item as JSON): the items of
    the responses it continues, and its own new input. Continuing it means history +
    input + the output in `data`."""

    id: str
    owner: str
    created_at: int
    status: str  # queued in_progress completed incomplete failed cancelled
    data: str
    history: str = "[]"
    input: str = "[]"
    background: bool = False
    stored: bool = True  # False: kept only while a background response runs


@dataclass
class ConversationRecord:
    id: str
    owner: str
    created_at: int
    metadata: dict = field(default_factory=dict)


@dataclass
class ConversationItem:
    """One item of a conversation: `data` is the item (JSON text of a genapi.v1.Item)."""

    conversation_id: str
    item_id: str
    data: str


class Store(Protocol):
    # files
    def put_file(self, rec: FileRecord) -> None:
        """Inserts a file record; an existing id is left as it is (idempotent)."""
    def get_file(self, owner: str | None, file_id: str) -> FileRecord | None:
        """The owner's live file (any owner's when `owner` is None), else None."""
    def list_files(self, owner: str, purpose: str | None, after: str | None, limit: int,
                   ascending: bool) -> list[FileRecord]: ...
    def delete_file(self, owner: str, file_id: str) -> bool: ...

    # batches
    def put_batch(self, rec: BatchRecord) -> None: ...
    def get_batch(self, owner: str | None, batch_id: str) -> BatchRecord | None: ...
    def list_batches(self, owner: str, after: str | None, limit: int) -> list[BatchRecord]: ...
    def transition(self, batch_id: str, from_status: tuple[str, ...], **fields) -> bool:
        """Sets `fields` (status, timestamps, counts...) only while the batch is in one of
        `from_status` (compare-and-set in one transaction); False when it was not."""
    def claim_batches(self, holder: str, lease_s: float, now: float) -> list[str]:
        """Ids of the active batches `holder` (a node) works on, oldest first: every
        in-progress one (replicas share its lines, each leased with claim_lines), and those
        in another active status now leased to it until now + lease_s: unleased ones,
        expired leases, and its own (a restarted node takes its batches back)."""
    def lease_batch(self, batch_id: str, holder: str, lease_s: float, now: float) -> bool:
        """Leases one batch to `holder` until now + lease_s (validation, finalization:
        work done once, by the replica that wins it); False when another holds it."""

    # per-line leases (line_claims.py): several replicas share one in-progress batch
    def add_batch_lines(self, batch_id: str, lines: list[tuple[int, str, bool]]) -> None: ...
    def claim_lines(self, batch_id: str, node: str, holder: str, limit: int, lease_s: float,
                    now: float) -> list[int]: ...
    def renew_lines(self, holder: str, lease_s: float, now: float,
                    running: list[tuple[str, int]] = ()) -> list[tuple[str, int]]: ...
    def release_lines(self, batch_id: str, holder: str, now: float) -> None: ...
    def lines_held(self, batch_id: str, now: float) -> int: ...
    def line_runs(self, batch_id: str) -> list:
        """Every claim of the batch's lines (line_claims.LineRun), by line then start."""

    # per-line results, keyed by (batch id, custom id)
    def put_result(self, batch_id: str, result: LineResult) -> bool:
        """Records a line's result and counts it in the batch, once: False (and nothing
        changed) when that custom_id already has one."""
    def done_custom_ids(self, batch_id: str) -> set[str]: ...
    def results(self, batch_id: str, ok: bool) -> Iterator[LineResult]:
        """The batch's results of one kind, in input-line order."""

    # responses
    def put_response(self, rec: ResponseRecord) -> None:
        """Inserts or replaces the response `rec.id` (same owner)."""
    def get_response(self, owner: str | None, response_id: str) -> ResponseRecord | None:
        """The owner's live response (any owner's when `owner` is None), else None."""
    def delete_response(self, owner: str, response_id: str) -> bool: ...
    def set_response_status(self, response_id: str, from_status: tuple[str, ...], status: str,
                            data: str | None = None) -> bool:
        """Compare-and-set of the status (and the data) while in one of `from_status`."""
    def claim_response(self, response_id: str, holder: str, lease_s: float, now: float) -> bool:
        """Leases a queued or in-progress response to `holder` until now + lease_s: True
        when it was unleased, its lease expired, or `holder` held it (a renewal)."""
    def claimable_responses(self, holder: str, now: float) -> list[str]:
        """Ids of background responses still queued or in progress that `holder` may claim
        (no lease, an expired one, or its own: a restarted node takes its work back)."""

    # conversations and their items (insertion order)
    def put_conversation(self, rec: ConversationRecord) -> None: ...
    def get_conversation(self, owner: str, conversation_id: str) -> ConversationRecord | None: ...
    def update_conversation(self, owner: str, conversation_id: str, metadata: dict) -> bool: ...
    def delete_conversation(self, owner: str, conversation_id: str) -> bool: ...
    def add_conversation_items(self, conversation_id: str, items: list[ConversationItem]) -> None: ...
    def conversation_items(self, conversation_id: str) -> list[ConversationItem]:
        """Every live item, oldest first."""
    def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool: ...
