"""The batch runner: takes batches through validating -> in_progress -> finalizing ->
completed (or failed / expired / cancelling -> cancelled), and resumes them after a
crash or restart.

Durability: a line's result is committed to the store (keyed by batch id and custom_id,
insert-once, counted in the batch in the same transaction) before it counts as done;
lines in flight at a crash have no result and simply run again. Result files are
written from the stored results (input-line order) with an atomic write, under ids
derived from the batch id, so finalizing twice gives the same files. Every custom_id
therefore appears exactly once across the output and error files.

Replicas: several cores may share one store (PostgreSQL). Every replica works on every
in-progress batch, claiming its lines one at a time with a lease (`lease_s`, renewed
every POLL_S while the line runs; SKIP LOCKED under PostgreSQL), so no line runs on two
replicas at once and the lines of a replica that died are claimed again once their
leases run out; a line whose lease this replica could not renew in time (the store
unreachable) stops before the lease ends. Validation and finalization are done once, by
the replica that wins the batch's own lease (`Store.lease_batch`); the move from
in_progress to finalizing is a compare-and-set that one replica wins.

Priority: at most `[batches] concurrency` lines run at once over all batches, and no new
line starts while any engine has interactive requests waiting for a slot.

Transient refusals (UNAVAILABLE: draining or engine down; RESOURCE_EXHAUSTED: engine
full) are retried with backoff and never become results; every other outcome is final:
status 200 -> output file, anything else -> error file with the interactive endpoint's
status and error body.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import socket
import time
import uuid

import grpc

from genapi import batch_lines
from genapi.batch_lines import LineRejected

from ..interceptors.auth import act_as
from ..store import BatchRecord, FileRecord, LineResult, S3Url, Store
from ..store.outage import describe, is_outage
from ..store.s3 import beside
from ..tracing import log_context_of
from .inprocess import EXECUTORS

log = logging.getLogger("genapi.batches")

POLL_S = 1.0  # how often the store is asked for batches to claim (and line leases renewed)
LEASE_S = 30.0  # default lease of a batch (its validation, finalization) and of a line
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
RETRY_S = (0.1, 0.5, 1.0, 2.0, 5.0)
# Test-only fault injection: pause this long once a batch is FINALIZING, before its files
# are written (so a test can kill the core during finalizing).
FINALIZE_PAUSE_ENV = "GENAPI_FAULT_BATCH_FINALIZE_PAUSE_S"


def result_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: derived, so a re-run finalize reuses it."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


def batch_model(lines) -> str:
    """The batch's `model` (OpenAI's "model ID used to process the batch"): the one model
    every line names; "" (null) when the lines name several."""
    models = {line.body.get("model") for line in lines}
    return models.pop() if len(models) == 1 and isinstance(next(iter(models)), str) else ""


class BatchRunner:
    def __init__(self, store: Store, objects, services: dict, registry, concurrency: int,
                 holder: str | None = None, urls: S3Url | None = None, keys=None, lease_s: float = LEASE_S):
        self.store = store
        self.keys = keys  # genapi.keys.KeyChecker: a line may use only the models its owner's key may
        self.objects = objects  # store.LocalObjects or store.S3Objects
        self.urls = urls or S3Url()  # s3:// inputs and the results written beside them
        self.services = services  # LineCodec.service -> servicer
        self.registry = registry
        self.slots = asyncio.Semaphore(concurrency)
        self.node = holder or socket.gethostname()  # stable over restarts: the batch leases' holder
        self.holder = f"{self.node}/{uuid.uuid4().hex[:12]}"  # this process: the line leases' holder
        self.lease_s = lease_s
        self.tasks: dict[str, asyncio.Task] = {}
        self.in_flight: dict[tuple[str, int], asyncio.Task] = {}  # (batch id, line) -> its task
        self.leased_until: dict[tuple[str, int], float] = {}  # (batch id, line) -> its lease's end, as last set
        self._store_down = False  # an outage is logged once, not at every poll
        self.cancels: dict[str, asyncio.Event] = {}
        self._poller: asyncio.Task | None = None
        self._guard: asyncio.Task | None = None
        self.lines_waiting = 0  # batch lines not yet started, over every running batch (a metric)

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll())
        self._guard = asyncio.create_task(self._guard_leases())

    async def stop(self) -> None:
        """Cancels every batch task; lines in flight have no result and run again later."""
        tasks = [t for t in (self._poller, self._guard, *self.tasks.values()) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            try:
                if self.in_flight:
                    await self._renew()
                for batch_id in await asyncio.to_thread(self.store.claim_batches, self.node, self.lease_s, time.time()):
                    self.kick(batch_id)
                if self._store_down:
                    log.info("batches: the store is reachable again")
                self._store_down = False
            except Exception as e:
                if not is_outage(e):
                    log.exception("claiming batches failed")
                elif not self._store_down:
                    log.warning("batches: store unavailable (%s); retrying every %gs", describe(e), POLL_S)
                    self._store_down = True
            await asyncio.sleep(POLL_S)

    async def _renew(self) -> None:
        """Renews the leases of the lines running here; a line whose lease was lost (this
        process stalled past it and another replica took the line) stops here."""
        running = dict(self.in_flight)
        now = time.time()
        lost = await asyncio.to_thread(self.store.renew_lines, self.holder, self.lease_s, now, list(running))
        for key in running:
            if key in self.leased_until:
                self.leased_until[key] = now + self.lease_s
        for key in lost:
            log.warning("batch %s line %d: its lease ran out and another replica took it; stopped here", *key)
            running[key].cancel()

    async def _guard_leases(self) -> None:
        """While the store is unreachable (or too slow) no lease is renewed: a line with
        less than POLL_S of its lease left stops here (it runs again later, here or on
        another replica), so it never runs on two replicas at once. Its own task, which
        makes no store call: a renewal stuck waiting for the store cannot delay it."""
        while True:
            await asyncio.sleep(POLL_S / 4)
            horizon = time.time() + POLL_S
            for key, task in list(self.in_flight.items()):
                if self.leased_until.get(key, horizon) < horizon and not task.done():
                    log.warning("batch %s line %d: its lease cannot be renewed (store unavailable or slow); "
                                "stopped here", *key)
                    task.cancel()

    def kick(self, batch_id: str) -> None:
        """Runs the batch unless it is running already. Its task's log lines carry the
        batch id (not the id of the request that kicked it: a task copies its creator's
        context variables)."""
        if batch_id not in self.tasks:
            self.tasks[batch_id] = asyncio.create_task(self._run(batch_id), context=log_context_of(batch_id))

    def cancel(self, batch_id: str) -> None:
        self.cancels.setdefault(batch_id, asyncio.Event()).set()
        self.kick(batch_id)

    # ---- one batch ---------------------------------------------------------------------
    async def _run(self, batch_id: str) -> None:
        try:
            while (b := await asyncio.to_thread(self.store.get_batch, None, batch_id)) is not None:
                if b.status in ("validating", "finalizing", "cancelling") and not await asyncio.to_thread(
                        self.store.lease_batch, b.id, self.node, self.lease_s, time.time()):
                    return  # another replica validates or finalizes it
                if b.status == "validating":
                    await self._validate(b)
                elif b.status == "in_progress":
                    await self._execute(b)
                elif b.status in ("finalizing", "cancelling"):
                    await self._finish(b)
                else:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, OSError) or is_outage(e):  # storage down
                log.warning("batch %s: storage unavailable (%s); retried in a few seconds", batch_id, describe(e))
            else:
                log.exception("batch %s: runner failed; it is retried at the next poll", batch_id)
            await asyncio.sleep(RETRY_S[-1])
        finally:
            self.tasks.pop(batch_id, None)

    def _input(self, b: BatchRecord) -> tuple[list, list]:
        """The parsed input; FileNotFoundError when it is gone, other errors (storage down)
        propagate and the batch is retried."""
        s3 = b.input_file_id.startswith("s3://")
        data = self.urls.read(b.input_file_id) if s3 else self.objects.read(b.input_file_id)
        return batch_lines.parse_input(data, b.endpoint)

    async def _validate(self, b: BatchRecord) -> None:
        try:
            lines, errors = await asyncio.to_thread(self._input, b)
        except FileNotFoundError:
            lines, errors = [], [{"code": "file_not_found", "message": "The input file was deleted.",
                                  "param": "input_file_id", "line": None}]
        now = int(time.time())
        if errors:
            log.info("batch %s failed validation: %d error(s)", b.id, len(errors))
            await asyncio.to_thread(self.store.transition, b.id, ("validating",), status="failed",
                                    errors=errors, failed_at=now)
            return
        await asyncio.to_thread(self.store.add_batch_lines, b.id, [(ln.line, ln.custom_id, False) for ln in lines])
        # in progress, the batch is every replica's: its own lease is cleared
        await asyncio.to_thread(self.store.transition, b.id, ("validating",), status="in_progress",
                                total=len(lines), in_progress_at=now, model=batch_model(lines),
                                lease_holder=None, lease_until=None)
        log.info("batch %s: %d lines in progress", b.id, len(lines))

    async def _execute(self, b: BatchRecord) -> None:
        """Claims and runs lines until none is left to claim; then moves the batch on (to
        finalizing once every line has a result, cancelling, or expired)."""
        lines, _ = await asyncio.to_thread(self._input, b)
        by_line = {line.line: line for line in lines}
        done = await asyncio.to_thread(self.store.done_custom_ids, b.id)
        await asyncio.to_thread(self.store.add_batch_lines, b.id,  # a batch begun before per-line leases
                                [(ln.line, ln.custom_id, ln.custom_id in done) for ln in lines])
        codec = batch_lines.codec(b.endpoint)
        cancelled = self.cancels.setdefault(b.id, asyncio.Event())
        running: set[asyncio.Task] = set()
        expired = False
        waiting = len(lines) - len(done)
        self.lines_waiting += waiting
        try:
            while not cancelled.is_set() and not (expired := time.time() >= b.expires_at):
                await self.slots.acquire()
                try:  # the slot goes back unless a line's task takes it
                    await self._yield_to_interactive()
                    claimed_at = time.time()
                    if cancelled.is_set() or claimed_at >= b.expires_at:  # while it waited for the slot
                        claimed = None
                    else:
                        claimed = await asyncio.to_thread(self.store.claim_lines, b.id, self.node, self.holder, 1,
                                                          self.lease_s, claimed_at)
                except BaseException:
                    self.slots.release()
                    raise
                if claimed is None:
                    self.slots.release()
                    continue
                if not claimed:
                    self.slots.release()
                    if running:  # ours still run: wait for one, then claim again
                        await asyncio.wait(running, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    now = await asyncio.to_thread(self.store.get_batch, None, b.id)
                    if now is None or now.status != "in_progress" or now.completed + now.failed >= now.total:
                        break
                    await asyncio.sleep(POLL_S)  # the rest is leased to other replicas (theirs may run out)
                    continue
                key = (b.id, claimed[0])
                task = asyncio.create_task(self._run_line(b, codec, by_line[claimed[0]], cancelled))
                self.in_flight[key] = task
                self.leased_until[key] = claimed_at + self.lease_s
                if waiting:
                    waiting -= 1
                    self.lines_waiting -= 1
                task.add_done_callback(lambda _: self.slots.release())
                task.add_done_callback(lambda t, key=key: self._forget(key, t))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                for outcome in await asyncio.gather(*running, return_exceptions=True):
                    if isinstance(outcome, Exception):
                        raise outcome
        except BaseException:  # stopped, or the store failed: no line of ours may run on once released
            for t in running:
                t.cancel()
            if running:
                await asyncio.wait(running, timeout=5)
            raise
        finally:
            self.lines_waiting -= waiting  # those a cancel or the expiry left unstarted
            with contextlib.suppress(Exception):  # lines claimed and stopped: anyone's again at once
                await asyncio.to_thread(self.store.release_lines, b.id, self.holder, time.time())
        now = int(time.time())
        current = await asyncio.to_thread(self.store.get_batch, None, b.id)
        if current is None or current.status != "in_progress":
            return  # cancelled, or moved on by another replica
        if cancelled.is_set():
            await asyncio.to_thread(self.store.transition, b.id, ("in_progress",), status="cancelling",
                                    cancelling_at=now)
        elif expired or time.time() >= b.expires_at:
            if await asyncio.to_thread(self.store.lease_batch, b.id, self.node, self.lease_s, time.time()):
                await self._expire(b)
            else:
                await asyncio.sleep(POLL_S)  # another replica expires it; look again then
        elif current.completed + current.failed >= current.total:
            await asyncio.to_thread(self.store.transition, b.id, ("in_progress",), status="finalizing",
                                    finalizing_at=now)

    def _forget(self, key: tuple[str, int], task: asyncio.Task) -> None:
        if self.in_flight.get(key) is task:
            del self.in_flight[key]
            self.leased_until.pop(key, None)

    async def _yield_to_interactive(self) -> None:
        """Waits while any engine has requests queued for a slot (interactive traffic first)."""
        while any(getattr(sm.engine.stats(), "queued_requests", 0) for sm in self.registry.models.values()):
            await asyncio.sleep(0.02)

    async def _run_line(self, b: BatchRecord, codec, line, cancelled: asyncio.Event) -> None:
        act_as(b.owner, self.keys)  # runs as the batch's owner: stored responses are theirs, its models only
        rid = f"req_{uuid.uuid4().hex}"
        try:
            request = codec.to_request(line.body, rid)
        except LineRejected as e:
            await self._record(b, LineResult(line.custom_id, line.line, False,
                                             batch_lines.response_line(line.custom_id, rid, e.status_code, e.body)))
            return
        for attempt in itertools.count():
            ctx = await EXECUTORS[codec.service](self.services[codec.service], request, rid)
            if ctx.status is None or ctx.status.code not in TRANSIENT:
                break
            if cancelled.is_set() or time.time() >= b.expires_at:
                return  # not a result: the line counts as not run
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
        if ctx.status is None:
            acc = codec.accumulator(line.body)
            for event in ctx.events:
                acc.add(event)
            body = acc.result()
            tokens_in, tokens_out = codec.usage(body)
            await self._record(b, LineResult(line.custom_id, line.line, True,
                                             batch_lines.response_line(line.custom_id, rid, 200, body),
                                             tokens_in, tokens_out))
        else:
            status_code, body = codec.error(ctx.status)
            await self._record(b, LineResult(line.custom_id, line.line, False,
                                             batch_lines.response_line(line.custom_id, rid, status_code, body)))

    async def _record(self, b: BatchRecord, result: LineResult) -> None:
        """Stores a line's result; while the store is unreachable, tries again (a result
        is recorded once: put_result is insert-once), unless the line is stopped."""
        result.holder = result.holder or self.holder
        for attempt in itertools.count():
            try:
                await asyncio.to_thread(self.store.put_result, b.id, result)
                return
            except Exception as e:
                if not is_outage(e):
                    raise
                if attempt == 0:
                    log.warning("batch %s line %d: result not stored yet (%s); retrying", b.id, result.line,
                                describe(e))
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])

    async def _expire(self, b: BatchRecord) -> None:
        """Every line without a result becomes a `batch_expired` error; then the files."""
        lines, _ = await asyncio.to_thread(self._input, b)
        done = await asyncio.to_thread(self.store.done_custom_ids, b.id)
        for line in lines:
            if line.custom_id not in done:
                await self._record(b, LineResult(line.custom_id, line.line, False, batch_lines.unrun_line(
                    line.custom_id, "batch_expired", batch_lines.EXPIRED_MESSAGE)))
        output_id, error_id = await asyncio.to_thread(self._write_files, b)
        await asyncio.to_thread(self.store.transition, b.id, ("in_progress",), status="expired",
                                expired_at=int(time.time()), output_file_id=output_id, error_file_id=error_id)
        log.info("batch %s expired", b.id)

    async def _finish(self, b: BatchRecord) -> None:
        """FINALIZING -> COMPLETED or CANCELLING -> CANCELLED, with the result files."""
        if b.status == "finalizing" and (pause := float(os.environ.get(FINALIZE_PAUSE_ENV, "0") or 0)) > 0:
            await asyncio.sleep(pause)
        # cancelled: lines other replicas still run (they see the cancel when they next
        # claim) finish first, so the files hold every result the counts include
        while b.status == "cancelling" and await asyncio.to_thread(self.store.lines_held, b.id, time.time()):
            await asyncio.sleep(POLL_S / 4)
        output_id, error_id = await asyncio.to_thread(self._write_files, b)
        final, stamp = ("completed", "completed_at") if b.status == "finalizing" else ("cancelled", "cancelled_at")
        await asyncio.to_thread(self.store.transition, b.id, (b.status,), status=final,
                                output_file_id=output_id, error_file_id=error_id, **{stamp: int(time.time())})
        log.info("batch %s %s", b.id, final)

    def _write_files(self, b: BatchRecord) -> tuple[str, str]:
        """Writes the output and error files (atomic; skipped when empty); their ids, or
        for an s3:// input the URLs beside it."""
        ids = []
        for ok, kind in ((True, "output"), (False, "error")):
            data = "".join(r.data + "\n" for r in self.store.results(b.id, ok)).encode()
            if not data:
                ids.append("")
                continue
            if b.input_file_id.startswith("s3://"):
                url = beside(b.input_file_id, kind)
                self.urls.put_once(url, data)
                ids.append(url)
                continue
            file_id = result_file_id(b.id, kind)
            self.objects.put(file_id, [data])
            self.store.put_file(FileRecord(file_id, b.owner, f"{b.id}_{kind}.jsonl", "batch_output", len(data),
                                           int(time.time())))
            ids.append(file_id)
        return ids[0], ids[1]
