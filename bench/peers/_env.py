"""What the harness tells an adapter, through the environment (the same for every peer)."""

from __future__ import annotations

import os
import sys

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")
BACKEND = os.environ.get("BENCH_BACKEND", "redis")  # "redis", "postgres", "rabbitmq", "sqlite"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "")  # a fresh database for each run
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "")  # a fresh virtual host for each run
SQLITE_PATH = os.environ.get("BENCH_SQLITE_PATH", "")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
PYTHON = sys.executable
BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    """A console script of the running virtual environment."""
    return os.path.join(BIN, name)


def use_uvloop() -> None:
    """Run asyncio on uvloop, as the peers' docs recommend for throughput."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is pinned for every asyncio peer
        return
    uvloop.install()
