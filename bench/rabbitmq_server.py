"""The machine's RabbitMQ, a fresh virtual host per run, and a private Redis beside it.

RabbitMQ is shared and the harness neither starts nor stops it: each run gets a virtual host
of its own (``rabbitmqctl add_vhost``, the user's permissions on it), deleted before the next
run's is made and at the end, so no library meets another's queues or leftover messages.
``$BENCH_RABBITMQ`` names the server, else ``amqp://guest:guest@127.0.0.1:5672``. Results
and records (Celery's and Dramatiq's result backends, Conveyor's record store) go to a
private ``redis-server`` (``redis_server.py``), flushed between runs.

The round trip is timed with a few AMQP 0-9-1 frames over a socket (``Basic.Qos`` →
``Qos-Ok`` on an open channel), so the harness itself needs no AMQP client.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import struct
import subprocess
import time
import urllib.parse
from collections.abc import Iterator

from redis_server import RedisServer

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672"


def _short(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("B", len(raw)) + raw


class AmqpPing:
    """Just enough AMQP 0-9-1 to open a channel and time a method's round trip."""

    def __init__(self, host: str, port: int, user: str, password: str, vhost: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(0, 10, 10)  # Connection.Start
        auth = f"\0{user}\0{password}".encode()
        start_ok = (
            struct.pack(">I", 0) + _short("PLAIN") + struct.pack(">I", len(auth)) + auth
            + _short("en_US")
        )  # fmt: skip
        self.send(0, 10, 11, start_ok)
        tune = self.expect(0, 10, 30)
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", tune[:8])
        self.send(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))  # no heartbeats
        self.send(0, 10, 40, _short(vhost) + _short("") + b"\0")
        self.expect(0, 10, 41)  # Connection.Open-Ok
        self.send(1, 20, 10, _short(""))
        self.expect(1, 20, 11)  # Channel.Open-Ok

    def send(self, channel: int, cls: int, method: int, args: bytes) -> None:
        payload = struct.pack(">HH", cls, method) + args
        self.sock.sendall(struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce")

    def expect(self, channel: int, cls: int, method: int) -> bytes:
        """The next frame's method arguments; it must be ``cls.method`` on ``channel``."""
        while True:
            while len(self.buf) < 7 or len(self.buf) < 8 + struct.unpack(">I", self.buf[3:7])[0]:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("RabbitMQ closed the connection (wrong credentials?)")
                self.buf += chunk
            kind, got_channel, size = struct.unpack(">BHI", self.buf[:7])
            payload, self.buf = self.buf[7 : 7 + size], self.buf[8 + size :]
            if kind == 8:  # a heartbeat
                continue
            got = struct.unpack(">HH", payload[:4])
            if kind != 1 or got_channel != channel or got != (cls, method):
                raise ConnectionError(f"RabbitMQ answered {got} on channel {got_channel}")
            return payload[4:]

    def round_trip(self) -> float:
        t0 = time.perf_counter()
        self.send(1, 60, 10, struct.pack(">IHB", 0, 0, 0))  # Basic.Qos
        self.expect(1, 60, 11)
        return time.perf_counter() - t0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(0, 10, 50, struct.pack(">H", 200) + _short("") + struct.pack(">HH", 0, 0))
        self.sock.close()


class RabbitServer:
    RTT = "RabbitMQ `Basic.Qos` round trip on an open channel (median)"

    def __init__(self, url: str = "") -> None:
        self.base = (url or os.environ.get("BENCH_RABBITMQ", DEFAULT_URL)).rstrip("/")
        parts = urllib.parse.urlsplit(self.base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5672
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")
        self.redis = RedisServer()
        self.vhost = ""
        self.made = 0

    def start(self) -> None:
        self.redis.start()

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def drop_vhost(self) -> None:
        if self.vhost:
            self.ctl("delete_vhost", self.vhost)
            self.vhost = ""

    def fresh_vhost(self) -> str:
        """The previous run's virtual host deleted, a new one made; its URL."""
        self.drop_vhost()
        self.made += 1
        vhost = f"conveyor-bench-{os.getpid()}-{self.made}"
        self.ctl("add_vhost", vhost)
        self.vhost = vhost
        self.ctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")
        return f"{self.base}/{urllib.parse.quote(vhost, safe='')}"

    def reset(self) -> dict[str, str]:
        """A fresh virtual host and an empty Redis for the next run; the ``BENCH_*``
        variables that name them."""
        return {"BENCH_AMQP_URL": self.fresh_vhost(), **self.redis.reset()}

    def describe(self) -> str:
        version = self.ctl("version")
        redis_version = self.redis.info().get("redis_version", "?")
        return (
            f"RabbitMQ {version} (the machine's, loopback TCP, a fresh virtual host per run); "
            f"results and records in Redis {redis_version} (private, no persistence)"
        )

    def ping_ms(self, gap: float, n: int = 200) -> float:
        """Median ``Basic.Qos`` round trip, hot (gap 0) or after ``gap`` s idle."""
        self.fresh_vhost()
        ping = AmqpPing(self.host, self.port, self.user, self.password, self.vhost)
        try:
            ping.round_trip()
            times = []
            for _ in range(n):
                if gap:
                    time.sleep(gap)
                times.append(ping.round_trip())
        finally:
            ping.close()
        return statistics.median(times) * 1000

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.drop_vhost()
        self.redis.stop()


@contextlib.contextmanager
def private_rabbitmq() -> Iterator[RabbitServer]:
    server = RabbitServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
