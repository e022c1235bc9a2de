"""One no-op job's Python on a job thread, alone in one thread and without a broker: its
started event, ``run_here`` (the current job, the call, the result's encoding), the
outcome's ``Finish`` and its event. The worker's hand-offs (``Inflight``, the finisher)
are left out: ``bench/profile_drain.py --memory`` has them.

    .venv/bin/python bench/job_path.py                    # CPU µs per job, 3 x 100,000 jobs
    .venv/bin/python bench/job_path.py --src /tmp/old/src # another checkout's worker
    # instructions per job, exact whatever the load: the difference of two counts
    for n in 2000 12000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/job_path.py -n $n --reps 1 2>&1 | grep Collected; done
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--src", default=os.path.join(HERE, "..", "src"), help="the checkout's src")
    args = ap.parse_args()
    sys.path.insert(0, args.src)

    from conveyor._clock import SystemClock
    from conveyor._codec import Codec
    from conveyor._message import Delivery, Message
    from conveyor.worker._attempt import Attempt, Result, Results
    from conveyor.worker._events import WorkerEvents
    from conveyor.worker._outcome import Outcomes
    from conveyor.worker._threads import run_here

    codec = Codec()
    results = Results(codec, 1 << 20)
    outcomes = Outcomes(codec, SystemClock(), random.random)
    events = WorkerEvents("w1", SystemClock())
    message = Message(id="j1", task="noop", args=[1])
    delivery = Delivery("j1", "default", codec.encode_message(message), "token", 1)
    finished: list[object] = []

    def noop(i: int) -> int:
        return i

    def done(attempt: Attempt, result: Result) -> None:
        finished.append(events.outcome(attempt, outcomes.finish(attempt, result)))

    def report(attempt: Attempt, value: float, note: str | None) -> None:
        pass

    def jobs(n: int) -> None:
        for _ in range(n):
            attempt = Attempt(delivery)
            attempt.message, attempt.fn = message, noop
            attempt.began = time.monotonic()
            events.started(attempt, wake=False)
            run_here(attempt, results, done, report)
            if len(finished) >= 100:
                finished.clear()
                events.carry(lambda taken: None)

    def measure() -> None:
        jobs(1000)  # warm
        for _ in range(args.reps):
            began = time.process_time()
            jobs(args.n)
            print(f"{(time.process_time() - began) / args.n * 1e6:.2f} µs CPU per job")

    # On another thread, as a worker's jobs run: the main thread (app.drain) takes the
    # attempt's first lock with ``with`` (~1,100 instructions more), against a Ctrl-C.
    thread = threading.Thread(target=measure)
    thread.start()
    thread.join()


if __name__ == "__main__":
    main()
