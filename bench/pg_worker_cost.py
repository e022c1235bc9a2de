"""The worker's Python work per job on the PostgreSQL broker's side: fetch and finish.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/pg_worker_cost.py --jobs 2000
    .venv/bin/python bench/pg_worker_cost.py --jobs 2000 --profile   # cProfile call counts

Enqueues ``--jobs`` jobs in batches of 1,000 (``--enqueue-only``: only that, the share to
subtract), then fetches them ``--batch`` at a time and finishes each batch as a worker
would (succeeded, with a result and an event), on a fresh schema of ``--url``'s database.
Run two sizes under callgrind, for each tree (``PYTHONPATH``), and divide the difference
by the difference of the sizes: the client's instructions per job (the server's are not
counted: it is another process).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import secrets

from conveyor._message import Envelope, JobStatus
from conveyor.brokers._port import Finish
from conveyor.brokers.postgres import PostgresBroker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/pgw_cost")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--enqueue-only", action="store_true", help="what to subtract")
    args = parser.parse_args()
    schema = "c" + secrets.token_hex(4)
    broker = PostgresBroker(f"{args.url}?schema={schema}")
    try:
        for start in range(0, args.jobs, 1000):
            n = min(1000, args.jobs - start)
            broker.enqueue(
                [Envelope(id=secrets.token_hex(8), queue="q", payload=b"x" * 40) for _ in range(n)]
            )
        if args.enqueue_only:
            return
        profile = cProfile.Profile() if args.profile else None
        if profile:
            profile.enable()
        done = 0
        while done < args.jobs:
            got = broker.fetch(["q"], "c", args.batch, 30.0, 0.0)
            if not got:
                break
            outcomes = [Finish(d, JobStatus.SUCCEEDED, b"\x91\xc0", event=b"e" * 60) for d in got]
            assert all(broker.finish(outcomes))
            done += len(got)
        if profile:
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        assert done == args.jobs, done
    finally:
        with broker._db.connection() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        broker.close()


if __name__ == "__main__":
    main()
