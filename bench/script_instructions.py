"""Server instructions per job of the Redis broker's fetch and finish scripts, old against
new, counted by callgrind: exact where ``script_cost.py``'s CPU time is not on a shared
machine (what moves a count between rounds of one version is Lua's garbage collector,
which Redis steps every 50 calls, landing in one phase or another: ±2-4k per job).

A private redis-server runs under ``valgrind --tool=callgrind``; per round, each version
(this checkout's scripts and those of ``--old``, as ``script_cost.py`` swaps them) fetches
``--calls`` batches of ``--per-call`` jobs, then finishes them with their events, each
phase between a ``callgrind_control --zero`` and a ``--dump``, so its count is its own.
Prints each phase's instructions per job, per round and the median. Slow (valgrind):
a round of 16 calls of 32 takes ~10 s.

    nice .venv/bin/python bench/script_instructions.py --old /tmp/old/src
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import redis  # noqa: E402
from conveyor._message import Delivery, Envelope, JobStatus  # noqa: E402
from conveyor.brokers._port import Finish  # noqa: E402
from conveyor.brokers.redis import RedisBroker  # noqa: E402
from conveyor.brokers.redis import broker as broker_module  # noqa: E402

from redis_server import find_binary, free_port  # noqa: E402
from script_cost import ENQUEUED, STARTED, SUCCEEDED, Versions, swapped  # noqa: E402


class Counted:
    """redis-server under callgrind; ``count(call)``: the instructions ``call`` costs it."""

    def __init__(self, folder: str) -> None:
        self.port, self.out, self.dumps = free_port(), Path(folder) / "cg.out", 0
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}",
                find_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", folder, "--hz", "1"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start under valgrind") from None
                time.sleep(0.2)

    def _control(self, flag: str) -> None:
        quiet = subprocess.DEVNULL
        argv = ["callgrind_control", flag, str(self.proc.pid)]
        subprocess.run(argv, stdout=quiet, stderr=quiet, check=True)

    def count(self, call: object) -> tuple[object, int]:
        self._control("--zero")
        out = call()  # type: ignore[operator]
        self._control("--dump")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")
        for _ in range(200):  # written by the server's next turn of its event loop
            if dump.exists() and "totals:" in dump.read_text():
                break
            time.sleep(0.05)
        found = re.search(r"^summary: (\d+)", dump.read_text(), re.M)
        assert found is not None, dump
        dump.unlink()
        return out, int(found.group(1))

    def stop(self) -> None:
        with contextlib.suppress(redis.ConnectionError):
            self.client.shutdown(nosave=True)
        self.proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="src/ of the other copy")
    ap.add_argument("--per-call", type=int, default=32, help="deliveries per fetch and finish")
    ap.add_argument("--calls", type=int, default=16, help="calls per phase")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    k, calls = args.per_call, args.calls
    counts: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as folder:
        server = Counted(folder)
        try:
            broker = RedisBroker(f"redis://127.0.0.1:{server.port}/0", prefix="bench")
            v = Versions(broker, server.client, args.old)

            def run(which: str, call: object) -> object:
                """``call`` with ``which`` side's scripts and outcome encoding (not
                ``Versions.run``: its INFO calls would be counted)."""
                broker._scripts = v.old if which == "old" else v.new
                with swapped(broker_module, "finish_values", v.values[which]):
                    return call()  # type: ignore[operator]

            # Round -1 warms up (uncounted): Lua's string table and the first collections
            # grow there, which put ~10-40k per job on whichever phase they fall in.
            for r in range(-1, args.rounds):
                for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    jobs = [Envelope(f"{which}{r}-{i}", "q", b"x" * 40) for i in range(k * calls)]
                    broker.enqueue(jobs, [ENQUEUED] * len(jobs))

                    def fetch() -> list[list[Delivery]]:
                        return [broker.fetch(["q"], "c", k, 60.0, 0.0) for _ in range(calls)]

                    got, n = server.count(lambda w=which: run(w, fetch))
                    if r >= 0:
                        counts.setdefault(("fetch", which), []).append(n / (k * calls))

                    def finish(batches: Any = got) -> None:
                        for ds in batches:
                            done = [
                                Finish(d, JobStatus.SUCCEEDED, b"r", event=SUCCEEDED) for d in ds
                            ]
                            assert all(broker.finish(done, [STARTED] * len(ds)))

                    _, n = server.count(lambda w=which: run(w, finish))
                    if r >= 0:
                        counts.setdefault(("finish", which), []).append(n / (k * calls))
            broker.close()
        finally:
            server.stop()
    print(f"server instructions per job, {k} per call, {calls} calls a phase (old → new):")
    for phase in ("fetch", "finish"):
        old, new = counts[(phase, "old")], counts[(phase, "new")]
        rounds = ", ".join(
            f"{a / 1000:.1f}k → {b / 1000:.1f}k" for a, b in zip(old, new, strict=True)
        )
        median = f"{statistics.median(old) / 1000:.1f}k → {statistics.median(new) / 1000:.1f}k"
        print(f"  {phase:7s} median {median}   rounds: {rounds}")


if __name__ == "__main__":
    main()
