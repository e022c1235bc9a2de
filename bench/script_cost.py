"""Server time per job of the Redis broker's scripts, old against new: the ``usec`` of
``EVALSHA`` in ``INFO commandstats`` (wall-clock, inflated when the machine is loaded) and
the main thread's CPU time (``INFO cpu``: exact, and it counts the server's whole cost of
the call, reading and replying too, plus a small constant for the ``INFO`` calls around it).

On a private redis-server, one broker of this checkout runs each phase with two versions of
the scripts in turn, call by call: this checkout's and those of another copy of the package
(``--old``, e.g. a ``git worktree`` of an earlier commit; their arguments must be the same,
but for finish's outcomes, which each side encodes with its own ``_calls.finish_values``).
Alternating per call puts the noise of a shared machine on both alike. Per phase it prints
both divided by the jobs:

* ``enqueue single``: one job per call (booked 50 calls at a time); ``enqueue batch``: 200 per call;
* ``fetch (100)``: 100 deliveries per call; ``finish (100)``: 100 outcomes per call (``--per-call``
  sets another number: a drain's calls take ~30-70).

With ``--events`` alone both sides are this checkout's scripts, "old" called without events
and "new" with what an app and a worker send (docs/observability.md): a ``job.enqueued`` per
job on enqueue, and on finish each outcome's event and a ``job.started`` per job carried.
With ``--old`` and ``--events`` both versions get those events (the other copy must take
them as this one sends them). With ``--old`` alone, both get the same calls without events
(a call without events has the arguments it always had), so ``--old`` may be a checkout
from before events.

    git worktree add /tmp/old HEAD~3
    nice .venv/bin/python bench/script_cost.py --old /tmp/old/src
    nice .venv/bin/python bench/script_cost.py --events
    nice .venv/bin/python bench/script_cost.py --old /tmp/old/src --events
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import redis  # noqa: E402
from conveyor._events import job_event  # noqa: E402
from conveyor._message import Envelope, JobStatus  # noqa: E402
from conveyor.brokers._port import Finish  # noqa: E402
from conveyor.brokers.redis import RedisBroker, _scripts  # noqa: E402
from conveyor.brokers.redis import broker as broker_module  # noqa: E402
from conveyor.brokers.redis._calls import finish_values  # noqa: E402

from redis_server import evalsha_usec, main_thread_cpu_usec, private_redis  # noqa: E402


def old_source(src: Path, name: str) -> str:
    """A script as the other copy builds it: its own _scripts.py applied to its own files."""
    folder = src / "conveyor" / "brokers" / "redis"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    built = (folder / "_scripts.py").read_text(encoding="utf-8")
    if "def prelude(" in built:
        # A script of its OWN_ARGS takes no head (its arguments differ: compare it only
        # with a copy that sends the same, or with bench/enqueue_one_cost.py).
        own = re.search(r"OWN_ARGS = frozenset\(\{([^}]*)\}\)", built)
        head = not (own and f'"{name}"' in own.group(1))
        return _scripts.prelude(body, common, head=head) + "\n" + body
    return common + "\n" + body


def old_finish_values(src: Path) -> object:
    """The other copy's ``_calls.finish_values`` (how its finish.lua reads an outcome), run
    against this checkout's modules (its relative imports resolve here)."""
    path = src / "conveyor" / "brokers" / "redis" / "_calls.py"
    space = {
        "__name__": "conveyor.brokers.redis._old_calls",
        "__package__": "conveyor.brokers.redis",
    }
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), space)
    return space["finish_values"]


class Versions:
    """Swaps the broker's scripts between "old" and "new" and books server time to each."""

    def __init__(self, broker: RedisBroker, admin: redis.Redis, old_src: Path | None) -> None:
        self.broker, self.admin = broker, admin
        self.new = broker._scripts
        self.old = _scripts.Scripts(broker._client)
        for name in _scripts.NAMES:
            script = self.old[name]
            if (
                old_src is not None
                and (old_src / "conveyor/brokers/redis" / f"{name}.lua").exists()
            ):
                script.script = old_source(old_src, name)  # (a script it lacks: this one's)
            script.sha = admin.script_load(script.script)
        self.values = {
            "old": finish_values if old_src is None else old_finish_values(old_src),
            "new": finish_values,
        }
        self.usec: dict[str, float] = {"old": 0.0, "new": 0.0}
        self.cpu: dict[str, float] = {"old": 0.0, "new": 0.0}

    def run(self, which: str, call: object) -> object:
        self.broker._scripts = self.old if which == "old" else self.new
        before = evalsha_usec(self.admin)
        cpu = main_thread_cpu_usec(self.admin)
        with swapped(broker_module, "finish_values", self.values[which]):
            out = call()  # type: ignore[operator]
        self.cpu[which] += main_thread_cpu_usec(self.admin) - cpu
        self.usec[which] += evalsha_usec(self.admin) - before
        return out


@contextlib.contextmanager
def swapped(module: object, name: str, value: object) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _event(kind: str, i: int, **fields: object) -> bytes:
    """An event as big as a worker's (task and worker names of ordinary length)."""
    job_id = f"01a24b02256abe210b3e{i:06d}"
    return job_event(kind, 1796554761.578691, job_id, "myapp.tasks:resize_image", "default",
                     worker_id="worker-host-1.12345.a1b2c3", attempt=0, **fields)  # fmt: skip


ENQUEUED = _event("job.enqueued", 0)
STARTED = _event("job.started", 0, deliveries=1)
SUCCEEDED = _event("job.succeeded", 0, duration=0.000123)


def run_once(
    n: int, old_src: Path | None, events: bool, per_call: int = 100
) -> dict[str, tuple[float, ...]]:
    """Per phase: EVALSHA µs per job old and new, then server CPU µs per job old and new."""
    out: dict[str, tuple[float, ...]] = {}
    with private_redis() as server:
        admin = redis.Redis(port=server.port)
        broker = RedisBroker(server.url, prefix="bench")
        broker.enqueue([Envelope(id="warm", queue="q", payload=b"x")])
        v = Versions(broker, admin, old_src)

        def phase(name: str, jobs: int, calls: list[tuple[str, object]]) -> list[object]:
            v.usec = {"old": 0.0, "new": 0.0}
            v.cpu = {"old": 0.0, "new": 0.0}
            replies = [v.run(which, call) for which, call in calls]
            half = jobs / 2
            out[name] = (v.usec["old"] / half, v.usec["new"] / half,
                         v.cpu["old"] / half, v.cpu["new"] / half)  # fmt: skip
            return replies

        def side(i: int) -> str:
            return "old" if i % 2 == 0 else "new"

        def evented(i: int) -> bool:
            """Side ``i`` sends events: with --events, "new" only, or both with --old too."""
            return events and (old_src is not None or side(i) == "new")

        def announced(i: int, n: int) -> list[bytes]:
            """The events side ``i`` sends with ``n`` jobs: none, or one each (evented)."""
            return [ENQUEUED] * n if evented(i) else []

        def enqueue(envs: list[Envelope], i: int) -> object:
            return lambda: broker.enqueue(envs, announced(i, len(envs)))

        def singles(at: int) -> object:  # 50 calls of one job, booked together
            return lambda: [
                broker.enqueue([Envelope(f"a{at}-{j}", "q", b"x")], announced(at, 1))
                for j in range(50)
            ]

        phase("enqueue single", n, [(side(i), singles(i)) for i in range(n // 50)])
        phase(
            "enqueue batch",
            n,
            [
                (side(i), enqueue([Envelope(f"b{i}-{j}", "q", b"x") for j in range(200)], i))
                for i in range(n // 200)
            ],
        )
        k = per_call
        batches = phase(
            f"fetch ({k})",
            2 * n // k * k,
            [(side(i), lambda: broker.fetch(["q"], "c", k, 60.0, 0.0)) for i in range(2 * n // k)],
        )
        fetched = [d for batch in batches for d in batch]  # type: ignore[attr-defined]

        def finish(ds: list, i: int) -> object:
            if not evented(i):
                return lambda: broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in ds])
            outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r", event=SUCCEEDED) for d in ds]
            return lambda: broker.finish(outcomes, [STARTED] * len(ds))

        phase(
            f"finish ({k})",
            len(fetched),
            [(side(i // k), finish(fetched[i : i + k], i // k)) for i in range(0, len(fetched), k)],
        )
        broker.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, help="src/ of the other copy")
    ap.add_argument(
        "--events",
        action="store_true",
        help="alone: this copy without events, then with them; with --old: both with them",
    )
    ap.add_argument("-n", type=int, default=4000, help="jobs per enqueue phase")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--per-call", type=int, default=100, help="deliveries per fetch and finish")
    args = ap.parse_args()
    if args.old is None and not args.events:
        ap.error("give --old, --events or both")
    runs = [run_once(args.n, args.old, args.events, args.per_call) for _ in range(args.reps)]
    sides = "events off → on" if args.old is None else "old → new"
    if args.old is not None and args.events:
        sides += ", both with events"
    print(f"µs per job, median of {args.reps} ({sides}):  EVALSHA usec   server CPU")
    for name in runs[0]:
        old, new, cpu_old, cpu_new = (statistics.median(r[name][k] for r in runs) for k in range(4))
        print(f"  {name:16s} {old:6.1f} → {new:6.1f}   {cpu_old:6.1f} → {cpu_new:6.1f}")


if __name__ == "__main__":
    main()
