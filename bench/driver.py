"""Run one workload for one library, in that library's interpreter; standard library only.

    python bench/driver.py CONFIG.json

The orchestrator (``run.py``) writes CONFIG with ``lib``, ``workload``, ``n``, ``concurrency``,
``redis_url``, ``sqlite_path``, ``probe_dir``, ``log``, ``timeout`` and ``out``; the driver
writes one JSON object to ``out``: the measured figures, or ``{"na": reason}`` or
``{"error": message}``.

An adapter is a module (``conveyor_runner``, ``raw`` or ``peers.<name>``) with:

- ``DIST``: the distribution whose version is reported;
- ``worker_argv(workload) -> list[str] | None``: the worker command (run with cwd ``bench/``
  and ``BENCH_*`` variables in its environment), or None when the library cannot run the
  workload (reported as n/a with ``NA_REASON``);
- ``Client`` with ``enqueue(kind, arg)``, optionally ``enqueue_bulk(kind, args)``,
  ``result(handle, timeout)`` and ``close()``; all coroutines for an asyncio library;
- optionally ``run_custom(workload, cfg) -> dict | None`` to measure a workload itself
  (the raw Redis limits do);
- optionally ``DONE_STATUS``: the library keeps no return values, and ``result`` gives the
  job's final status instead, which the result check compares with this;
- optionally ``NA_RESULT_WAIT``: why the library has no call that waits for a job (W3's
  enqueue→result is then n/a; ``result`` only reads the job's status).

Task kinds are ``noop(i)``, ``sleep(i)`` (10 ms), ``latency(t_enqueued)``, and the I/O
kinds of ``io_job``: ``incr(i)`` (one Redis round trip) and ``wait(i)`` (10 ms on a socket).
``BENCH_PROCESSES`` (default 1) worker processes share a drain: the worker command is started
that many times, each with its own ``worker_argv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import probe

BULK_BATCH = 1000
SOAK_BACKLOG = 20_000  # the soak's producer stays at most this far ahead of the worker
WARMUP_JOBS = 5
RESULT_SAMPLES = 20
LATENCY_RATE = 50.0  # jobs per second in W3
RESULT_WAIT = 10.0  # seconds a W3 caller waits for one result
STARTUP_SPAWNS = 5  # worker start-ups timed per run; the run reports their median
# The task each drain workload runs (W5 is W2 on SQLite).
DRAIN_KIND = {"w2": "noop", "w5": "noop", "w4": "sleep", "w2-io": "incr", "w2-io-2p": "incr",
              "w4-io": "wait", "w4-io-async": "wait"}  # fmt: skip
HERE = os.path.dirname(os.path.abspath(__file__))


def load_adapter(lib: str) -> Any:
    if lib == "conveyor" or lib.startswith("conveyor-"):  # BENCH_LIB names the variant
        return importlib.import_module("conveyor_runner")
    return importlib.import_module("raw" if lib == "raw" else f"peers.{lib}")


class Driver:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.n: int = cfg["n"]
        self.adapter = load_adapter(cfg["lib"])
        client_cls = getattr(self.adapter, "Client", None)
        self.is_async = inspect.iscoroutinefunction(getattr(client_cls, "enqueue", None))
        self.client: Any = None

    # -- calling sync and async clients alike -------------------------------------------

    async def call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.client, name)
        return await fn(*args) if self.is_async else fn(*args)

    async def open(self) -> None:
        self.client = self.adapter.Client()
        if hasattr(self.client, "open"):
            await self.call("open")

    async def close(self) -> None:
        if self.client is not None and hasattr(self.client, "close"):
            await self.call("close")

    async def enqueue_each(self, kind: str, args: list[Any]) -> list[Any]:
        enqueue = self.client.enqueue
        if self.is_async:
            return [await enqueue(kind, a) for a in args]
        return [enqueue(kind, a) for a in args]

    async def enqueue_bulk(self, kind: str, args: list[Any]) -> list[Any]:
        bulk = self.client.enqueue_bulk
        handles: list[Any] = []
        for i in range(0, len(args), BULK_BATCH):
            chunk = args[i : i + BULK_BATCH]
            handles.extend(await bulk(kind, chunk) if self.is_async else bulk(kind, chunk))
        return handles

    async def prefill(self, kind: str, n: int) -> list[Any]:
        """Queue n jobs before the worker starts (untimed): bulk where the library has it."""
        args = list(range(n))
        if hasattr(self.client, "enqueue_bulk"):
            return await self.enqueue_bulk(kind, args)
        return await self.enqueue_each(kind, args)

    # -- the worker process ----------------------------------------------------------------

    def start_worker(
        self, workload: str, target: int, probe_dir: str | None = None
    ) -> list[subprocess.Popen[bytes]]:
        """``BENCH_PROCESSES`` instances of the library's worker command."""
        env = dict(os.environ)
        env.update(
            BENCH_PROBE_DIR=probe_dir or self.cfg["probe_dir"],
            BENCH_PROBE_N=str(target),
            PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
        )
        log = open(self.cfg["log"], "ab")  # noqa: SIM115 - the children own it
        procs = []
        for _ in range(int(os.environ.get("BENCH_PROCESSES", "1"))):
            argv = self.adapter.worker_argv(workload)
            procs.append(
                subprocess.Popen(
                    argv, cwd=HERE, env=env, stdout=log, stderr=log, start_new_session=True
                )
            )
        return procs

    @staticmethod
    def stop_worker(procs: list[subprocess.Popen[bytes]]) -> None:
        """Kill each worker's whole process group: the figures are in, and a graceful stop
        would only cost time (each run starts on a flushed Redis anyway)."""
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()

    async def wait_probe(
        self,
        procs: list[subprocess.Popen[bytes]],
        target: int,
        timeout: float,
        probe_dir: str | None = None,
    ) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            states = probe.read_all(probe_dir or self.cfg["probe_dir"])
            count = sum(int(s["count"]) for s in states)
            if count >= target:
                return merge_states(states)
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited with code {proc.returncode} after {count} jobs"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {target} jobs done after {timeout:.0f} s")
            await asyncio.sleep(0.002 if target == 1 else 0.01)

    async def check_results(self, handles: list[Any], expected: list[Any]) -> str | None:
        """Results are stored: fetch a spread sample through the library's result API.
        Returns what was wrong (the figures are kept and the cell is marked), or None."""
        step = max(1, len(handles) // RESULT_SAMPLES)
        for i in [*range(0, len(handles), step), len(handles) - 1]:
            try:
                value = await self.call("result", handles[i], 30)
            except Exception as exc:
                return f"job {i}: no result ({type(exc).__name__}: {exc})"[:300]
            if value != getattr(self.adapter, "DONE_STATUS", expected[i]):
                return f"job {i}: result {value!r}, expected {expected[i]!r}: {handles[i]!r:.400}"
        return None

    # -- workloads -------------------------------------------------------------------------

    async def w1(self) -> dict[str, Any]:
        args = list(range(self.n))
        t0 = time.perf_counter()
        await self.enqueue_each("noop", args)
        return {"rate": self.n / (time.perf_counter() - t0)}

    async def w1b(self) -> dict[str, Any]:
        if not hasattr(self.client, "enqueue_bulk"):
            return {"na": "no bulk enqueue API"}
        args = list(range(self.n))
        t0 = time.perf_counter()
        await self.enqueue_bulk("noop", args)
        return {"rate": self.n / (time.perf_counter() - t0)}

    async def drain(self, workload: str, kind: str) -> dict[str, Any]:
        """W2, W4, W5: queue n jobs, then start one worker process and time first start to
        last finish from the jobs' own timestamps."""
        if self.adapter.worker_argv(workload) is None:
            return {"na": getattr(self.adapter, "NA_REASON", {}).get(workload, "unsupported")}
        handles = await self.prefill(kind, self.n)
        procs = self.start_worker(workload, self.n)
        try:
            state = await self.wait_probe(procs, self.n, self.cfg["timeout"])
            problem = await self.check_results(handles, list(range(self.n)))
        finally:
            self.stop_worker(procs)
        span = state["last"] - state["first"]
        slots = int(os.environ.get("BENCH_CONCURRENCY", "0"))
        if kind in ("sleep", "wait") and slots and state["max_running"] > slots:
            problem = f"{state['max_running']} jobs ran at once, concurrency was {slots}"
        return {
            "rate": self.n / span if span > 0 else None,
            "cpu_us": state["cpu"] * 1e6 / self.n if state["cpu"] is not None else None,
            "rss_mb": state["rss_kb"] / 1024 if state["rss_kb"] else None,
            "span": span,
            "max_running": state["max_running"] or None,
            "problem": problem,
        }

    async def w3(self) -> dict[str, Any]:
        """Idle worker, jobs at ~50/s (open loop); enqueue->start from the task's probe,
        enqueue->result as seen by the caller through the library's result API."""
        if self.adapter.worker_argv("w3") is None:
            return {"na": getattr(self.adapter, "NA_REASON", {}).get("w3", "unsupported")}
        procs = self.start_worker("w3", WARMUP_JOBS + self.n)
        waits: list[Any] = []
        pool = ThreadPoolExecutor(64)  # more than can be pending at 50/s
        loop = asyncio.get_running_loop()

        no_wait = getattr(self.adapter, "NA_RESULT_WAIT", None)

        async def waiter(handle: Any, t0: float) -> float | str:
            if no_wait:
                return "n/a"
            try:
                if self.is_async:
                    await self.client.result(handle, RESULT_WAIT)
                else:
                    await loop.run_in_executor(pool, self.client.result, handle, RESULT_WAIT)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}".rstrip(": ")
            return time.time() - t0

        try:
            warm = await self.enqueue_each("latency", [0.0] * WARMUP_JOBS)
            for h in warm:
                await self.call("result", h, 60)
            await self.wait_probe(procs, WARMUP_JOBS, 60)
            await asyncio.sleep(0.5)  # the worker is idle now
            start = time.perf_counter()
            for i in range(self.n):
                pause = start + i / LATENCY_RATE - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                t0 = time.time()
                handle = await self.call("enqueue", "latency", t0)
                waits.append(asyncio.ensure_future(waiter(handle, t0)))
            outcomes = await asyncio.gather(*waits)
            state = await self.wait_probe(procs, WARMUP_JOBS + self.n, 30)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self.stop_worker(procs)
        result_lat = [x for x in outcomes if isinstance(x, float)]
        failed = [x for x in outcomes if isinstance(x, str) and x != "n/a"]
        out: dict[str, Any] = {}
        for name, values in (("start", state["latencies"]), ("result", result_lat)):
            for p in (50, 95, 99):
                out[f"{name}_p{p}"] = percentile(values, p) * 1000 if values else None
        if no_wait:
            out["result_na"] = no_wait
        if failed:
            out["problem"] = (
                f"{len(failed)} of {self.n} result waits failed (left out of the "
                f"percentiles), e.g. {failed[0]}"
            )[:300]
        return out

    async def startup(self) -> dict[str, Any]:
        """Worker spawn -> first job started, ``STARTUP_SPAWNS`` times: a job is queued, the
        worker command is started, and the time runs from just before the spawn to the
        job's start as the task notes it (``time.time()`` on both sides). Also the CPU time
        the process that runs the job had used by then (its whole start-up, steadier than
        the wall time on a loaded machine)."""
        if self.adapter.worker_argv("startup") is None:
            return {"na": getattr(self.adapter, "NA_REASON", {}).get("startup", "unsupported")}
        took, cpu = [], []
        for k in range(STARTUP_SPAWNS):
            probe_dir = os.path.join(self.cfg["probe_dir"], str(k))
            os.mkdir(probe_dir)
            await self.enqueue_each("noop", [k])
            t0 = time.time()
            procs = self.start_worker("startup", 1, probe_dir)
            try:
                state = await self.wait_probe(procs, 1, 60, probe_dir)
            finally:
                self.stop_worker(procs)
            took.append(state["first"] - t0)
            if state["cpu_first"] is not None:
                cpu.append(state["cpu_first"])
        return {
            "startup_ms": percentile(took, 50) * 1000,
            "startup_cpu_ms": percentile(cpu, 50) * 1000 if cpu else None,
            "startups_ms": [t * 1000 for t in took],
        }

    async def soak(self) -> dict[str, Any]:
        """The worker runs while a producer keeps a bounded backlog, n jobs in all; the
        probe samples the worker's RSS every n/20 jobs."""
        procs = self.start_worker("soak", self.n)
        bulk = hasattr(self.client, "enqueue_bulk")
        try:
            sent = 0
            while sent < self.n:
                if sent - self.done_count() > SOAK_BACKLOG:
                    if procs[0].poll() is not None:
                        raise RuntimeError(f"worker exited with code {procs[0].returncode}")
                    await asyncio.sleep(0.05)
                    continue
                args = list(range(sent, min(self.n, sent + BULK_BATCH)))
                await (self.enqueue_bulk if bulk else self.enqueue_each)("noop", args)
                sent += len(args)
            state = await self.wait_probe(procs, self.n, self.cfg["timeout"])
        finally:
            self.stop_worker(procs)
        curve = [(n, kb / 1024) for n, kb in state["rss_curve"]]
        span = state["last"] - state["first"]
        return {
            "rate": self.n / span if span > 0 else None,
            "cpu_us": state["cpu"] * 1e6 / self.n if state["cpu"] is not None else None,
            "rss_mb": state["rss_kb"] / 1024 if state["rss_kb"] else None,
            "rss_curve": curve,
        }

    def done_count(self) -> int:
        return sum(int(s["count"]) for s in probe.read_all(self.cfg["probe_dir"]))

    async def run(self) -> dict[str, Any]:
        workload = self.cfg["workload"]
        custom = getattr(self.adapter, "run_custom", None)
        if custom is not None:
            return custom(workload, self.cfg)
        await self.open()
        try:
            if workload == "w1":
                return await self.w1()
            if workload == "w1b":
                return await self.w1b()
            if workload == "w3":
                return await self.w3()
            if workload == "soak":
                return await self.soak()
            if workload == "startup":
                return await self.startup()
            return await self.drain(workload, DRAIN_KIND[workload])
        finally:
            await self.close()


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    live = [s for s in states if s["count"]]
    cpus = [s["cpu"] for s in live if s["cpu"] is not None]
    rss = [s["rss_kb"] for s in live if s["rss_kb"]]
    return {
        "first": min(s["first"] for s in live),
        "max_running": max(s.get("max_running", 0) for s in live),
        "last": max(s["last"] for s in live),
        "cpu": sum(cpus) if cpus else None,
        "cpu_first": min((s["cpu_first"] for s in live if s.get("cpu_first")), default=None),
        "rss_kb": sum(rss) if rss else None,
        "latencies": [x for s in live for x in s["latencies"]],
        "rss_curve": sorted(p for s in live for p in s.get("rss_curve", [])),
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def versions(adapter: Any) -> dict[str, str]:
    """The library's version and its database client's, as installed in this interpreter."""
    found = {}
    clients = ("redis", "hiredis", "coredis", "psycopg", "psycopg-binary", "asyncpg", "kombu",
               "amqp", "pika", "aio-pika")  # fmt: skip
    for dist in (adapter.DIST, *clients, "uvloop", "msgspec"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    os.environ.update(cfg.get("env", {}))
    try:
        driver = Driver(cfg)
        result = asyncio.run(driver.run())
        result["versions"] = versions(driver.adapter)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:800], "trace": traceback.format_exc()}
    with open(cfg["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
