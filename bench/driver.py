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
  (the raw Redis limits do).

Task kinds are ``noop(i)``, ``sleep(i)`` (10 ms) and ``latency(t_enqueued)``.
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

    def start_worker(self, workload: str, target: int) -> subprocess.Popen[bytes]:
        argv = self.adapter.worker_argv(workload)
        env = dict(os.environ)
        env.update(
            BENCH_PROBE_DIR=self.cfg["probe_dir"],
            BENCH_PROBE_N=str(target),
            PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
        )
        log = open(self.cfg["log"], "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(
            argv, cwd=HERE, env=env, stdout=log, stderr=log, start_new_session=True
        )

    @staticmethod
    def stop_worker(proc: subprocess.Popen[bytes]) -> None:
        """Kill the worker's whole process group: the figures are in, and a graceful stop
        would only cost time (each run starts on a flushed Redis anyway)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    async def wait_probe(self, proc: subprocess.Popen[bytes], target: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            states = probe.read_all(self.cfg["probe_dir"])
            count = sum(int(s["count"]) for s in states)
            if count >= target:
                return merge_states(states)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {proc.returncode} after {count} jobs")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {target} jobs done after {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def check_results(self, handles: list[Any], expected: list[Any]) -> str | None:
        """Results are stored: fetch a spread sample through the library's result API.
        Returns what was wrong (the figures are kept and the cell is marked), or None."""
        step = max(1, len(handles) // RESULT_SAMPLES)
        for i in [*range(0, len(handles), step), len(handles) - 1]:
            try:
                value = await self.call("result", handles[i], 30)
            except Exception as exc:
                return f"job {i}: no result ({type(exc).__name__}: {exc})"[:300]
            if value != expected[i]:
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
        proc = self.start_worker(workload, self.n)
        try:
            state = await self.wait_probe(proc, self.n, self.cfg["timeout"])
            problem = await self.check_results(handles, list(range(self.n)))
        finally:
            self.stop_worker(proc)
        span = state["last"] - state["first"]
        slots = int(os.environ.get("BENCH_CONCURRENCY", "0"))
        if kind == "sleep" and slots and state["max_running"] > slots:
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
        proc = self.start_worker("w3", WARMUP_JOBS + self.n)
        waits: list[Any] = []
        pool = ThreadPoolExecutor(64)  # more than can be pending at 50/s
        loop = asyncio.get_running_loop()

        async def waiter(handle: Any, t0: float) -> float | str:
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
            await self.wait_probe(proc, WARMUP_JOBS, 60)
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
            state = await self.wait_probe(proc, WARMUP_JOBS + self.n, 30)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self.stop_worker(proc)
        result_lat = [x for x in outcomes if isinstance(x, float)]
        failed = [x for x in outcomes if isinstance(x, str)]
        out: dict[str, Any] = {}
        for name, values in (("start", state["latencies"]), ("result", result_lat)):
            for p in (50, 95, 99):
                out[f"{name}_p{p}"] = percentile(values, p) * 1000 if values else None
        if failed:
            out["problem"] = (
                f"{len(failed)} of {self.n} result waits failed (left out of the "
                f"percentiles), e.g. {failed[0]}"
            )[:300]
        return out

    async def soak(self) -> dict[str, Any]:
        """The worker runs while a producer keeps a bounded backlog, n jobs in all; the
        probe samples the worker's RSS every n/20 jobs."""
        proc = self.start_worker("soak", self.n)
        bulk = hasattr(self.client, "enqueue_bulk")
        try:
            sent = 0
            while sent < self.n:
                if sent - self.done_count() > SOAK_BACKLOG:
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited with code {proc.returncode}")
                    await asyncio.sleep(0.05)
                    continue
                args = list(range(sent, min(self.n, sent + BULK_BATCH)))
                await (self.enqueue_bulk if bulk else self.enqueue_each)("noop", args)
                sent += len(args)
            state = await self.wait_probe(proc, self.n, self.cfg["timeout"])
        finally:
            self.stop_worker(proc)
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
            kind = "sleep" if workload == "w4" else "noop"
            return await self.drain(workload, kind)
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
    """The library's version and its Redis client's, as installed in this interpreter."""
    found = {}
    for dist in (adapter.DIST, "redis", "hiredis", "coredis", "uvloop", "msgspec"):
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
