"""PostgreSQL for tests: a database of the session's own on the machine's server, and private
servers that tests may stop and restart.

The machine's server is ``$CONVEYOR_TEST_POSTGRES`` (a ``postgresql://`` URL to a user who
may create databases), else ``postgresql://postgres@127.0.0.1:5432/postgres`` (trust
auth). The ``postgres_url`` fixture creates one database per test session there
(``conveyor_test_<random>``), and drops it at the end; tests isolate themselves from each
other with a schema of their own (``unique_schema()``, ``?schema=``). Where no server
answers, or psycopg is not installed, the tests that need one are skipped with the reason.
Nothing here ever stops or restarts that server.

``PrivatePostgres(directory)`` is a server of the test's own (Debian's ``initdb`` and
``pg_ctl`` from ``/usr/lib/postgresql/<version>/bin``, run as the ``postgres`` user when
this process is root, since they refuse root), on a free loopback port, which a test may
stop and start under load.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from redis_server import _free_port

if TYPE_CHECKING:
    import psycopg

ADMIN_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unique_schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def _admin_connect(url: str = ADMIN_URL) -> psycopg.Connection[Any]:
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'conveyor[postgres]'")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(
            f"no PostgreSQL server for the tests ({str(exc).strip().splitlines()[0]}): start "
            "one on 127.0.0.1:5432 with trust auth for user postgres, or set "
            "CONVEYOR_TEST_POSTGRES to a postgresql:// URL of a user who may create databases"
        )


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own on the machine's PostgreSQL (dropped after)."""
    admin = _admin_connect()
    name = "conveyor_test_" + uuid.uuid4().hex[:10]
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    """A schema name of this test's own in the session's database, dropped after it."""
    name = unique_schema()
    try:
        yield name
    finally:
        drop_schema(postgres_url, name)


def schema_url(url: str, schema: str | None = None) -> str:
    """``url`` with ``?schema=`` (a new unique one unless given)."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema or unique_schema()}"


def drop_schema(url: str, schema: str) -> None:
    """Drop a test's schema (its tables and functions) from the session's database."""
    conn = _admin_connect(url)
    try:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


def empty_schema(url: str, schema: str) -> None:
    """Delete every row of a test's schema but its migration record (faster than a new
    schema, for tests that build many brokers; ``DELETE`` of a few rows takes a
    millisecond where ``TRUNCATE`` makes new files, 100 ms)."""
    conn = _admin_connect(url)
    try:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> 'meta'",
            (schema,),
        ).fetchall()
        with conn.transaction():  # none before the schema's first broker migrated it
            for (name,) in rows:
                conn.execute(f'DELETE FROM "{schema}"."{name}"')
    finally:
        conn.close()


# -- a private server ------------------------------------------------------------------------


def _binaries() -> Path | None:
    """Debian's newest ``/usr/lib/postgresql/<version>/bin``, else ``pg_ctl``'s on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


class PrivatePostgres:
    """A PostgreSQL server of a test's own: ``stop`` (fast, or immediate as a crash) and
    ``start`` again on the same port and data. Its files are in a new temporary folder
    (pytest's are private to root, which the ``postgres`` user cannot enter)."""

    def __init__(self) -> None:
        bin_dir = _binaries()
        if bin_dir is None:
            pytest.skip("no initdb/pg_ctl (install postgresql) for a private PostgreSQL")
        self.bin = bin_dir
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and pg_ctl refuse root
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            cwd=self.directory,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "server.log"), "-w",
            "-t", "30", "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect everyone, shut down cleanly; ``immediate``: as a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.remove()
