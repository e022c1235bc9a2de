"""In-task instrumentation, the same for every library (standard library only).

Every benchmark task calls ``hit()`` (or ``started(t_enqueued)``) as its body. The probe
counts calls and keeps, in the process that runs the tasks:

- the wall time of the first start and the last call (drain rate = jobs / (last - first));
- the process CPU time (since the process began: its start-up) and peak RSS at the first
  and at the N-th call (N from
  ``BENCH_PROBE_N``), so CPU per job excludes the worker's start-up; when several worker
  processes share the N jobs, none sees the N-th, and each reports its CPU time since its
  first call and its peak RSS as of its last report (at most 25 ms after its last job);
- for latency jobs, ``now - t_enqueued`` per call;
- for jobs bracketed by ``begin()`` and ``hit(began)``, the most that ran at once;
- the current RSS every N/20 jobs (the soak's memory curve).

A daemon thread writes the state as JSON to ``$BENCH_PROBE_DIR/<pid>.json`` every 25 ms,
and ``hit()`` writes it at once when the N-th call lands. The harness polls those files: no
library's result API and no extra Redis round trip is involved in detecting completion.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time

_INTERVAL = 0.025


class _Probe:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.target = int(os.environ.get("BENCH_PROBE_N", "0"))
        self.dir = os.environ.get("BENCH_PROBE_DIR", "")
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.rss_kb = 0
        self.rss_every = max(self.target // 20, 1)
        self.rss_curve: list[tuple[int, int]] = []  # (jobs done, current RSS kB)
        self.latencies: list[float] = []
        self.running = 0
        self.max_running = 0
        self.dirty = False
        if self.dir:
            threading.Thread(target=self._report, name="bench-probe", daemon=True).start()

    def begin(self) -> float:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        return time.time()

    def hit(self, began: float | None = None, t_enqueued: float | None = None) -> None:
        now = time.time()
        with self.lock:
            if began is None:
                began = now
            else:
                self.running -= 1
            if self.count == 0:
                self.first = began
                self.cpu0 = time.process_time()
            elif began < self.first:
                self.first = began
            self.count += 1
            self.last = now
            if t_enqueued is not None and t_enqueued > 0:
                self.latencies.append(now - t_enqueued)
            self.dirty = True
            count = self.count
            done = count == self.target
            if done:
                self.cpu1 = time.process_time()
                self.rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # The RSS is a file read: outside the lock. Read under it, it released the GIL while
        # holding the lock every N/20 jobs, and a threaded worker's job threads, all calling
        # hit(), fell into a convoy behind it (~2 context switches per job, the worker's CPU
        # per job up to twice): the instrument slowed what it measured.
        if count % self.rss_every == 0:
            rss = _current_rss_kb()
            with self.lock:
                self.rss_curve.append((count, rss))
                self.dirty = True  # written after the count's own report, maybe
        if done:
            self.write()

    def state(self) -> dict[str, object]:
        with self.lock:
            self.dirty = False
            cpu1, rss_kb = self.cpu1, self.rss_kb
            if self.count and not cpu1:  # one of several processes: so far
                cpu1 = time.process_time()
                rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return {
                "pid": self.pid,
                "count": self.count,
                "first": self.first,
                "last": self.last,
                "cpu": cpu1 - self.cpu0 if cpu1 else None,
                "cpu_first": self.cpu0 if self.count else None,  # since the process began
                "rss_kb": rss_kb or None,
                "latencies": list(self.latencies),
                "max_running": self.max_running,
                "rss_curve": sorted(self.rss_curve),  # appended outside hit()'s lock
            }

    def write(self) -> None:
        path = os.path.join(self.dir, f"{self.pid}.json")
        with self.write_lock:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.state(), f)
            os.replace(tmp, path)  # atomic: the harness never reads half a file

    def _report(self) -> None:
        while True:
            time.sleep(_INTERVAL)
            if self.dirty:
                try:
                    self.write()
                except OSError:  # the harness removed the directory: the run is over
                    return


def _current_rss_kb() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:  # not Linux: the peak is the best we have
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


_probe: _Probe | None = None
_probe_lock = threading.Lock()


def _get() -> _Probe:
    # One probe per process, made lazily in the process that runs tasks: a worker that
    # forks children after importing the tasks module gets a fresh probe (and thread) in each.
    global _probe
    probe = _probe
    if probe is None or probe.pid != os.getpid():
        with _probe_lock:
            if _probe is None or _probe.pid != os.getpid():
                _probe = _Probe()
            probe = _probe
    return probe


def begin() -> float:
    """Mark the start of a job that does something (the 10 ms sleep) before ``hit(began)``;
    returns the start time and tracks how many such jobs run at once."""
    return _get().begin()


def hit(began: float | None = None) -> None:
    """Count one job (drain and I/O workloads); ``began`` is what ``begin()`` returned."""
    _get().hit(began)


def started(t_enqueued: float) -> None:
    """Count one latency job; ``t_enqueued`` is the caller's ``time.time()`` before enqueue
    (``0`` marks a warm-up job, counted but not measured)."""
    _get().hit(None, t_enqueued)


def read_all(directory: str) -> list[dict[str, object]]:
    """Every worker process's last report (harness side)."""
    states = []
    for name in os.listdir(directory):
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    states.append(json.load(f))
            except (OSError, ValueError):  # pragma: no cover - replaced while reading
                continue
    return states
