"""Server time of one fetch and one finish script call by batch size: what a call costs
whatever its size (the part batching spreads) against what each job adds.

On a private redis-server, for each batch size it enqueues that many jobs, fetches them in
one call and finishes them in one call, 40 times, and prints the ``usec`` the server spent
in ``EVALSHA`` (``INFO commandstats``) per call and per job.

    .venv/bin/python bench/batch_cost.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import redis  # noqa: E402
from conveyor._message import Envelope, JobStatus  # noqa: E402
from conveyor.brokers._port import Finish  # noqa: E402
from conveyor.brokers.redis import RedisBroker  # noqa: E402

from redis_server import evalsha_usec, private_redis  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,8,32,100", help="batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    with private_redis() as server:
        admin = redis.Redis(port=server.port)
        broker = RedisBroker(server.url, prefix="bench")
        broker.enqueue([Envelope(id="warm", queue="q", payload=b"x")])
        broker.fetch(["q"], "c", 10, 60.0, 0.0)  # scripts loaded, group made
        print("µs of EVALSHA   fetch: per call  per job   finish: per call  per job")
        for size in (int(s) for s in args.sizes.split(",")):
            fetch = finish = 0.0
            for r in range(args.rounds):
                broker.enqueue([Envelope(id=f"j{size}-{r}-{i}", queue="q", payload=b"x" * 60)
                                for i in range(size)])  # fmt: skip
                before = evalsha_usec(admin)
                got = broker.fetch(["q"], "c", size, 60.0, 0.0)
                fetched = evalsha_usec(admin)
                assert len(got) == size, f"fetched {len(got)} of {size}"
                broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in got])
                fetch += fetched - before
                finish += evalsha_usec(admin) - fetched
            fetch, finish = fetch / args.rounds, finish / args.rounds
            print(f"  batch {size:4d}        {fetch:8.1f} {fetch / size:8.1f}"
                  f"            {finish:8.1f} {finish / size:8.1f}")  # fmt: skip
        empty = evalsha_usec(admin)
        for _ in range(args.rounds):
            broker.fetch(["q"], "c", 32, 60.0, 0.0)
        print(f"  empty fetch      {(evalsha_usec(admin) - empty) / args.rounds:8.1f}")
        broker.close()


if __name__ == "__main__":
    main()
