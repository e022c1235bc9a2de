"""A TCP fault proxy on loopback, for putting network faults between a client and Redis.

``FaultProxy(target_port)`` listens on 127.0.0.1 (a free port) and forwards every connection
to ``127.0.0.1:target_port``. While it runs, a test can:

* ``reset()``: reset every open connection now (RST to both sides, as a crashed middlebox);
* ``blackhole()`` / ``heal()``: from ``blackhole`` on, connections are still accepted but no
  byte goes anywhere (what is received is dropped), so a client waits until its own socket
  timeout; ``heal`` forwards again. Connections opened during the blackhole are only
  connected upstream once healed;
* ``cut(direction, after)``: arm a one-shot fault: the next connection that moves bytes in
  ``direction`` ("up": client to server, "down": server to client) forwards ``after`` more of
  them; when one more arrives, both of its sides are reset and the rest is dropped.
  ``cut("down", 0)`` drops the reply to a command that reached the server: the command ran,
  the client never hears so.

One thread runs a ``selectors`` loop; control calls take effect before they return (the
loop acknowledges them), so ``proxy.cut("down", 0); client.call()`` cannot race.
Loopback only: it binds 127.0.0.1 and forwards to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down"]
_CHUNK = 65536


@dataclass
class _Pipe:
    client: socket.socket
    server: socket.socket | None = None
    # Bytes waiting to be written to each side (the loop never blocks on a send).
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)


@dataclass
class _Cut:
    direction: Direction
    left: int


@dataclass
class Stats:
    accepted: int = 0
    resets: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def _hard_close(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer gets an RST (ECONNRESET), not a clean EOF."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy forwards to loopback only")
        self.target = (target_host, target_port)
        self.stats = Stats()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pipes: list[_Pipe] = []
        self._blackholed = False
        self._cut: _Cut | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[], None], threading.Event]] = []
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- control (any thread) -----------------------------------------------------------------

    def _do(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread and wait until it has run."""
        done = threading.Event()
        with self._lock:
            self._pending.append((fn, done))
        self._wake_w.send(b"!")
        if not done.wait(5.0):
            raise RuntimeError("the fault proxy loop did not answer")

    def reset(self) -> None:
        """Reset every open connection (both sides get an RST)."""
        self._do(self._reset_all)

    def blackhole(self) -> None:
        """Accept connections, forward nothing, drop what arrives: a silent network."""

        def on() -> None:
            self._blackholed = True

        self._do(on)

    def heal(self) -> None:
        def off() -> None:
            self._blackholed = False
            for pipe in list(self._pipes):
                if pipe.server is None:
                    self._connect_upstream(pipe)

        self._do(off)

    def cut(self, direction: Direction, after: int = 0) -> None:
        """One shot: the next connection moving bytes in ``direction`` passes ``after`` more
        of them; the byte after those is dropped and both sides are reset."""
        if direction not in ("up", "down") or after < 0:
            raise ValueError("cut('up' | 'down', after >= 0)")

        def arm() -> None:
            self._cut = _Cut(direction, after)

        self._do(arm)

    @property
    def cut_pending(self) -> bool:
        return self._cut is not None

    @property
    def connections(self) -> int:
        return len(self._pipes)

    def close(self) -> None:
        if self._stopping:
            return

        def stop() -> None:
            self._stopping = True
            self._reset_all()

        with contextlib.suppress(RuntimeError):
            self._do(stop)
        self._thread.join(5.0)
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop (proxy thread only) ------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            for key, events in self._sel.select(timeout=1.0):
                tag = key.data
                if tag == "accept":
                    self._accept()
                elif tag == "wake":
                    self._run_pending()
                else:
                    pipe, side = tag
                    if pipe in self._pipes:
                        self._service(pipe, side, events)

    def _run_pending(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(1024):
                pass
        with self._lock:
            pending, self._pending = self._pending, []
        for fn, done in pending:
            try:
                fn()
            finally:
                done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(client)
        self._pipes.append(pipe)
        self.stats.accepted += 1
        self._sel.register(client, selectors.EVENT_READ, (pipe, "client"))
        if not self._blackholed:
            self._connect_upstream(pipe)

    def _connect_upstream(self, pipe: _Pipe) -> None:
        try:
            server = socket.create_connection(self.target, timeout=2.0)
        except OSError:
            self._drop(pipe, hard=True)  # the server is down: the client sees a reset
            return
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.server = server
        self._sel.register(server, selectors.EVENT_READ, (pipe, "server"))

    def _service(self, pipe: _Pipe, side: str, events: int) -> None:
        sock = pipe.client if side == "client" else pipe.server
        assert sock is not None
        if events & selectors.EVENT_WRITE:
            self._flush(pipe, side)
            if pipe not in self._pipes:
                return
        if not events & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._drop(pipe, hard=True)
            return
        if not data:
            self._drop(pipe, hard=False)  # a clean close on one side closes both
            return
        if self._blackholed:
            return  # dropped on the floor
        direction: Direction = "up" if side == "client" else "down"
        cut = self._cut
        if cut is not None and cut.direction == direction:
            if len(data) > cut.left:
                self._forward(pipe, direction, data[: cut.left], then_cut=True)
                return
            cut.left -= len(data)
        self._forward(pipe, direction, data, then_cut=False)

    def _forward(self, pipe: _Pipe, direction: Direction, data: bytes, *, then_cut: bool) -> None:
        if direction == "up":
            pipe.to_server += data
            self.stats.bytes_up += len(data)
            self._flush(pipe, "server")
        else:
            pipe.to_client += data
            self.stats.bytes_down += len(data)
            self._flush(pipe, "client")
        if then_cut and pipe in self._pipes:
            self._cut = None
            self.stats.cuts += 1
            self._drop(pipe, hard=True)

    def _flush(self, pipe: _Pipe, side: str) -> None:
        """Write what waits for ``side``; watch for writability while some is left."""
        sock = pipe.client if side == "client" else pipe.server
        buf = pipe.to_client if side == "client" else pipe.to_server
        if sock is None:
            return
        try:
            while buf:
                n = sock.send(buf)
                del buf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(pipe, hard=True)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
        self._sel.modify(sock, events, (pipe, side))

    def _drop(self, pipe: _Pipe, *, hard: bool) -> None:
        if pipe not in self._pipes:
            return
        self._pipes.remove(pipe)
        for sock in (pipe.client, pipe.server):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if hard:
                _hard_close(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()

    def _reset_all(self) -> None:
        for pipe in list(self._pipes):
            self.stats.resets += 1
            self._drop(pipe, hard=True)
