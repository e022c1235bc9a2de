"""Tickets published from the caller's own thread: a small AMQP 0-9-1 client that only
publishes, with publisher confirms, on a blocking socket of its own (``amqp://`` only).

aio-pika runs on the link's loop thread, and a publish handed to it from another thread
waits for that thread to wake and then for the interpreter's lock, which an enqueue's
thread holds while it writes the record (0.4 ms of W3's enqueue → start on a 2-core
machine). Here the caller's thread writes the frames itself, under a lock, and the thread
that waits for its confirms reads the socket for every waiter (one reads at a time, the
others wait to be told). Heartbeats are off on this connection (nothing reads it while
nothing is published); the kernel's keepalive watches it (``KEEPALIVE``).

Anything that goes wrong (the server closes the connection or the channel, a socket error,
a negative confirm, a ticket returned, no confirm in time) fails the publishes waiting on
it and drops the connection; the link then publishes those tickets again through aio-pika
within what is left of its timeout (a ticket twice costs a worker a look, no more), and
the next publish here connects again, at most once a ``RETRY`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from pamqp import commands, frame, header
from pamqp.body import ContentBody
from pamqp.common import FieldTable
from pamqp.exceptions import UnmarshalingException
from pamqp.heartbeat import Heartbeat

from ._url import RabbitURL

CHANNEL = 1
RETRY = 1.0  # seconds before connecting again after a failure
OPEN_TIMEOUT = 5.0  # seconds for the socket and the handshake
FRAME_END = 7 + 1  # a frame's header and end byte
# An idle connection probed after a minute, every 15 s (the kernel's default: two hours):
# a NAT's or firewall's entry kept, a peer gone found before the next publish waits on it.
KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))


class Failed(Exception):
    """The connection or the channel failed, or RabbitMQ refused a publish."""


class Confirms:
    """The publisher confirms one ``Direct.send`` waits for."""

    __slots__ = ("failed", "left")

    def __init__(self, n: int) -> None:
        self.left = n
        self.failed = False

    @property
    def done(self) -> bool:
        return self.failed or self.left == 0


def usable(url: RabbitURL) -> bool:
    """Whether this client can reach ``url``'s server: plain ``amqp://`` (TLS is aio-pika's
    alone)."""
    return urlsplit(url.connect).scheme.lower() == "amqp"


class Direct:
    """One connection and one channel in confirm mode, used from any thread."""

    def __init__(self, url: RabbitURL, delivery_mode: int) -> None:
        parts = urlsplit(url.connect)
        self._timeout = url.confirm_timeout  # for a write the server does not read
        self._address = (parts.hostname or "localhost", parts.port or 5672)
        self._login = "\0" + unquote(parts.username or "guest")
        self._login += "\0" + unquote(parts.password or "guest")
        self._vhost = url.vhost
        self._properties = commands.Basic.Properties(delivery_mode=delivery_mode)
        self._write = threading.Lock()  # a publish's frames go out whole, tags in order
        self._cond = threading.Condition()  # the waiting confirms, and who reads
        self._sock: socket.socket | None = None
        self._poll: select.poll | None = None
        self._pid = os.getpid()
        self._failed_at = -RETRY
        self._frame_max = 131072
        self._tag = 0  # the last delivery tag given on this connection
        self._waiting: dict[int, Confirms] = {}  # tag → its publish, in tag order
        self._reading = False
        self._buffer = b""
        self._closed = False  # by ``close``: no connection again

    # -- publishing -------------------------------------------------------------------------

    def send(self, messages: Sequence[tuple[str, bytes]]) -> Confirms | None:
        """Write ``(routing key, body)`` messages to the default exchange; None if there is
        no connection (and none could be made now): publish them another way."""
        if self._pid != os.getpid():  # a forked child: the parent's socket is the parent's
            self._forked()
        confirms = Confirms(len(messages))
        with self._write:
            sock = self._sock or (None if self._closed else self._connect())
            if sock is None:
                return None
            data = b"".join(self._frames(key, body) for key, body in messages)
            with self._cond:
                if self._sock is not sock:  # dropped meanwhile by a reader
                    return None
                for _ in messages:
                    self._tag += 1
                    self._waiting[self._tag] = confirms
            try:
                sock.sendall(data)
            except OSError as exc:
                self._drop(sock, exc)
        return confirms

    def _frames(self, key: str, body: bytes) -> bytes:
        # Mandatory, like aio-pika's: to a queue deleted meanwhile it comes back (a
        # ``Basic.Return``, which fails the connection's publishes), not confirmed and lost.
        method = commands.Basic.Publish(exchange="", routing_key=key, mandatory=True)
        size = len(body)
        parts = [
            frame.marshal(method, CHANNEL),
            frame.marshal(header.ContentHeader(0, size, self._properties), CHANNEL),
        ]
        step = self._frame_max - FRAME_END
        parts += [
            frame.marshal(ContentBody(body[i : i + step]), CHANNEL) for i in range(0, size, step)
        ]
        return b"".join(parts)

    def wait(self, confirms: Confirms, timeout: float) -> bool:
        """Wait for ``confirms``; False if one failed or did not come within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not confirms.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._reading:
                    self._cond.wait(left)
                    continue
                sock, poll = self._sock, self._poll
                if sock is None or poll is None:  # dropped: its confirms have failed already
                    break
                self._reading = True
                self._cond.release()
                try:
                    data, error = self._receive(sock, poll, left)
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                if error is not None:
                    self._fail_all(sock)
                    break
                self._take(sock, data)
            if not confirms.done and self._sock is not None:
                # No confirm in time: a peer gone without a word, or a server that stopped
                # reading; kept, the connection would hold every later publish as long.
                self._fail_all(self._sock)
            return confirms.left == 0 and not confirms.failed

    @staticmethod
    def _receive(
        sock: socket.socket, poll: select.poll, timeout: float
    ) -> tuple[bytes, Exception | None]:
        """What the socket has within ``timeout`` (another thread may close it meanwhile:
        an error then)."""
        try:
            if not poll.poll(timeout * 1000):
                return b"", None
            data = sock.recv(65536)
        except OSError as exc:
            return b"", exc
        return data, None if data else Failed("RabbitMQ closed the connection")

    def _take(self, sock: socket.socket, data: bytes) -> None:
        """Read the frames in ``data`` (with ``_cond`` held): settle the confirms."""
        if self._sock is not sock:  # dropped (and maybe replaced) while it was read
            return
        self._buffer += data
        while len(self._buffer) >= FRAME_END:
            try:
                used, _, value = frame.unmarshal(self._buffer)
            except UnmarshalingException:
                size = int.from_bytes(self._buffer[3:7], "big")
                if len(self._buffer) < size + FRAME_END:
                    return  # the rest of the frame is on its way
                self._fail_all(sock)
                return
            self._buffer = self._buffer[used:]
            if isinstance(value, commands.Basic.Ack):
                self._settle(value.delivery_tag, value.multiple, nack=False)
            elif isinstance(value, commands.Basic.Nack):
                self._settle(value.delivery_tag, value.multiple, nack=True)
            elif not isinstance(value, Heartbeat):  # a close, from the server: it is gone
                self._fail_all(sock)
                return

    def _settle(self, tag: int, multiple: bool, *, nack: bool) -> None:
        tags = [t for t in self._waiting if t <= tag] if multiple else [tag]
        for t in tags:
            confirms = self._waiting.pop(t, None)
            if confirms is not None:
                confirms.left -= 1
                confirms.failed |= nack

    # -- the connection ---------------------------------------------------------------------

    def _connect(self) -> socket.socket | None:
        """A connection and a channel in confirm mode (with ``_write`` held); None if it
        failed within the last ``RETRY`` seconds, or fails now."""
        if time.monotonic() - self._failed_at < RETRY:
            return None
        try:
            sock = socket.create_connection(self._address, OPEN_TIMEOUT)
        except OSError:
            self._failed_at = time.monotonic()
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in KEEPALIVE:
                if hasattr(socket, option):  # Linux's; elsewhere, the system's defaults
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            self._handshake(sock)
        except (OSError, Failed, UnmarshalingException):
            sock.close()
            self._failed_at = time.monotonic()
            return None
        sock.settimeout(self._timeout)
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        with self._cond:
            self._sock, self._poll, self._tag, self._buffer = sock, poll, 0, b""
            self._waiting.clear()
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        buffer = b""

        def expect(kind: type[object]) -> object:
            nonlocal buffer
            while True:
                if len(buffer) >= FRAME_END:
                    size = int.from_bytes(buffer[3:7], "big")
                    if len(buffer) >= size + FRAME_END:
                        used, _, value = frame.unmarshal(buffer)
                        buffer = buffer[used:]
                        if isinstance(value, kind):
                            return value
                        raise Failed(f"RabbitMQ answered {type(value).__name__}")
                data = sock.recv(65536)
                if not data:
                    raise Failed("RabbitMQ closed the connection")
                buffer += data

        def call(value: object, channel: int = 0) -> None:
            sock.sendall(frame.marshal(value, channel))  # type: ignore[arg-type]

        sock.sendall(header.ProtocolHeader().marshal())
        expect(commands.Connection.Start)
        properties: FieldTable = {"product": "conveyor", "connection_name": "conveyor-publish"}
        call(commands.Connection.StartOk(properties, "PLAIN", self._login))
        tune = expect(commands.Connection.Tune)
        assert isinstance(tune, commands.Connection.Tune)
        self._frame_max = tune.frame_max or self._frame_max
        call(commands.Connection.TuneOk(tune.channel_max, self._frame_max, 0))
        call(commands.Connection.Open(self._vhost))
        expect(commands.Connection.OpenOk)
        call(commands.Channel.Open(), CHANNEL)
        expect(commands.Channel.OpenOk)
        call(commands.Confirm.Select(), CHANNEL)
        expect(commands.Confirm.SelectOk)

    def _forked(self) -> None:
        """A connection of a forked child's own (the parent's locks may have been held at
        the fork)."""
        self._pid, self._sock, self._poll, self._buffer = os.getpid(), None, None, b""
        self._write, self._cond = threading.Lock(), threading.Condition()
        self._waiting, self._reading = {}, False

    def _drop(self, sock: socket.socket, exc: Exception) -> None:
        with self._cond:
            self._fail_all(sock)

    def _fail_all(self, sock: socket.socket) -> None:
        """Fail the confirms waiting on ``sock`` and close it (with ``_cond`` held)."""
        if self._sock is not sock:
            return
        for confirms in self._waiting.values():
            confirms.failed = True
        self._waiting.clear()
        self._sock, self._poll, self._buffer = None, None, b""
        self._failed_at = time.monotonic()
        with contextlib.suppress(OSError):  # wakes a thread in a read of it (a close does not)
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        """Close the connection; a later ``send`` makes none (it returns None)."""
        with self._cond:
            self._closed = True
            sock = self._sock
            if sock is None or self._pid != os.getpid():
                return
            with contextlib.suppress(OSError):
                sock.sendall(frame.marshal(commands.Connection.Close(200, "closing", 0, 0), 0))
            self._fail_all(sock)
