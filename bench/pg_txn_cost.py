"""What an enqueue inside the caller's transaction adds to that transaction, on PostgreSQL.

    .venv/bin/python bench/pg_txn_cost.py [--transactions 2000]

On a private server (``pg_server.py``, ``pg_stat_statements`` loaded), the application is a
role of its own (``shop``, granted what docs/postgres.md lists) and the broker runs as
``postgres``; so the statements ``pg_stat_statements`` counts for ``shop`` are exactly
those of the caller's connection. The same loop runs twice, alternated in rounds: a
transaction that inserts one order (the baseline), and one that inserts an order and
enqueues a job through the same connection (``task.options(connection=conn).delay()``).
Printed: the statements per transaction of each, by text, of both roles; the connection's
first-use check (once per connection); and the median wall time per transaction of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import psycopg
from conveyor import Conveyor

from pg_server import private_postgres

GRANTS = """
CREATE ROLE shop LOGIN;
CREATE TABLE public.orders (id bigint PRIMARY KEY, total numeric NOT NULL);
GRANT SELECT, INSERT ON public.orders TO shop;
GRANT USAGE ON SCHEMA conveyor TO shop;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA conveyor TO shop;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA conveyor TO shop;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA conveyor TO shop;
CREATE EXTENSION pg_stat_statements;
"""
_COUNTS = """
SELECT r.rolname, s.query, sum(s.calls)::bigint
FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY r.rolname, s.query ORDER BY r.rolname, sum(s.calls) DESC
"""


def counts(admin: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    rows = admin.execute(_COUNTS).fetchall()
    return [(role, " ".join(q.split())[:110], n) for role, q, n in rows
            if "pg_stat_statements" not in q]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transactions", type=int, default=2000, help="of each kind")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    with private_postgres() as server:
        url = server.fresh_database("txn")
        app = Conveyor(url)

        @app.task(name="send_receipt")
        def send_receipt(order_id: int) -> None: ...

        send_receipt.delay(0)  # the schema is made on first use, before the grants
        admin = psycopg.connect(url, autocommit=True)
        admin.execute(GRANTS)
        shop = psycopg.connect(url.replace("postgres@", "shop@"))
        next_id = iter(range(1, 10**9))

        def order(enqueue: bool) -> float:
            t0 = time.perf_counter()
            with shop.transaction():
                order_id = next(next_id)
                shop.execute("INSERT INTO orders (id, total) VALUES (%s, 9.5)", (order_id,))
                if enqueue:
                    send_receipt.options(connection=shop).delay(order_id)
            return time.perf_counter() - t0

        admin.execute("SELECT pg_stat_statements_reset()")
        order(True)  # the connection's first use: its check
        first = counts(admin)
        per_round = args.transactions // args.rounds
        times: dict[bool, list[float]] = {False: [], True: []}
        found: dict[bool, list[tuple[str, str, int]]] = {False: [], True: []}
        for kind in (False, True):  # counted apart
            admin.execute("SELECT pg_stat_statements_reset()")
            for _ in range(per_round):
                order(kind)
            found[kind] = counts(admin)
        for _ in range(args.rounds):  # timed, alternated
            for kind in (False, True):
                times[kind].extend(order(kind) for _ in range(per_round))
        shop.close()
        admin.close()
        app.close()
    print("First use of a connection (its check, then the transaction), statements:")
    for role, query, n in first:
        print(f"  {role:<8} {n:>5}  {query}")
    for kind, title in ((False, "order only"), (True, "order + delay(connection=conn)")):
        print(f"{title}: statements per transaction ({per_round} transactions)")
        for role, query, n in found[kind]:
            print(f"  {role:<8} {n / per_round:>5.2f}  {query}")
    base, with_job = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"median wall time per transaction: order only {base * 1000:.3f} ms, with the "
        f"enqueue {with_job * 1000:.3f} ms ({with_job / base:.2f}×), "
        f"{len(times[False])} of each, alternated in {args.rounds} rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
