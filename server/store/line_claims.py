"""Per-line leases of batches (schema version 3), as a mixin of the SQL store: several
core replicas run the lines of one batch, each line leased to one of them at a time.

`batch_lines` has one row per input line: its lease (`node`, `holder`, `lease_until`) and
whether it has a result (`done`). A holder is one process ("node/incarnation"); a node is
a replica's stable name, so a restarted replica takes back the lines its previous
incarnation held without waiting for their leases to run out. Claims lock the rows they
take with SKIP LOCKED where the database has it, so two replicas never take the same
line. `batch_line_runs` records every claim (who, from when, the lease as renewed, when
it ended): the evidence that no line ever ran twice at the same time.
"""
from __future__ import annotations

from dataclasses import dataclass

MIGRATION = """
    CREATE TABLE batch_lines (
        batch_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        custom_id TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        node TEXT,
        holder TEXT,
        lease_until DOUBLE PRECISION,
        PRIMARY KEY (batch_id, line)
    );
    CREATE INDEX batch_lines_open ON batch_lines (batch_id, done, line);
    CREATE INDEX batch_lines_holder ON batch_lines (holder, done);
    CREATE TABLE batch_line_runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        batch_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        holder TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    );
    CREATE INDEX batch_line_runs_line ON batch_line_runs (batch_id, line);
    CREATE INDEX batch_line_runs_holder ON batch_line_runs (holder, finished_at)
"""


@dataclass
class LineRun:
    """One claim of a line: it ran from `started_at` until `finished_at` (a result or a
    release) or, when the holder died, at most until `lease_until`. Unix seconds."""

    line: int
    holder: str
    started_at: float
    lease_until: float
    finished_at: float | None

    @property
    def ended_at(self) -> float:
        return self.lease_until if self.finished_at is None else min(self.finished_at, self.lease_until)


def overlapping_runs(runs: list[LineRun]) -> list[tuple[LineRun, LineRun]]:
    """Pairs of claims of one line whose times overlap (a line that ran twice at once);
    [] when every claim began after the one before it ended. An audit of line_runs()."""
    by_line: dict[int, list[LineRun]] = {}
    for r in runs:
        by_line.setdefault(r.line, []).append(r)
    pairs = []
    for claims in by_line.values():
        claims.sort(key=lambda r: r.started_at)
        pairs += [(a, b) for a, b in zip(claims, claims[1:]) if b.started_at < a.ended_at]
    return pairs


class LineClaims:
    def add_batch_lines(self, batch_id: str, lines: list[tuple[int, str, bool]]) -> None:
        """Creates the line rows of a batch ((line, custom_id, done) each); existing rows are
        kept, so every replica may call it."""
        have = self._query("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ?", (batch_id,))[0][0]
        if have >= len(lines):
            return
        with self._tx() as db:
            db.executemany("INSERT INTO batch_lines (batch_id, line, custom_id, done) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (batch_id, line) DO NOTHING",
                           [(batch_id, n, cid, int(done)) for n, cid, done in lines])

    def claim_lines(self, batch_id: str, node: str, holder: str, limit: int, lease_s: float,
                    now: float) -> list[int]:
        """Leases up to `limit` lines without a result of an in-progress batch to `holder`
        until now + lease_s: unleased ones, expired leases, and those of an earlier
        incarnation of `node`. Returns their line numbers (1-based), ascending."""
        with self._tx() as db:
            # Two statements, not `UPDATE ... WHERE line IN (SELECT ... LIMIT n FOR UPDATE
            # SKIP LOCKED)`: PostgreSQL may run such a subquery once per outer row (a
            # semi-join, once the table has statistics), and so claim every open line.
            # The SELECT locks the rows it picks (PostgreSQL); SQLite's transaction is
            # the only writer anyway.
            picked = [r[0] for r in db.execute(
                "SELECT line FROM batch_lines WHERE batch_id = ? AND done = 0 AND "
                "(holder IS NULL OR lease_until < ? OR (node = ? AND holder <> ?)) AND "
                "EXISTS (SELECT 1 FROM batches WHERE id = ? AND status = 'in_progress') "
                f"ORDER BY line LIMIT ?{self._SKIP_LOCKED}",
                (batch_id, now, node, holder, batch_id, limit)).fetchall()]
            lines = sorted(picked)
            if lines:  # the claims these lines had ended now at the latest (ended_at: their lease bounds them)
                marks = ", ".join("?" * len(lines))
                db.execute(f"UPDATE batch_lines SET node = ?, holder = ?, lease_until = ? WHERE batch_id = ? "
                           f"AND line IN ({marks})", (node, holder, now + lease_s, batch_id, *lines))
                db.execute(f"UPDATE batch_line_runs SET finished_at = ? WHERE batch_id = ? AND line IN ({marks}) "
                           "AND finished_at IS NULL", (now, batch_id, *lines))
                db.executemany("INSERT INTO batch_line_runs (batch_id, line, holder, started_at, lease_until) "
                               "VALUES (?, ?, ?, ?, ?)", [(batch_id, n, holder, now, now + lease_s) for n in lines])
        return lines

    def renew_lines(self, holder: str, lease_s: float, now: float,
                    running: list[tuple[str, int]] = ()) -> list[tuple[str, int]]:
        """Extends to now + lease_s the leases `holder` has on the lines it runs (`running`,
        (batch id, line) each; a line it holds but no longer runs just runs out). Returns
        those it no longer holds: another holder took them after the lease ran out (the
        caller stalled), and may even have finished them, so they must stop."""
        lost = []
        with self._tx() as db:
            for batch_id, line in running:
                cur = db.execute("UPDATE batch_lines SET lease_until = ? WHERE batch_id = ? AND line = ? AND "
                                 "holder = ? AND done = 0", (now + lease_s, batch_id, line, holder))
                if cur.rowcount == 1:
                    db.execute("UPDATE batch_line_runs SET lease_until = ? WHERE batch_id = ? AND line = ? AND "
                               "holder = ? AND finished_at IS NULL", (now + lease_s, batch_id, line, holder))
                    continue
                # done or not: another holder that took the line may have finished it already
                rows = db.execute("SELECT holder FROM batch_lines WHERE batch_id = ? AND line = ?",
                                  (batch_id, line)).fetchall()
                if rows and rows[0][0] is not None and rows[0][0] != holder:
                    lost.append((batch_id, line))
        return lost

    def release_lines(self, batch_id: str, holder: str, now: float) -> None:
        """Gives back the lines of the batch `holder` holds without a result (it stopped
        running them), so any replica may claim them at once."""
        with self._tx() as db:
            db.execute("UPDATE batch_lines SET node = NULL, holder = NULL, lease_until = NULL WHERE batch_id = ? "
                       "AND holder = ? AND done = 0", (batch_id, holder))
            db.execute("UPDATE batch_line_runs SET finished_at = ? WHERE batch_id = ? AND holder = ? AND "
                       "finished_at IS NULL", (now, batch_id, holder))

    def lines_held(self, batch_id: str, now: float) -> int:
        """How many lines of the batch are leased (unexpired) and still without a result."""
        return self._query("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND done = 0 AND holder IS NOT NULL "
                           "AND lease_until >= ?", (batch_id, now))[0][0]

    def line_runs(self, batch_id: str) -> list[LineRun]:
        """Every claim of the batch's lines, by line then start."""
        rows = self._query("SELECT line, holder, started_at, lease_until, finished_at FROM batch_line_runs "
                           "WHERE batch_id = ? ORDER BY line, started_at, seq", (batch_id,))
        return [LineRun(r[0], r[1], r[2], r[3], r[4]) for r in rows]
