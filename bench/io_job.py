"""The I/O that the I/O workloads' job bodies do, the same for every library (stdlib only).

- ``incr()`` / ``aincr()`` (W2-io): one Redis ``INCR`` round trip to the benchmark's private
  redis-server, over the job's own connection (one per thread, or a small pool per event
  loop), in plain RESP: the body costs every library the same few microseconds, whatever
  Redis client its environment has.
- ``wait()`` / ``await_()`` (W4-io): one request to the delay server, which answers each
  request ``DELAY`` seconds after it arrived: a job that waits 10 ms on a socket, the way a
  job waits on a slow HTTP service or database.

The delay server runs in its own process, started by ``run.py``::

    python bench/io_job.py serve        # prints "127.0.0.1:PORT", serves until killed

The addresses come from the environment: ``BENCH_REDIS_URL`` and ``BENCH_IO_ADDR``. The
task bodies (``incr_job``, ``wait_job`` and their asyncio twins) add the probe's bookkeeping:
every adapter's ``incr`` and ``wait`` tasks are one call to them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import probe

DELAY = 0.010  # seconds the delay server waits before answering
_INCR = b"*2\r\n$4\r\nINCR\r\n$8\r\nbench:io\r\n"
_WAIT = b"w\n"


def _redis_addr() -> tuple[str, int]:
    parts = urlsplit(os.environ["BENCH_REDIS_URL"])
    return parts.hostname or "127.0.0.1", parts.port or 6379


def _delay_addr() -> tuple[str, int]:
    host, _, port = os.environ["BENCH_IO_ADDR"].rpartition(":")
    return host, int(port)


# -- blocking: one connection per thread (and per process: a fork does not share them) -------

_local = threading.local()


def _conn(kind: str, addr: Any) -> socket.socket:
    key = (kind, os.getpid())
    sock: socket.socket | None = getattr(_local, "socks", {}).get(key)
    if sock is None:
        sock = socket.create_connection(addr())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not hasattr(_local, "socks"):
            _local.socks = {}
        _local.socks[key] = sock
    return sock


def _ask(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    reply = sock.recv(64)
    while not reply.endswith(b"\n"):
        more = sock.recv(64)
        if not more:
            raise ConnectionError("the server closed the connection")
        reply += more
    return reply


def incr() -> int:
    """One Redis ``INCR`` round trip; the counter's new value."""
    return int(_ask(_conn("redis", _redis_addr), _INCR)[1:])


def wait() -> None:
    """One request to the delay server: returns about ``DELAY`` seconds later."""
    _ask(_conn("delay", _delay_addr), _WAIT)


# -- asyncio: a pool of connections per event loop ---------------------------------------

_Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# id(loop) -> (loop, free connections by kind); the loop is kept to tell a new one apart
_pools: dict[int, tuple[asyncio.AbstractEventLoop, dict[str, list[_Pair]]]] = {}


def _free(kind: str) -> list[_Pair]:
    loop = asyncio.get_running_loop()
    known = _pools.get(id(loop))
    if known is None or known[0] is not loop:
        known = _pools[id(loop)] = (loop, {})
    return known[1].setdefault(kind, [])


async def _aask(kind: str, addr: Any, request: bytes) -> bytes:
    free = _free(kind)
    if free:
        reader, writer = free.pop()
    else:
        reader, writer = await asyncio.open_connection(*addr())
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(request)
    reply = await reader.readline()
    free.append((reader, writer))  # not on an error: a half-read connection is dropped
    return reply


async def aincr() -> int:
    """``incr()`` for asyncio jobs."""
    return int((await _aask("redis", _redis_addr, _INCR))[1:])


async def await_() -> None:
    """``wait()`` for asyncio jobs."""
    await _aask("delay", _delay_addr, _WAIT)


# -- the task bodies -----------------------------------------------------------------------


def incr_job(i: int) -> int:
    incr()
    probe.hit()
    return i


def wait_job(i: int) -> int:
    began = probe.begin()
    wait()
    probe.hit(began)
    return i


async def aincr_job(i: int) -> int:
    await aincr()
    probe.hit()
    return i


async def await_job(i: int) -> int:
    began = probe.begin()
    await await_()
    probe.hit(began)
    return i


# -- the delay server --------------------------------------------------------------------


class _Delayed(asyncio.Protocol):
    """Answers each request line ``DELAY`` seconds after it arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\n")):
            self.loop.call_later(DELAY, self._answer)

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"+\n")


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Delayed, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        raise SystemExit("usage: python bench/io_job.py serve")
    asyncio.run(_serve())
