"""Facts about the machine and the code under test, for the report."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _git(root: str, *args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def facts(root: str) -> dict[str, Any]:
    commit = _git(root, "rev-parse", "--short", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "src")
    mem = _mem_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram": f"{mem:.1f} GiB" if mem else "?",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "commit": commit + (" (src has uncommitted changes)" if dirty not in ("", "?") else ""),
    }


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds (every process on the machine)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    spent = total1 - total0
    return 1.0 - (idle1 - idle0) / spent if spent else 0.0


class QuietGate:
    """Before each run, wait (within a total budget) until the rest of the machine is quiet.

    Between runs the harness itself is idle (its worker was killed, its Redis is empty), so
    what keeps the CPUs busy then is somebody else: a shared machine's test suites. Waiting
    for them keeps their load out of the figures; the budget keeps a busy machine from
    stalling the benchmark, and each run records how busy the machine was when it started.
    """

    def __init__(self, threshold: float, budget: float) -> None:
        self.threshold = threshold
        self.budget = budget
        self.waited = 0.0

    def wait(self) -> float:
        """Block until quiet (or out of budget); return the busy fraction at the start."""
        while True:
            busy = cpu_busy()
            if busy <= self.threshold or self.waited >= self.budget:
                return busy
            time.sleep(2.0)
            self.waited += 2.5


def quiet_options(parser: argparse.ArgumentParser) -> None:
    """``--quiet-below`` and ``--quiet-budget``: a ``QuietGate``'s settings."""
    parser.add_argument(
        "--quiet-below", type=float, default=0.25, metavar="FRACTION",
        help="before each run, wait until the machine's CPUs are at most this busy",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-budget", type=float, default=600, metavar="SECONDS",
        help="total time all those waits may take (0: never wait)",
    )  # fmt: skip
