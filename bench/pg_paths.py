"""The PostgreSQL broker's hot paths, each migration's functions against the newest's.

    .venv/bin/python bench/pg_paths.py [--rounds 20] [--single 50] [--batch 1000]

On a private server (``pg_server.py``: fsync and synchronous_commit on, ``pg_stat_statements``
loaded), one database holds two schemas: ``old``, migrated only as far as the migration
``--old`` names (default: the one before the newest), and ``new``, migrated to the newest.
A broker on each runs the same operations, alternated in rounds so that the machine's load
falls on both alike:

* ``enqueue 1`` then ``claim 1`` (``fetch`` of one job), ``--single`` times a round: the two
  commits a job waits for between ``delay()`` and its start (W3's path; the ``new``
  broker's connections set ``conveyor.claim_commit`` to ``--claim-commit``, ``async``; any
  other value also sets ``?worker_commit=sync``, which schema version 5 needs to wait);
* ``enqueue batch``: ``--batch`` jobs without keys or dependencies, one event each (W1b's
  path), once a round; the jobs are then claimed and finished, untimed.

Printed: the median wall time of each operation on each schema and their ratio, and the
server's time in the statement (``pg_stat_statements``, per call: the function's work,
without the commit's wait for the disk).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import psycopg
from conveyor._message import Envelope, JobStatus, new_job_id
from conveyor.brokers._port import Finish
from conveyor.brokers.postgres import PostgresBroker, _schema

from pg_server import private_postgres

OPS = ("enqueue 1", "claim 1", "enqueue batch")


def _open(url: str, schema: str, version: int, query: str = "") -> PostgresBroker:
    """A broker on ``schema``, migrated to ``version`` only; ``query``: more URL options."""
    migrations, newest = _schema.MIGRATIONS, _schema.SCHEMA_VERSION
    _schema.MIGRATIONS, _schema.SCHEMA_VERSION = migrations[:version], version
    try:
        return PostgresBroker(f"{url}?schema={schema}{query}")
    finally:
        _schema.MIGRATIONS, _schema.SCHEMA_VERSION = migrations, newest


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _round(broker: PostgresBroker, single: int, batch: int, times: dict[str, list[float]]) -> None:
    for _ in range(single):
        envelope = [Envelope(new_job_id(), "w3", b"p")]
        t0 = time.perf_counter()
        broker.enqueue(envelope, [b"e" * 60])
        t1 = time.perf_counter()
        got = broker.fetch(["w3"], "c", 1, 60, 0)
        times["enqueue 1"].append(t1 - t0)
        times["claim 1"].append(time.perf_counter() - t1)
        broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=60) for d in got])
    envs = [Envelope(new_job_id(), "w1b", b"p" * 40) for _ in range(batch)]
    times["enqueue batch"].append(_timed(lambda: broker.enqueue(envs, [b"e" * 60] * batch)))
    while done := broker.fetch(["w1b"], "c", 500, 60, 0):
        broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=60) for d in done])


def _server_ms(url: str, schema: str) -> dict[str, float]:
    """Mean server time per call of the broker's functions on ``schema``, by function."""
    sql = """SELECT query, sum(total_exec_time) / sum(calls) FROM pg_stat_statements
             WHERE query LIKE %s GROUP BY query"""
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for query, ms in conn.execute(sql, (f'%"{schema}".%',)).fetchall():
            for name in ("enqueue", "fetch", "finish"):
                if f'"{schema}".{name}(' in query:
                    out[name] = float(ms)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--single", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--old", type=int, default=_schema.SCHEMA_VERSION - 1)
    parser.add_argument("--claim-commit", default="async", help="conveyor.claim_commit of new")
    args = parser.parse_args()
    newest = _schema.SCHEMA_VERSION
    with private_postgres() as server:
        url = server.fresh_database("paths")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        claim = f"&options=-c%20conveyor.claim_commit%3D{args.claim_commit}"
        if args.claim_commit != "async":  # since version 5 the claim is async unless told
            claim += "&worker_commit=sync"
        brokers = {"old": _open(url, "old", args.old), "new": _open(url, "new", newest, claim)}
        times: dict[str, dict[str, list[float]]] = {n: {op: [] for op in OPS} for n in brokers}
        for broker in brokers.values():  # warm up: plans cached, tables touched
            _round(broker, 5, 100, {op: [] for op in OPS})
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        for _ in range(args.rounds):
            for name, broker in brokers.items():
                _round(broker, args.single, args.batch, times[name])
        server_ms = {name: _server_ms(url, name) for name in brokers}
        for broker in brokers.values():
            broker.close()
        print(server.describe())
    print(
        f"migration {args.old} (old) against {newest} (new, conveyor.claim_commit "
        f"{args.claim_commit}), {args.rounds} alternated rounds"
    )
    for op in OPS:
        old, new = (statistics.median(times[n][op]) * 1000 for n in ("old", "new"))
        print(f"  {op:<14} median old {old:8.3f} ms  new {new:8.3f} ms  new/old {new / old:.2f}")
    for fn in ("enqueue", "fetch", "finish"):
        old_ms, new_ms = server_ms["old"].get(fn, 0.0), server_ms["new"].get(fn, 0.0)
        print(f"  server time per {fn:<8} call: old {old_ms:.3f} ms  new {new_ms:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
