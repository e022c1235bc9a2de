"""Facts about the machine and the code under test, for the report."""

from __future__ import annotations

import os
import platform
import subprocess
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


def facts(root: str, redis_info: dict[str, Any]) -> dict[str, Any]:
    commit = _git(root, "rev-parse", "--short", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "src")
    mem = _mem_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram": f"{mem:.1f} GiB" if mem else "?",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis": f"{redis_info.get('redis_version', '?')} (private, loopback TCP, no persistence)",
        "commit": commit + (" (src has uncommitted changes)" if dirty not in ("", "?") else ""),
    }
