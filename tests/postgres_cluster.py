"""A throw-away PostgreSQL cluster for the tests: Debian's `initdb` and `pg_ctl` (on PATH or
in /usr/lib/postgresql/<version>/bin), a temp directory, a free port on loopback,
password authentication, fsync off (the data is thrown away). Run as the `postgres` user
when the tests run as root (initdb refuses root). One cluster per test session; each
test takes a fresh database of it (`create_database`)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

USER, PASSWORD = "genapi", "pg-test-secret"


def pg_bin() -> Path | None:
    """The directory of initdb and pg_ctl, newest version first; None when absent."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


class Cluster:
    def __init__(self, root: Path, port: int):
        self.bin = pg_bin()
        if self.bin is None:
            raise FileNotFoundError("PostgreSQL's initdb is not installed (Debian: apt-get install postgresql)")
        self.root, self.port = root, port
        self.data, self.sockets = root / "data", root / "sockets"
        self._as = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self._as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> "Cluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            pg = pwd.getpwnam("postgres")
            for p in (self.root, self.sockets, pwfile):
                os.chown(p, pg.pw_uid, pg.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *args: str) -> None:
        # -l: the server's output goes to a file, never to our pipes (run() would wait on them)
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", *args, action)

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def restart(self) -> None:
        """Stops the server (fast: it ends every client connection) and starts it again.
        Not "immediate": with this cluster's synchronous_commit=off, the last commits would
        be lost, which no test here is about."""
        self._pg_ctl("restart", "-m", "fast")

    def crash(self) -> None:
        """An outage: every committed write made durable first (CHECKPOINT: with
        synchronous_commit=off the last commits would be lost otherwise), then the server
        stopped at once (`-m immediate`: no shutdown, connections just break)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        self.stop()

    def resume(self) -> None:
        """Starts the stopped server again on its port (after `crash` or `stop`)."""
        self._pg_ctl("start")

    def stop(self) -> None:
        subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
