"""Where W3's time goes on RabbitMQ: enqueue → start, cut into parts by timestamps taken
inside the producer and the worker (the RabbitMQ broker's own methods, wrapped here).

    .venv/bin/python bench/rabbitmq_latency.py                   # this tree, quorum + classic
    .venv/bin/python bench/rabbitmq_latency.py --tree old=/tmp/old/src --tree new=src --rounds 3

Each round runs every (tree, queue type) once, in a rotating order, on a fresh virtual host
of the machine's RabbitMQ and a flushed private Redis (``rabbitmq_server.py``): one idle
``conveyor worker`` process (32 threads), jobs enqueued one at a time at 50/s, as W3 does.
``--tree NAME=DIR`` runs a source tree (``DIR`` holding the ``conveyor`` package) instead of
the installed one, so an old and a new tree alternate in one run. Prints, per tree and queue
type, the medians over the rounds of each part's per-round median (ms):

- ``write``: ``delay()`` called → the record written in the store (the publish begins);
- ``hop``: → the producer's AMQP loop thread runs the publish (or, with the direct
  publisher, the caller's thread writes the frames);
- ``amqp``: → the worker's AMQP loop thread has the ticket (the client's encoding, RabbitMQ,
  the worker's decoding);
- ``wake``: → the worker's fetching thread is awake;
- ``claim``: → the store's claim returned;
- ``settle``: → the look returned (the tickets settled);
- ``start``: → the task's body runs;
- ``total``: ``delay()`` called → the task's body runs (W3's figure);
- ``confirm``: the publish begins → ``delay()`` returns (the producer's wait for confirms).

``--bare PYTHON`` adds a row ``bare-pika`` per queue type: the floor, the same trip between
two bare pika clients run by ``PYTHON`` (an interpreter with pika installed), in ``amqp``.

A part whose timestamps a tree does not take (its methods have other names) is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RATE = 50.0  # jobs per second, as W3
WARMUP = 20
PARTS = ("write", "hop", "amqp", "wake", "claim", "settle", "start", "total", "confirm")

_marks: dict[str, Any] = defaultdict(list)  # the process's timestamps (appended: thread-safe)


def _wrap(cls: type, name: str, before: Any = None, after: Any = None) -> None:
    """Wrap ``cls.name`` (sync or async) to call ``before(args)`` / ``after(args, result)``."""
    import inspect

    original = getattr(cls, name, None)
    if original is None:
        return
    if inspect.iscoroutinefunction(original):

        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            if before:
                before(args)
            result = await original(*args, **kwargs)
            if after:
                after(args, result)
            return result

        setattr(cls, name, wrapped_async)
    else:

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                before(args)
            result = original(*args, **kwargs)
            if after:
                after(args, result)
            return result

        setattr(cls, name, wrapped)


def _instrument() -> None:
    import contextlib
    import importlib

    from conveyor.brokers.rabbitmq import _core, _link

    _direct: Any = None
    with contextlib.suppress(ImportError):  # a tree without the direct publisher
        _direct = importlib.import_module("conveyor.brokers.rabbitmq._direct")
    now = time.time

    def mark(kind: str) -> Any:
        return lambda a: _marks[kind].append((now(), [i for _, i in a[1]]))

    # producer: the ticket's publish begins (after the record's write, or beside it)
    _wrap(_link.Link, "publish", before=mark("publish"))
    _wrap(_link.Link, "send", before=mark("publish"))
    _wrap(_link.Link, "_publish", before=mark("loop"))
    if _direct is not None:  # the caller's thread writes the frames itself
        _wrap(
            _direct.Direct,
            "send",
            before=lambda a: _marks["loop"].append(
                (now(), [i for _, body in a[1] for i in body.decode().split()])
            ),
        )
    # worker
    _wrap(
        _link.Link,
        "_arrived",
        before=lambda a: _marks["arrived"].append((now(), a[2].body.decode().split())),
    )
    _wrap(_link.Link, "wait", after=lambda a, r: _marks["woke"].append(now()))
    _wrap(_core.Guarded, "look", after=lambda a, r: _marks["claimed"].append((now(), r)))
    _wrap(
        _core.Fetching,
        "look",
        after=lambda a, r: _marks["looked"].append((now(), [d.id for d in r[0]])),
    )


# -- the worker's module (``conveyor worker rabbitmq_latency``) ---------------------------

if os.environ.get("BENCH_TRACE_ROLE") == "worker":
    from conveyor import Conveyor, current_job

    _instrument()
    app = Conveyor(os.environ["BENCH_AMQP_URL"], store=os.environ["BENCH_REDIS_URL"])
    _out = os.environ["BENCH_TRACE_OUT"]
    _starts: dict[str, float] = {}
    _target = int(os.environ["BENCH_TRACE_N"])

    @app.task(name="latency")
    def latency(t: float) -> None:
        _starts[current_job().id] = time.time()
        if len(_starts) == _target:
            threading.Thread(target=_dump, daemon=True).start()

    def _dump() -> None:
        time.sleep(0.2)
        claimed = [
            (t, [d.id for d in r[0]])
            for t, r in list(_marks["claimed"])
            if isinstance(r, tuple) and r and isinstance(r[0], list)
        ]
        data = {
            "starts": _starts,
            "arrived": _marks["arrived"],
            "woke": _marks["woke"],
            "claimed": claimed,
            "looked": _marks["looked"],
        }
        with open(_out + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(_out + ".tmp", _out)


# -- the producer --------------------------------------------------------------------------


def produce(url: str, store: str, n: int, tree: str | None) -> dict[str, Any]:
    from conveyor import Conveyor

    _instrument()
    app = Conveyor(url, store=store)
    task = app.task(name="latency")(lambda t: None)
    rows = []
    try:
        for _ in range(WARMUP):
            task.delay(0.0)
        time.sleep(0.5)
        start = time.perf_counter()
        for i in range(n):
            pause = start + i / RATE - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            t0 = time.time()
            job = task.delay(t0)
            rows.append((job.id, t0, time.time()))
    finally:
        app.close()
    return {"rows": rows, "publish": _marks["publish"], "loop": _marks["loop"]}


def _first(marks: list[Any], job: str) -> float | None:
    for t, ids in marks:
        if job in ids:
            return float(t)
    return None


def parts(prod: dict[str, Any], work: dict[str, Any]) -> dict[str, float]:
    """Each part's median over the measured jobs (ms)."""
    woke = sorted(work["woke"])
    got: dict[str, list[float]] = defaultdict(list)
    for job, t0, returned in prod["rows"]:
        started = work["starts"].get(job)
        if started is None:
            continue
        points = {
            "t0": t0,
            "publish": _first(prod["publish"], job),
            "loop": _first(prod["loop"], job),
            "arrived": _first(work["arrived"], job),
            "claimed": _first(work["claimed"], job),
            "looked": _first(work["looked"], job),
            "started": started,
        }
        if points["arrived"] is not None and points["claimed"] is not None:
            # the fetching thread's wake between the ticket and the claim, if it slept
            wakes = [w for w in woke if points["arrived"] <= w <= points["claimed"]]
            points["woke"] = wakes[0] if wakes else None
        chain = ["t0", "publish", "loop", "arrived", "woke", "claimed", "looked", "started"]
        names = ["write", "hop", "amqp", "wake", "claim", "settle", "start"]
        for name, a, b in zip(names, chain, chain[1:], strict=False):
            if points.get(a) is not None and points.get(b) is not None:
                got[name].append((points[b] - points[a]) * 1000)
        got["total"].append((started - t0) * 1000)
        if points["publish"] is not None:
            got["confirm"].append((returned - points["publish"]) * 1000)
    return {k: statistics.median(v) for k, v in got.items() if v}


def one_run(server: Any, tree: str, queue_type: str, n: int) -> dict[str, float]:
    env_urls = server.reset()
    url = env_urls["BENCH_AMQP_URL"] + ("?queue_type=classic" if queue_type == "classic" else "")
    with tempfile.TemporaryDirectory(prefix="rmq-latency-") as tmp:
        out = os.path.join(tmp, "worker.json")
        path = [tree] if tree else []
        env = dict(os.environ)
        env.update(
            env_urls,
            BENCH_AMQP_URL=url,
            BENCH_TRACE_ROLE="worker",
            BENCH_TRACE_OUT=out,
            BENCH_TRACE_N=str(n + WARMUP),
            PYTHONPATH=os.pathsep.join([*path, HERE]),
        )
        log = open(os.path.join(tmp, "worker.log"), "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "rabbitmq_latency", "--concurrency", "32"],
            cwd=HERE,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            time.sleep(1.5)  # the worker consumes before the first job
            cmd = [sys.executable, __file__, "--produce", url, env_urls["BENCH_REDIS_URL"], str(n)]
            penv = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
            done = subprocess.run(cmd, env=penv, capture_output=True, text=True, check=True)
            prod = json.loads(done.stdout.strip().splitlines()[-1])
            deadline = time.monotonic() + 30
            while not os.path.exists(out):
                if time.monotonic() > deadline:
                    log.flush()
                    with open(os.path.join(tmp, "worker.log")) as f:
                        raise RuntimeError("the worker did not finish: " + f.read()[-2000:])
                time.sleep(0.05)
            with open(out) as f:
                work = json.load(f)
        finally:
            worker.kill()
            worker.wait()
            log.close()
    return parts(prod, work)


# The floor: the same trip between two bare pika clients (``--bare PYTHON``, an interpreter
# with pika, e.g. Dramatiq's peer venv): a blocking consumer in one process, a publisher with
# confirms in another, at 50/s; each delivery's time since its publish began (ms).
BARE = r"""
import json, statistics, sys, threading, time
import pika
url, queue_type, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = {"x-queue-type": queue_type}
mode = 2 if queue_type == "quorum" else 1
got = []
def consume():
    c = pika.BlockingConnection(pika.URLParameters(url))
    ch = c.channel()
    ch.basic_qos(prefetch_count=32)
    ch.queue_declare("bare", durable=True, arguments=args)
    def on(ch, method, props, body):
        got.append(time.time() - float(body))
        ch.basic_ack(method.delivery_tag)
        if len(got) == n + 20:
            ch.stop_consuming()
    ch.basic_consume("bare", on)
    ready.set()
    ch.start_consuming()
ready = threading.Event()
threading.Thread(target=consume, daemon=True).start()
ready.wait()
p = pika.BlockingConnection(pika.URLParameters(url))
ch = p.channel()
ch.confirm_delivery()
start = time.perf_counter()
for i in range(n + 20):
    pause = start + i / 50 - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
    props = pika.BasicProperties(delivery_mode=mode)
    ch.basic_publish("", "bare", str(time.time()).encode(), props)
deadline = time.monotonic() + 10
while len(got) < n + 20 and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps(statistics.median(got[20:]) * 1000))
"""


def bare(server: Any, python: str, queue_type: str, n: int) -> float:
    url = server.reset()["BENCH_AMQP_URL"]
    cmd = [python, "-c", BARE, url, queue_type, str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--types", default="quorum,classic")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("-n", type=int, default=200, help="measured jobs per run")
    p.add_argument("--bare", metavar="PYTHON", help="also time two bare pika clients")
    p.add_argument("--produce", nargs=3, metavar=("URL", "STORE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.produce:
        url, store, n = args.produce
        print(json.dumps(produce(url, store, int(n), None)))
        return 0
    sys.path.insert(0, HERE)
    from rabbitmq_server import private_rabbitmq

    trees = [t.split("=", 1) for t in args.tree] or [["installed", ""]]
    trees = [(name, os.path.abspath(d) if d else "") for name, d in trees]
    combos = [(name, d, qt) for name, d in trees for qt in args.types.split(",")]
    if args.bare:
        combos += [("bare-pika", args.bare, qt) for qt in args.types.split(",")]
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    with private_rabbitmq() as server:
        for r in range(args.rounds):
            shift = r % len(combos)
            for name, d, qt in combos[shift:] + combos[:shift]:
                if name == "bare-pika":
                    got = {"amqp": bare(server, d, qt, args.n)}
                else:
                    got = one_run(server, d, qt, args.n)
                results[(name, qt)].append(got)
                shown = " ".join(f"{k} {got[k]:.2f}" for k in PARTS if k in got)
                print(f"[round {r + 1}] {name:<10} {qt:<8} {shown}", flush=True)
    print("\nmedians over rounds (ms):")
    print(f"{'tree':<10} {'type':<8} " + " ".join(f"{k:>7}" for k in PARTS))
    for (name, qt), runs in results.items():
        cells = []
        for k in PARTS:
            vals = [run[k] for run in runs if k in run]
            cells.append(f"{statistics.median(vals):7.2f}" if vals else f"{'-':>7}")
        print(f"{name:<10} {qt:<8} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
