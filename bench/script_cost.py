"""Server CPU per job of the Redis broker's scripts, old against new, from ``INFO
commandstats``.

On a private redis-server, one broker of this checkout runs each phase with two versions of
the scripts in turn, call by call: this checkout's and those of another copy of the package
(``--old``, e.g. a ``git worktree`` of an earlier commit; their arguments must be the same).
Alternating per call puts the noise of a shared machine on both alike. Per phase it prints
the ``usec`` the server spent in ``EVALSHA`` divided by the jobs:

* ``enqueue single``: one job per call (booked 50 calls at a time); ``enqueue batch``: 200 per call;
* ``fetch (100)``: 100 deliveries per call; ``finish (100)``: 100 outcomes per call.

    git worktree add /tmp/old HEAD~3
    nice .venv/bin/python bench/script_cost.py --old /tmp/old/src
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

    def __init__(self, broker: RedisBroker, admin: redis.Redis, old_src: Path) -> None:
        self.broker, self.admin = broker, admin
        self.new = broker._scripts
        self.old = _scripts.Scripts(broker._client)
        folder = old_src / "conveyor" / "brokers" / "redis"
        for name in _scripts.NAMES:
            if not (folder / f"{name}.lua").exists():
                continue  # a script the other copy does not have: this checkout's serves
            script = self.old[name]
            script.script = old_source(old_src, name)
            script.sha = admin.script_load(script.script)
        self.usec: dict[str, float] = {"old": 0.0, "new": 0.0}

    def run(self, which: str, call: object) -> object:
        self.broker._scripts = self.old if which == "old" else self.new
        before = evalsha_usec(self.admin)
        out = call()  # type: ignore[operator]
        self.usec[which] += evalsha_usec(self.admin) - before
        return out


def run_once(n: int, old_src: Path) -> dict[str, tuple[float, float]]:
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

        def enqueue(envs: list[Envelope]) -> object:
            return lambda: broker.enqueue(envs)

        def singles(at: int) -> object:  # 50 calls of one job, booked together
            return lambda: [broker.enqueue([Envelope(f"a{at}-{j}", "q", b"x")]) for j in range(50)]

        phase("enqueue single", n, [(side(i), singles(i)) for i in range(n // 50)])
        phase(
            "enqueue batch",
            n,
            [
                (side(i), enqueue([Envelope(f"b{i}-{j}", "q", b"x") for j in range(200)]))
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

        def finish(ds: list) -> object:
            return lambda: broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in ds])

        phase(
            "finish (100)",
            len(fetched),
            [(side(i // 100), finish(fetched[i : i + 100])) for i in range(0, len(fetched), 100)],
        )
        broker.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="src/ of the other copy")
    ap.add_argument("-n", type=int, default=4000, help="jobs per enqueue phase")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs = [run_once(args.n, args.old) for _ in range(args.reps)]
    print(f"µs of EVALSHA per job, median of {args.reps} (old → new)")
    for name in runs[0]:
        old = statistics.median(r[name][0] for r in runs)
        new = statistics.median(r[name][1] for r in runs)
        print(f"  {name:16s} {old:6.1f} → {new:6.1f}")


if __name__ == "__main__":
    main()
