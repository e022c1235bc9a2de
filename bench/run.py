"""Benchmark Conveyor against its peers and the raw Redis limit, in one interleaved run.

    .venv/bin/python bench/run.py            # full run, writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick    # ~1/10 size smoke run, writes bench/.results/
    .venv/bin/python bench/run.py --backend postgres   # its section of docs/benchmarks.md
    .venv/bin/python bench/run.py --backend rabbitmq   # the machine's RabbitMQ, a vhost per run

Every (repetition, workload, library) is one fresh driver process (``driver.py``) in that
library's interpreter: the project's for Conveyor and the raw limit, ``bench/.venv-peers/<peer>``
for each peer. Libraries take turns within each workload and the order rotates with each
repetition, so slow drifts of the machine spread over everyone. ``--backend`` picks the
server (a private one, started here) and the peers that run on it. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import chart  # noqa: E402
import machine  # noqa: E402
import report  # noqa: E402
from pg_server import private_postgres  # noqa: E402
from rabbitmq_server import private_rabbitmq  # noqa: E402
from redis_server import private_redis  # noqa: E402
from report import KEPT  # noqa: E402

PEERS = report.PEERS["redis"]
LIBS = ["conveyor", "raw", *PEERS]
# Conveyor set up otherwise (conveyor_runner.py), run only when --libs names them: the same
# workloads beside plain Conveyor (events on, no middleware), compared with it in the report.
VARIANTS = report.VARIANTS


@dataclass(frozen=True)
class Workload:
    name: str
    n: int  # full size; --quick takes a tenth
    concurrency: int
    libs: tuple[str, ...]
    backend: str = "redis"
    scaled: bool = True  # --quick takes a tenth
    best: Mapping[str, int] = field(default_factory=dict)  # a library's own concurrency
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # a library's extras
    peer_processes: int = 1  # worker processes per peer (Conveyor always runs one)

    def settings(self, lib: str, override: int | None) -> dict[str, str]:
        """The ``BENCH_*`` variables that set ``lib`` up for this workload."""
        concurrency = override or self.best.get(lib, self.concurrency) or 1
        processes = 1 if lib == "conveyor" or lib in VARIANTS else self.peer_processes
        return {
            "BENCH_CONCURRENCY": str(concurrency),
            "BENCH_PROCESSES": str(processes),
            **self.env.get(lib, {}),
        }


@dataclass(frozen=True)
class Backend:
    """A server the benchmark runs on: its private instance, the peers that run on it, its
    raw limit if it has one, and the workloads it takes (``WORKLOADS`` names their libraries
    for Redis; on another backend the peers are that backend's)."""

    name: str
    server: Any  # () -> a context manager yielding a server with reset/describe/ping_ms
    peers: tuple[str, ...]
    workloads: tuple[str, ...]
    limit: str = ""  # the raw limit's library

    def libs(self) -> list[str]:
        return ["conveyor", *([self.limit] if self.limit else []), *self.peers]

    def adapt(self, w: Workload) -> Workload:
        """``w`` on this backend: Conveyor, its variants and the raw limit as the workload
        names them, then this backend's peers."""
        if self.name == "redis" or w.backend != "redis":
            return w
        ours = tuple(lib for lib in w.libs if lib == "conveyor" or lib in VARIANTS)
        limit = (self.limit,) if self.limit and self.limit in w.libs else ()
        return replace(w, libs=(*ours, *limit, *self.peers), backend=self.name)


def size(w: Workload, quick: bool) -> int:
    return max(w.n // 10, 30) if quick and w.scaled else w.n


# Each library's best concurrency in one worker process for W2-io (jobs that make one Redis
# round trip), from a pilot on this machine: bench/README.md, "Best settings for W2-io".
W2_IO_BEST = {
    "conveyor": 32, "celery": 4, "rq": 1, "dramatiq": 64, "huey": 4, "arq": 256, "saq": 128,
    "taskiq": 16, "streaq": 2,
}  # fmt: skip
ASYNC_POOL = {"conveyor": {"BENCH_CONVEYOR_POOL": "async"}}
ASYNC_PEERS = ("arq", "saq", "taskiq", "streaq")


WORKLOADS = [
    Workload("w1", 10_000, 0, (*LIBS, *VARIANTS)),
    Workload("w1b", 10_000, 0, (*LIBS, *VARIANTS)),
    Workload("w2", 10_000, 32, (*LIBS, *VARIANTS)),
    Workload("w3", 300, 32, ("conveyor", *VARIANTS, *PEERS)),
    Workload("w4", 2_000, 50, ("conveyor", *VARIANTS, *PEERS)),
    Workload("w5", 10_000, 32, ("conveyor", *VARIANTS, "huey"), backend="sqlite"),
    # Jobs that do I/O: one Redis round trip each (W2-io), and 50 at a time waiting 10 ms
    # on a socket (W4-io); see io_job.py. Conveyor's worker is one process throughout.
    Workload("w2-io", 10_000, 8, ("conveyor", *PEERS), best=W2_IO_BEST),
    Workload("w2-io-2p", 10_000, 8, ("conveyor", *PEERS), best=W2_IO_BEST, peer_processes=2),
    Workload("w4-io", 2_000, 50, ("conveyor", "raw", *PEERS)),
    Workload("w4-io-async", 2_000, 50, ("conveyor", "raw", *ASYNC_PEERS), env=ASYNC_POOL),
    Workload("startup", 1, 8, ("conveyor", *PEERS), scaled=False),
]  # fmt: skip

BACKENDS = {
    "redis": Backend("redis", private_redis, tuple(PEERS), tuple(w.name for w in WORKLOADS),
                     limit="raw"),
    "postgres": Backend("postgres", private_postgres, tuple(report.PEERS["postgres"]),
                        ("w1", "w1b", "w2", "w3", "w4")),
    "rabbitmq": Backend("rabbitmq", private_rabbitmq, tuple(report.PEERS["rabbitmq"]),
                        ("w1", "w1b", "w2", "w3", "w4")),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the sizes (smoke run)")
    p.add_argument(
        "--backend", choices=sorted(BACKENDS), default="redis",
        help="the server the run uses (a private one) and the peers that run on it",
    )  # fmt: skip
    p.add_argument("--reps", type=int, default=3, help="repetitions per workload (median)")
    p.add_argument(
        "--libs", default=None,
        help="comma-separated subset (default: Conveyor and the backend's peers); Conveyor's "
        f"variants {', '.join(VARIANTS)} run only when named here",
    )  # fmt: skip
    p.add_argument("--workloads", default=None, help="comma-separated (default: the backend's)")
    p.add_argument("--peers-venv", default=os.path.join(HERE, ".venv-peers"))
    p.add_argument("--timeout", type=float, default=None, help="seconds per run")
    p.add_argument(
        "--concurrency", type=int, default=None, metavar="N",
        help="every library at this concurrency, instead of the workload's (pilots)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="markdown file to write")
    machine.quiet_options(p)
    p.add_argument(
        "--soak", type=int, default=0, metavar="N",
        help="also drain N jobs through one Conveyor worker with a producer running "
        "alongside, sampling its RSS (e.g. 1000000; off by default)",
    )  # fmt: skip
    args = p.parse_args(argv)
    backend = BACKENDS[args.backend]
    args.libs = [x for x in (args.libs or ",".join(backend.libs())).split(",") if x]
    wanted = (args.workloads or ",".join(backend.workloads)).split(",")
    args.workloads = [backend.adapt(w) for w in WORKLOADS if w.name in wanted]
    if unknown := [n for n in wanted if n and n not in backend.workloads]:
        p.error(f"--backend {backend.name} runs {', '.join(backend.workloads)}, not "
                f"{', '.join(unknown)}")  # fmt: skip
    if args.soak:
        soak = Workload("soak", args.soak, 32, ("conveyor",), backend=backend.name, scaled=False)
        args.workloads.append(soak)
    if args.out is None:
        quick = f"benchmarks-{backend.name}-quick.md" if args.backend != "redis" else (
            "benchmarks-quick.md")  # fmt: skip
        args.out = (
            os.path.join(HERE, ".results", quick)
            if args.quick
            else os.path.join(ROOT, "docs", "benchmarks.md")
        )
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 240.0
    return args


class Runner:
    def __init__(self, args: argparse.Namespace, io_addr: str) -> None:
        self.args = args
        self.server_env: dict[str, str] = {}  # names the server's state for the next run
        self.io_addr = io_addr
        status_file = os.path.join(args.peers_venv, "status.json")
        self.install_status: dict[str, str] = {}
        if os.path.exists(status_file):
            with open(status_file) as f:
                self.install_status = json.load(f)

    def python_for(self, lib: str) -> str | None:
        """The library's interpreter: each peer's environment; Conveyor's own (its runtime
        dependencies only, as a user has them) when ``install.py`` made it, else the
        project's; the project's for the raw limit and for Prometheus, an extra."""
        if lib in ("conveyor", "conveyor-noevents"):
            python = os.path.join(self.args.peers_venv, "conveyor", "bin", "python")
            ok = self.install_status.get("conveyor") == "ok" and os.path.exists(python)
            return python if ok else sys.executable
        if lib in ("raw", *VARIANTS):
            return sys.executable
        python = os.path.join(self.args.peers_venv, lib, "bin", "python")
        ok = self.install_status.get(lib, "ok" if os.path.exists(python) else "missing") == "ok"
        return python if ok and os.path.exists(python) else None

    def run_one(self, w: Workload, lib: str) -> dict[str, Any]:
        python = self.python_for(lib)
        if python is None:
            why = self.install_status.get(lib, "peer venv missing (run `make bench`)")
            return {"error": f"not installed: {why}"}
        n = size(w, self.args.quick)
        with tempfile.TemporaryDirectory(prefix=f"bench-{w.name}-{lib}-") as tmp:
            probe_dir = os.path.join(tmp, "probe")
            os.mkdir(probe_dir)
            cfg = {
                "lib": lib,
                "workload": w.name,
                "n": n,
                "timeout": self.args.timeout,
                "probe_dir": probe_dir,
                "log": os.path.join(tmp, "worker.log"),
                "out": os.path.join(tmp, "out.json"),
                "env": {
                    **self.server_env,
                    "BENCH_BACKEND": w.backend,
                    "BENCH_SQLITE_PATH": os.path.join(tmp, "jobs.db"),
                    "BENCH_IO_ADDR": self.io_addr,
                    "BENCH_LIB": lib,  # which of Conveyor's variants conveyor_runner sets up
                    **w.settings(lib, self.args.concurrency),
                },
            }
            cfg_path = os.path.join(tmp, "config.json")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f)
            try:
                proc = subprocess.run(
                    [python, os.path.join(HERE, "driver.py"), cfg_path],
                    cwd=HERE,
                    capture_output=True,
                    check=False,
                    text=True,
                    timeout=self.args.timeout + 120 + (n / 500 if w.name == "soak" else 0),
                )
            except subprocess.TimeoutExpired:
                return {"error": "timeout: the driver did not return"}
            try:
                with open(cfg["out"]) as f:
                    result: dict[str, Any] = json.load(f)
            except (OSError, ValueError):
                tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
                return {"error": f"driver crashed (exit {proc.returncode}): {' | '.join(tail)}"}
            if "error" in result:
                result["worker_log"] = _tail(cfg["log"])
            return result


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"].splitlines()[0][:120]
    if "na" in result:
        return "n/a: " + result["na"]
    if "rate" in result and result["rate"] is not None:
        extra = f", {result['cpu_us']:.0f} µs CPU/job" if result.get("cpu_us") else ""
        return f"{result['rate']:,.0f} jobs/s{extra}"
    if "startup_ms" in result:
        each = ", ".join(f"{t:.0f}" for t in result["startups_ms"])
        cpu = result.get("startup_cpu_ms")
        return f"start-up median {result['startup_ms']:.0f} ms ({each}), CPU {cpu or 0:.0f} ms"
    if "start_p50" in result:
        ms = {k: f"{v:.2f}" if v is not None else "?" for k, v in result.items() if "_p" in k}
        return (
            f"start p50 {ms['start_p50']} ms p99 {ms['start_p99']} ms, "
            f"result p50 {ms['result_p50']} ms"
        )
    return json.dumps(result)[:120]


def flag(result: dict[str, Any]) -> str:
    return f"  † {result['problem']}" if result.get("problem") else ""


def compile_sources() -> None:
    """Byte-compile this checkout's modules (``src/`` and the adapters here), as pip does for
    every installed package: without it, a worker started with ``PYTHONDONTWRITEBYTECODE``
    set compiles Conveyor's source on every start while the peers load their ``.pyc``."""
    for path in (os.path.join(ROOT, "src"), HERE):
        compileall.compile_dir(path, quiet=1, maxlevels=1 if path == HERE else 10)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_sources()
    started = dt.datetime.now(dt.UTC)
    load_before = machine.loadavg()
    records: list[dict[str, Any]] = []
    backend = BACKENDS[args.backend]
    with backend.server() as server, delay_server() as io_addr:
        runner = Runner(args, io_addr)
        gate = machine.QuietGate(args.quiet_below, args.quiet_budget)
        facts = machine.facts(ROOT)
        facts["server"] = server.describe()
        facts["rtt_what"] = server.RTT
        facts["rtt"] = (server.ping_ms(0), server.ping_ms(0.02, n=100))
        print(facts["server"], flush=True)
        for rep in range(args.reps):
            for w in args.workloads:
                if w.name == "soak" and rep > 0:
                    continue  # one long soak is enough; it is not a median
                libs = [lib for lib in w.libs if lib in args.libs]
                shift = rep % len(libs) if libs else 0
                for lib in libs[shift:] + libs[:shift]:
                    runner.server_env = server.reset()
                    busy = gate.wait()
                    load1 = machine.loadavg()[0]
                    t0 = time.monotonic()
                    result = runner.run_one(w, lib)
                    took = time.monotonic() - t0
                    records.append(
                        {"rep": rep, "workload": w.name, "lib": lib, "load1": load1, "busy": busy}
                        | result
                    )
                    print(
                        f"[rep {rep + 1}/{args.reps}] {w.name:<3} {lib:<9} {describe(result)}"
                        f"  ({took:.1f} s){flag(result)}",
                        flush=True,
                    )
    finished = dt.datetime.now(dt.UTC)
    meta = {
        **facts,
        "backend": args.backend,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (finished - started).total_seconds() / 60,
        "load_before": load_before,
        "load_after": machine.loadavg(),
        "gate": (args.quiet_below, gate.waited, args.quiet_budget),
        "mode": "quick (a tenth of the sizes)" if args.quick else "full",
        "reps": args.reps,
        "command": _command(argv),
        "sizes": {w.name: size(w, args.quick) for w in args.workloads},
    }
    raw_path = os.path.join(HERE, ".results", f"{started:%Y%m%dT%H%M%S}.json")
    os.makedirs(os.path.dirname(raw_path), exist_ok=True)
    with open(raw_path, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
    # The chart beside the report: docs/benchmarks.md -> docs/img/benchmarks.svg, when the
    # run has any of the workloads it draws.
    # Only the Redis table is charted; another backend's is a section further down the page.
    stem = os.path.splitext(os.path.basename(args.out))[0]
    charted = {p[0] for p in chart.PANELS} & {w.name for w in args.workloads}
    charted = charted if args.backend == "redis" else set()
    text = report.render(records, meta, chart=f"img/{stem}.svg" if charted else "")
    print()
    print(text)
    write_report(args.out, text, args.backend)
    if charted:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        chart.write(args.out, os.path.join(out_dir, "img", f"{stem}.svg"))
    print(f"\nwrote {os.path.relpath(args.out, ROOT)} and {os.path.relpath(raw_path, ROOT)}")
    return 0


def write_report(path: str, text: str, backend: str) -> None:
    """The Redis run writes the page's head and keeps what follows ``KEPT``; another
    backend's run replaces its own section there (between its markers), or adds it right
    after ``KEPT``, and keeps the rest."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if backend == "redis":
        kept = old[old.index(KEPT) :] if KEPT in old else ""  # other scripts' sections
        new = text + ("\n" + kept if kept else "")
    else:
        new = report.with_section(old, f"bench/run.py --backend {backend}", text)
    with open(path, "w") as f:
        f.write(new)


@contextmanager
def delay_server() -> Iterator[str]:
    """The W4-io delay server in its own process; yields its address. ``delay_server.c``
    compiled here when a C compiler is at hand (one thread, epoll, ~2 µs of CPU a request:
    the waits end on time whatever the queue beside it does), else ``io_job.py serve`` (the
    same answers from Python's asyncio, which at 5,000 requests/s is busy enough itself to
    answer late: 50 bare waiters reached ~0.90 × the ideal against it on a quiet machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, os.path.join(HERE, "io_job.py"), "serve"]
        binary = os.path.join(tmp, "delay_server")
        source = os.path.join(HERE, "delay_server.c")
        try:
            cc = subprocess.run(
                ["cc", "-O2", "-o", binary, source], capture_output=True, check=False
            )
            why = "" if cc.returncode == 0 else cc.stderr.decode()[-200:]
        except OSError as e:  # no compiler
            why = str(e)
        if not why:
            command = [binary]
        else:
            print(f"delay server: Python's, as cc failed: {why!r}", flush=True)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            yield proc.stdout.readline().strip()
        finally:
            proc.kill()
            proc.wait()


def _command(argv: list[str] | None) -> str:
    rest = sys.argv[1:] if argv is None else argv
    if not rest:
        return "make bench  (= .venv/bin/python bench/run.py)"
    return " ".join([".venv/bin/python bench/run.py", *rest])


if __name__ == "__main__":
    sys.exit(main())
