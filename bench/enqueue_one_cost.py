"""Server CPU per call of ``enqueue_one.lua`` (a plain ``task.delay()``), two copies of the
package against each other: each copy's script, sent the arguments that copy sends (its
own, or common.lua's head and its own: bench/script_cost.py can compare only copies whose
arguments are the same).

On a private redis-server, batches of 50 calls are pipelined (so the round trip's cost,
which is the same for both, does not drown the script's), old and new alternated batch by
batch; per side, the medians over the batches of the server's main-thread CPU (``INFO
cpu``: it counts reading each request and writing its reply too) and of the ``EVALSHA``
usec of ``INFO commandstats``, per call. Each call carries a ``job.enqueued`` event as an
app sends it (``--no-events``: none); the job's stream exists (its first job, which makes
it, is a rarer path).

    git worktree add --detach /tmp/old main
    nice .venv/bin/python bench/enqueue_one_cost.py --old /tmp/old/src [--batches 200]
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import redis  # noqa: E402
from conveyor._events import job_event  # noqa: E402
from conveyor.brokers._eventlog import frame  # noqa: E402
from conveyor.brokers.redis import _scripts  # noqa: E402

from redis_server import evalsha_usec, main_thread_cpu_usec, private_redis  # noqa: E402

BATCH = 50


def own_args(src: Path) -> bool:
    """The copy's enqueue_one.lua takes arguments of its own (``_scripts.OWN_ARGS``)."""
    built = (src / "conveyor/brokers/redis/_scripts.py").read_text(encoding="utf-8")
    found = re.search(r"OWN_ARGS = frozenset\(\{([^}]*)\}\)", built)
    return bool(found and '"enqueue_one"' in found.group(1))


def script(src: Path) -> str:
    """enqueue_one.lua as that copy builds it (this copy's ``prelude`` on its files)."""
    folder = src / "conveyor/brokers/redis"
    common = _scripts.CONSTANTS + (folder / "common.lua").read_text(encoding="utf-8")
    body = (folder / "enqueue_one.lua").read_text(encoding="utf-8")
    return _scripts.prelude(body, common, head=not own_args(src)) + "\n" + body


def call(sha: str, prefix: str, i: int, own: bool, events: bool) -> list[object]:
    """One EVALSHA as that copy's broker sends it, for a job of ordinary size."""
    job_id = f"01a24b02256abe210b3e{i:06d}"
    tag = "{" + prefix + "}:"
    head = [""] if own else ["", "conveyor", tag + "job:", tag + "done:"]
    args = [*head, "default", job_id, b"x" * 150, 0, "0"]
    if events:
        event = job_event("job.enqueued", 1796554761.578691, job_id, "myapp.tasks:resize_image",
                          "default", priority=0)  # fmt: skip
        args += [100_000, frame(event)]
    return ["EVALSHA", sha, 1, tag + "queues", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the other copy's src folder")
    ap.add_argument("--batches", type=int, default=200, help="batches of 50 calls per side")
    ap.add_argument("--no-events", action="store_true")
    opts = ap.parse_args()
    sides = {"old": opts.old, "new": HERE.parent / "src"}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    usec: dict[str, list[float]] = {s: [] for s in sides}
    numbers = itertools.count()
    with private_redis() as server:
        c = redis.Redis(port=server.port)
        shas = {s: c.script_load(script(src)) for s, src in sides.items()}
        owns = {s: own_args(src) for s, src in sides.items()}
        for s in sides:  # made by the queue's first job (enqueue.lua): not timed here
            c.xgroup_create("{" + s + "}:q:default:s0", "conveyor", "0", mkstream=True)
        for b in range(opts.batches):
            for s in ("old", "new") if b % 2 == 0 else ("new", "old"):
                pipe = c.pipeline(transaction=False)
                for _ in range(BATCH):
                    pipe.execute_command(
                        *call(shas[s], s, next(numbers), owns[s], not opts.no_events)
                    )
                u0, c0 = evalsha_usec(c), main_thread_cpu_usec(c)
                replies = pipe.execute()
                c1, u1 = main_thread_cpu_usec(c), evalsha_usec(c)
                assert replies == [-1] * BATCH, replies[:3]
                cpu[s].append((c1 - c0) / BATCH)
                usec[s].append((u1 - u0) / BATCH)
    print(f"µs per call, medians of {opts.batches} batches of {BATCH}: server CPU, EVALSHA usec")
    for s in sides:
        print(f"  {s}  {statistics.median(cpu[s]):6.2f}  {statistics.median(usec[s]):6.2f}")


if __name__ == "__main__":
    main()
