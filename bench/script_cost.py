"""Server CPU per job of the Redis broker's scripts, old against new, from ``INFO
commandstats``.

On a private redis-server, one broker of this checkout runs each phase with two versions of
the scripts in turn, call by call: this checkout's and those of another copy of the package
(``--old``, e.g. a ``git worktree`` of an earlier commit; their arguments must be the same).
Alternating per call puts the noise of a shared machine on both alike. Per phase it prints
the ``usec`` the server spent in ``EVALSHA`` divided by the jobs:

* ``enqueue single``: one job per call (booked 50 calls at a time); ``enqueue batch``: 200 per call;
* ``fetch (100)``: 100 deliveries per call; ``finish (100)``: 100 outcomes per call.

With ``--events`` both sides are this checkout's scripts, "old" called without events and
"new" with what an app and a worker send (docs/observability.md): a ``job.enqueued`` per
job on enqueue, and on finish each outcome's event and a ``job.started`` per job carried.
Without it, both sides get the same calls without events (a call without events has the
arguments it always had), so ``--old`` may be a checkout from before events.

    git worktree add /tmp/old HEAD~3
    nice .venv/bin/python bench/script_cost.py --old /tmp/old/src
    nice .venv/bin/python bench/script_cost.py --events
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import redis  # noqa: E402
from conveyor._events import job_event  # noqa: E402
from conveyor._message import Envelope, JobStatus  # noqa: E402
from conveyor.brokers._port import Finish  # noqa: E402
from conveyor.brokers.redis import RedisBroker, _scripts  # noqa: E402

from redis_server import evalsha_usec, private_redis  # noqa: E402


def old_source(src: Path, name: str) -> str:
    """A script as the other copy builds it: its own _scripts.py applied to its own files."""
    folder = src / "conveyor" / "brokers" / "redis"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if "def prelude(" in (folder / "_scripts.py").read_text(encoding="utf-8"):
        return _scripts.prelude(body, common) + "\n" + body
    return common + "\n" + body


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
        self.usec: dict[str, float] = {"old": 0.0, "new": 0.0}

    def run(self, which: str, call: object) -> object:
        self.broker._scripts = self.old if which == "old" else self.new
        before = evalsha_usec(self.admin)
        out = call()  # type: ignore[operator]
        self.usec[which] += evalsha_usec(self.admin) - before
        return out


def _event(kind: str, i: int, **fields: object) -> bytes:
    """An event as big as a worker's (task and worker names of ordinary length)."""
    job_id = f"01a24b02256abe210b3e{i:06d}"
    return job_event(kind, 1796554761.578691, job_id, "myapp.tasks:resize_image", "default",
                     worker_id="worker-host-1.12345.a1b2c3", attempt=0, **fields)  # fmt: skip


ENQUEUED = _event("job.enqueued", 0)
STARTED = _event("job.started", 0, deliveries=1)
SUCCEEDED = _event("job.succeeded", 0, duration=0.000123)


def run_once(n: int, old_src: Path | None, events: bool) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    with private_redis() as server:
        admin = redis.Redis(port=server.port)
        broker = RedisBroker(server.url, prefix="bench")
        broker.enqueue([Envelope(id="warm", queue="q", payload=b"x")])
        v = Versions(broker, admin, old_src)

        def phase(name: str, jobs: int, calls: list[tuple[str, object]]) -> list[object]:
            v.usec = {"old": 0.0, "new": 0.0}
            replies = [v.run(which, call) for which, call in calls]
            out[name] = (v.usec["old"] / (jobs / 2), v.usec["new"] / (jobs / 2))
            return replies

        def side(i: int) -> str:
            return "old" if i % 2 == 0 else "new"

        def announced(i: int, n: int) -> list[bytes]:
            """The events side ``i`` sends with ``n`` jobs: none, or one each with --events."""
            return [ENQUEUED] * n if events and side(i) == "new" else []

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
        batches = phase(
            "fetch (100)",
            2 * n,
            [
                (side(i), lambda: broker.fetch(["q"], "c", 100, 60.0, 0.0))
                for i in range(2 * n // 100)
            ],
        )
        fetched = [d for batch in batches for d in batch]  # type: ignore[attr-defined]

        def finish(ds: list, i: int) -> object:
            if not (events and side(i) == "new"):
                return lambda: broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in ds])
            outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r", event=SUCCEEDED) for d in ds]
            return lambda: broker.finish(outcomes, [STARTED] * len(ds))

        phase(
            "finish (100)",
            len(fetched),
            [
                (side(i // 100), finish(fetched[i : i + 100], i // 100))
                for i in range(0, len(fetched), 100)
            ],
        )
        broker.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--old", type=Path, help="src/ of the other copy")
    which.add_argument(
        "--events", action="store_true", help="this copy without events, then with them"
    )
    ap.add_argument("-n", type=int, default=4000, help="jobs per enqueue phase")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs = [run_once(args.n, args.old, args.events) for _ in range(args.reps)]
    sides = "events off → on" if args.events else "old → new"
    print(f"µs of EVALSHA per job, median of {args.reps} ({sides})")
    for name in runs[0]:
        old = statistics.median(r[name][0] for r in runs)
        new = statistics.median(r[name][1] for r in runs)
        print(f"  {name:16s} {old:6.1f} → {new:6.1f}")


if __name__ == "__main__":
    main()
