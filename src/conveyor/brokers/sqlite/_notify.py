"""Waking waiters across processes beside a SQLite file: unix datagram sockets in
``<db>.notify/`` (the design and its measurements are in ``conveyor.brokers.sqlite``; the
modes of the folder and the sockets in ``_file``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator

from ..._errors import BrokerError
from ._file import companion_modes, make_folders

FETCHERS = "f."
ANY_JOB = "j."


def job_waiters(job_id: str) -> str:
    # Hashed: job ids may be 128 characters and a socket path must stay under ~100 bytes.
    return ANY_JOB + hashlib.blake2b(job_id.encode(), digest_size=8).hexdigest() + "."


class Listener:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def wait(self, timeout: float) -> None:
        """Sleep until a datagram arrives or ``timeout`` s pass; swallow every pending one."""
        self._sock.settimeout(max(timeout, 0.001))
        try:
            self._sock.recv(16)
        except (TimeoutError, BlockingIOError):
            return
        self._sock.setblocking(False)  # with a timeout set, Python would wait for more
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                self._sock.recv(16)


class Notifier:
    """Unix datagram sockets in ``<db>.notify/``; see the module docstring.

    ``create=False`` (a process that only reads) makes no folder until it listens."""

    _LONGEST_NAME = 40

    def __init__(self, db_path: str, *, create: bool = True) -> None:
        self.dir = db_path + ".notify"
        self._dir_mode, self._socket_mode = companion_modes(db_path)
        self._dirfd: int | None = None
        self._base = ""
        self._sender: tuple[int, socket.socket] | None = None
        if create or os.path.isdir(self.dir):
            self._address()

    def _address(self) -> str:
        """Where sockets are addressed, making the folder on first use."""
        if not self._base:
            try:
                make_folders(self.dir, self._dir_mode)
                self._base = self._address_base()
            except OSError as exc:
                raise BrokerError(
                    f"cannot create {self.dir} (wake-ups for waiting workers): make the "
                    f"database's directory writable ({exc})"
                ) from exc
        return self._base

    def _address_base(self) -> str:
        """Where sockets are addressed; a unix socket path is limited to about 100 bytes."""
        if len(os.fsencode(self.dir)) + self._LONGEST_NAME < 100:
            return self.dir
        if os.path.isdir("/proc/self/fd"):
            # Linux: reach the same directory through a short path to an open descriptor.
            self._dirfd = os.open(self.dir, os.O_RDONLY)
            return f"/proc/self/fd/{self._dirfd}"
        # Elsewhere: a short directory named after the database (processes must share /tmp).
        digest = hashlib.blake2b(os.fsencode(self.dir), digest_size=10).hexdigest()
        self.dir = os.path.join(tempfile.gettempdir(), f"conveyor-{digest}.notify")
        make_folders(self.dir, self._dir_mode)
        return self.dir

    def _socket(self) -> socket.socket:
        if self._sender is None or self._sender[0] != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sender = (os.getpid(), sock)
        return self._sender[1]

    def wake(self, prefix: str) -> None:
        """Send one byte to every socket whose name starts with ``prefix``."""
        try:
            names = [n for n in os.listdir(self.dir) if n.startswith(prefix)]
            base = self._address() if names else ""
        except (OSError, BrokerError):
            return  # no directory, so nobody is waiting
        sock = self._socket()
        for name in names:
            try:
                sock.sendto(b"!", f"{base}/{name}")
            except ConnectionRefusedError:
                self._remove(name)  # its process died without cleaning up
            except OSError:
                pass  # already gone, or its buffer is full (so it is awake anyway)

    def sweep(self) -> None:
        """Remove sockets left by dead processes (connecting to one is refused)."""
        with contextlib.suppress(OSError, BrokerError):
            for name in os.listdir(self.dir):
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                    try:
                        probe.connect(f"{self._address()}/{name}")
                    except ConnectionRefusedError:
                        self._remove(name)
                    except OSError:
                        pass

    def _remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.dir, name))

    @contextlib.contextmanager
    def listen(self, prefix: str) -> Iterator[Listener]:
        name = prefix + secrets.token_hex(6)
        base = self._address()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if self._dirfd is None:
                make_folders(self.dir, self._dir_mode)  # someone may have cleaned it up
            sock.bind(f"{base}/{name}")
            os.chmod(f"{base}/{name}", self._socket_mode)  # whatever the umask
        except OSError as exc:
            sock.close()
            raise BrokerError(f"cannot listen for wake-ups in {self.dir}: {exc}") from exc
        try:
            yield Listener(sock)
        finally:
            self._remove(name)
            sock.close()

    def close(self) -> None:
        if self._sender is not None and self._sender[0] == os.getpid():
            self._sender[1].close()
        self._sender = None
        if self._dirfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dirfd)
            self._dirfd = None
