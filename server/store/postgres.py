"""The PostgreSQL state store, for several core replicas: psycopg 3 with a connection
pool (psycopg_pool), the tables and migrations of `tables.py`. Differences from SQLite,
kept here: `?` placeholders become `%s`, AUTOINCREMENT keys become identity columns,
migrations take a transaction-scoped advisory lock (replicas starting together migrate
once), and claims lock their rows with FOR UPDATE SKIP LOCKED (READ COMMITTED: a
replica skips the rows another is claiming instead of waiting for them).

Calls are synchronous and short; the core runs them in threads (asyncio.to_thread), each
on a pooled connection, one transaction per call.
"""
from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse

from .tables import SqlTables

# pg_advisory_xact_lock key of migrations: "genapi" in ASCII.
MIGRATE_LOCK = 0x67656E617069
POOL_MAX = 8  # connections per core; the core's to_thread workers are fewer on small hosts


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages and logs: everything between the user
    name and the last `@` (passwords may hold unescaped `/`, `?` or `@`; a URL with an `@`
    further on loses more than its password, never less), and any `password=` query
    parameter."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[:at].split(':', 1)[0]}:***{rest[at:]}"
    return f"{scheme}://" + re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", rest)


def scrub(text: str, url: str) -> str:
    """`text` (an error message about `url`, which drivers may quote whole or in part)
    with the URL redacted and its password, as written or percent-decoded, masked."""
    text = text.replace(url, redact(url))
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if sep and at >= 0 and ":" in rest[:at]:
        password = rest[:at].split(":", 1)[1]
        for form in {password, urllib.parse.unquote(password)}:
            if len(form) >= 3:  # masking "a" would garble every message
                text = text.replace(form, "***")
    return text


def connection_options(timeout_s: float) -> dict:
    """libpq options of every connection: connecting gives up after `timeout_s`, and TCP
    keepalives and tcp_user_timeout end a connection whose server vanished without closing
    it (a network partition, a host down) within a few seconds instead of the kernel's
    minutes, so a call on it fails instead of hanging."""
    seconds = max(1, round(timeout_s))
    return {"connect_timeout": seconds, "keepalives": 1, "keepalives_idle": seconds, "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": int(timeout_s * 1000)}


def pg_sql(sql: str) -> str:
    """A `?`-placeholder statement in psycopg's `%s` style (no literal % or ? in ours)."""
    if "%" in sql:
        raise ValueError("a literal % in a store statement")
    return sql.replace("?", "%s")


class _Row(tuple):
    """A row readable by position and by column name, like sqlite3.Row."""

    def __new__(cls, values, index: dict):
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key):
        return tuple.__getitem__(self, self._index[key] if isinstance(key, str) else key)

    def keys(self):
        return list(self._index)


def _row_factory(cursor):
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


class _Conn:
    """A pooled connection with sqlite3's execute/executemany calling style."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql: str, args=()):
        return self._conn.execute(pg_sql(sql), args)

    def executemany(self, sql: str, rows):
        cur = self._conn.cursor()
        cur.executemany(pg_sql(sql), rows)
        return cur


class PostgresStore(SqlTables):
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, timeout_s: float = 5.0):
        """Opens the pool and migrates; raises psycopg.OperationalError (PoolTimeout is
        one) when the server cannot be reached within `timeout_s`, and ImportError naming
        the extra without psycopg. Afterwards, while the server is down, a call fails
        with OperationalError within about `timeout_s` (store.outage: 503 for clients),
        and the first call once it is back succeeds."""
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ImportError("a postgresql:// [store] url needs psycopg and psycopg_pool: "
                              "pip install 'genapi[postgres]'") from None
        self.url = url
        # psycopg_pool warns at every reconnection attempt (about one a second while the
        # server is down); the store's callers already log the outage once.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        kwargs = connection_options(timeout_s)
        # One plain connection first: a refused connection or a wrong password fails now,
        # with the server's own message, instead of the pool's timeout after retrying.
        psycopg.connect(url, **kwargs).close()
        # check: a pooled connection is tested as it is taken, so one broken by a server
        # restart or failover is replaced instead of failing the call that drew it.
        # reconnect_timeout: the pool's reconnection backs off exponentially (1, 2, 4 s...)
        # until it gives up; bounded by timeout_s, the gap between two attempts stays under
        # a call's wait, and once one gives up the next call starts a fresh attempt at once:
        # after an outage of any length, the first call finds the server again.
        self._pool = ConnectionPool(url, min_size=1, max_size=POOL_MAX, timeout=timeout_s, open=False,
                                    check=ConnectionPool.check_connection, reconnect_timeout=timeout_s,
                                    kwargs={"row_factory": _row_factory, **kwargs}, name="genapi-store")
        self._pool.open(wait=True, timeout=timeout_s)
        try:
            self.migrate()
        except BaseException:
            self._pool.close()
            raise

    @contextlib.contextmanager
    def _tx(self):
        """One transaction on a pooled connection: committed at the end, rolled back on error."""
        with self._pool.connection() as conn:
            yield _Conn(conn)

    def _query(self, sql: str, args=()) -> list:
        with self._pool.connection() as conn:
            return conn.execute(pg_sql(sql), args).fetchall()

    def _ddl(self, statement: str) -> str:
        return statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                 "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")

    def _migrate_lock(self, db) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))

    def close(self) -> None:
        self._pool.close()
