"""Live node names (schema version 4), as a mixin of the SQL store: one row per `[store]
node` that a running core holds, with that core's holder ("node/incarnation") and the
last time it said it is alive (`heartbeat_at`, Unix seconds).

Batch and response leases are keyed by node name, and a core takes back whatever an
earlier incarnation of its node held; two live cores configured with one name would take
each other's lines. So a core claims its name at start: it gets it when no row exists,
the row is its own, or the row's heartbeat is older than the TTL (a core that died). A
name whose heartbeat moves while a starting core watches it belongs to a live core, and
the start is refused.
"""
from __future__ import annotations

import logging
import threading
import time

from .outage import describe, is_outage

log = logging.getLogger("genapi.store")

MIGRATION = """
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL
    )
"""
HEARTBEAT_S = 2.0  # how often a core says it is alive
TTL_S = 10.0  # a name whose heartbeat is older than this is free (its core died)


class NodeNameInUse(Exception):
    """Another live core holds this node name; the text is one line for the operator."""


class NodeNames:
    def node_holder(self, node: str) -> tuple[str, float] | None:
        """(holder, heartbeat_at) of the name's row, or None."""
        rows = self._query("SELECT holder, heartbeat_at FROM nodes WHERE name = ?", (node,))
        return (rows[0][0], rows[0][1]) if rows else None

    def claim_node(self, node: str, holder: str, now: float, ttl_s: float = TTL_S) -> bool:
        """Takes the name for `holder` (and beats its heart) when it is free, its own, or
        its heartbeat is older than `ttl_s`; False when another holder has it."""
        with self._tx() as db:
            cur = db.execute("INSERT INTO nodes (name, holder, heartbeat_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                             "DO UPDATE SET holder = excluded.holder, heartbeat_at = excluded.heartbeat_at "
                             "WHERE nodes.holder = excluded.holder OR nodes.heartbeat_at < ?",
                             (node, holder, now, now - ttl_s))
            return cur.rowcount == 1

    def release_node(self, node: str, holder: str) -> None:
        """Frees the name (a clean stop: the next start takes it at once)."""
        with self._tx() as db:
            db.execute("DELETE FROM nodes WHERE name = ? AND holder = ?", (node, holder))


def take_node_name(store, node: str, holder: str, ttl_s: float = TTL_S, poll_s: float = 0.5) -> None:
    """Claims `node` for `holder` at a core's start. A row held by another holder is
    watched for up to `ttl_s`: once its heartbeat is that old, its core is dead and the
    name is taken over; if the heartbeat moves, raises NodeNameInUse."""
    deadline = time.monotonic() + ttl_s + 2 * poll_s
    first = store.node_holder(node)
    while not store.claim_node(node, holder, time.time(), ttl_s):
        seen = store.node_holder(node)
        if seen is not None and (first is None or seen != first or time.monotonic() > deadline):
            raise NodeNameInUse(f"[store] node {node!r} is in use by another live core ({seen[0]}, heartbeat "
                                f"{max(0.0, time.time() - seen[1]):.0f}s ago): give every core its own node name")
        first = first or seen
        time.sleep(poll_s)


class Heartbeat:
    """A thread that keeps a core's node name alive in the store (every HEARTBEAT_S), and
    frees it at stop. Its own thread: a busy event loop or thread pool cannot delay it past
    the TTL. An outage is one warning (and a line when it is over); a name another core
    took meanwhile (a duplicate name, or this core stalled past the TTL) is logged as an
    error."""

    def __init__(self, store, node: str, holder: str, interval_s: float = HEARTBEAT_S, ttl_s: float = TTL_S):
        self.store, self.node, self.holder = store, node, holder
        self.interval_s, self.ttl_s = interval_s, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genapi-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        down = lost = False
        while not self._stop.wait(self.interval_s):
            try:
                held = self.store.claim_node(self.node, self.holder, time.time(), self.ttl_s)
            except Exception as e:
                if not is_outage(e):
                    log.exception("node %s: heartbeat failed", self.node)
                elif not down:
                    log.warning("node %s: heartbeat: store unavailable (%s); retrying", self.node, describe(e))
                down = True
                continue
            if down:
                log.info("node %s: heartbeat: store reachable again", self.node)
            down = False
            if not held and not lost:
                log.error("[store] node %r is now held by another core (%s): two live cores must not share a "
                          "node name", self.node, (self.store.node_holder(self.node) or ("?",))[0])
            lost = not held

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        try:
            self.store.release_node(self.node, self.holder)
        except Exception as e:  # the store is down: the name frees itself after the TTL
            log.warning("node %s: not released (%s)", self.node, describe(e))
