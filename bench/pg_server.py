"""A private PostgreSQL server on a free loopback port, in a temporary directory.

The harness never touches the machine's shared server (5432, where autovacuum may be off and
other work runs): it makes its own with Debian's ``initdb`` and ``pg_ctl`` (run as the
``postgres`` user when this process is root, since they refuse root), with the server's
default settings (``fsync``, ``synchronous_commit`` and autovacuum on) plus
``pg_stat_statements``, gives each run a fresh database, and removes it all at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psycopg


def find_bin() -> str:
    """``$PG_BIN``, else Debian's newest ``/usr/lib/postgresql/<version>/bin``, else the
    directory of ``pg_ctl`` on PATH."""
    explicit = os.environ.get("PG_BIN")
    if explicit:
        return explicit
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    which = shutil.which("pg_ctl")
    if which is None:
        raise RuntimeError("no initdb/pg_ctl: install postgresql, or set PG_BIN")
    return os.path.dirname(which)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    RTT = "PostgreSQL `SELECT 1` round trip (psycopg, median)"  # what ping_ms measures

    def __init__(self) -> None:
        self.bin = find_bin()
        self.dir = tempfile.mkdtemp(prefix="bench-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.admin_url = self.url("postgres")
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, os.path.join(self.bin, tool), *args],
            capture_output=True, text=True, cwd=self.dir, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        self._run(
            "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c max_connections=200 -c shared_preload_libraries=pg_stat_statements"
        )
        self._run(
            "pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"), "-w",
            "-t", "60", "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def fresh_database(self, name: str) -> str:
        """Drop ``name`` if it is there, create it empty; its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def reset(self) -> dict[str, str]:
        """A fresh database for the next run; the ``BENCH_*`` variables that name it."""
        return {"BENCH_POSTGRES_URL": self.fresh_database("bench")}

    def describe(self) -> str:
        i = self.info()
        return (
            f"PostgreSQL {i['server_version']} (private, loopback TCP, a fresh database per "
            f"run; fsync {i['fsync']}, synchronous_commit {i['synchronous_commit']}, "
            f"autovacuum {i['autovacuum']}, shared_buffers {i['shared_buffers']})"
        )

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def info(self) -> dict[str, Any]:
        names = ("server_version", "fsync", "synchronous_commit", "autovacuum",
                 "shared_buffers", "max_connections")  # fmt: skip
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            return {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}  # type: ignore[index]

    def ping_ms(self, gap: float, n: int = 200) -> float:
        """Median ``SELECT 1`` round trip through psycopg, hot (gap 0) or after ``gap`` s
        idle."""
        times = []
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("SELECT 1")
            for _ in range(n):
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter()
                conn.execute("SELECT 1")
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000


def server_pids(data: str) -> list[int]:
    """The processes of the server whose data directory is ``data`` alive now: the
    postmaster and its children (backends, WAL writer, autovacuum, ...)."""
    with open(os.path.join(data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if int(entry) == postmaster or parent == postmaster:
            found.append(int(entry))
    return found


def server_cpu(data: str) -> float:
    """CPU seconds the server's processes alive now have used (``schedstat``: nanoseconds;
    time spent waiting for a CPU is not in it)."""
    total = 0
    for pid in server_pids(data):
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue
    return total / 1e9


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
