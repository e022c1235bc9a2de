"""The SQLite database's files on disk: who may read them, and noticing them change.

**Permissions.** What Conveyor creates is private to the user running it, whatever the
umask: the database file 0600 and each missing folder on its path 0700. SQLite gives the
``-wal`` and ``-shm`` files it creates the database file's mode, and the wake-up folder
``<db>.notify/`` and its sockets follow the database's write access (a private database:
0700 and 0600; one its group may write: 0770 and 0660), so a group that shares a database
can also wake each other's workers. An existing file or folder keeps its mode: a database
shared on purpose stays shared. One that every user may read gets a warning at each open:
they can read every job's arguments and results.

A new database file is made under a temporary name and linked into place. Its descriptor
is closed before the file has its name, so no connection of this process can be open on it
at that moment: closing any descriptor of a file drops every POSIX lock the process holds
on it, SQLite's included. Openers that find no database take turns (an exclusive ``flock``
on its folder) to remove what a deleted one left (below) and make the new file: one that
went on unguarded could remove, as an orphan, the ``-wal`` another opener had just begun.

**Identity.** A process holds its database open. If the file is deleted, or another one is
moved over it, the process goes on reading and writing the old one, which nobody else sees
(and which vanishes with the last descriptor), while every process that opens the path
from then on uses another file. ``FileWatch`` records the device and inode of the database
and of its ``-wal`` and ``-shm`` once the database is open, and compares them with what the
path names now, at most once a second (``CHECK_EVERY``) in the course of the broker's
calls, and at every new connection. A difference raises ``BrokerGone``, for that call and
every later one. The ``-wal`` and ``-shm`` cannot change legitimately while a connection is
open (SQLite removes them only when the last connection to the database closes), so they
are watched only while this process has one.

**When the file is gone.** SQLite finds a database's ``-wal`` and ``-shm`` by name, and
the old ones stay at the path: the last connection to a file that was moved or deleted
closes without its usual checkpoint and clean-up (SQLite checks that the file is still at
its path). Whatever file is there next would be paired with them: the next process to open
it would read the old database's pages into the new one (measured: a database moved over a
live one showed none of its own jobs, and the old one's tables). So the first call that
finds the file gone, and ``close()``, and the interpreter's end if the broker was never
closed (``Database`` calls back):

* copies the old WAL into the old file through its connection, waiting for nobody: a file
  moved away, not deleted, is then whole under its new name; a -wal deleted under a live
  database gets its commits back into the file;
* removes the ``-wal`` and ``-shm`` at the path if they are still the ones this process had
  open, and leaves them alone if they are another database's.

A new database file is made only where no database file is; a ``-wal`` or ``-shm`` found
there is what a database deleted under a process that then died left, and is removed first.
A process that opened the path in the seconds before the old processes noticed has already
read the wrong pages: it notices its -wal removed, and stops too.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import logging
import os
import secrets
import stat
import time
import weakref
from collections.abc import Callable, Iterator

from ..._errors import BrokerError, BrokerGone, ConfigurationError

log = logging.getLogger("conveyor.sqlite")

CHECK_EVERY = 1.0  # seconds between two looks at the files (a stat of each)
COMPANIONS = ("-wal", "-shm")  # SQLite's own files beside the database
CREATE_WAIT = 10.0  # seconds to wait for the folder's lock (_creating)

_Identity = tuple[int, int]  # (st_dev, st_ino)


def _identity(path: str) -> _Identity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def make_folders(folder: str, mode: int = 0o700) -> None:
    """Create ``folder`` and each missing folder above it with ``mode``, whatever the umask.
    A folder that exists keeps its own."""
    missing: list[str] = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            continue  # made meanwhile by another process: its mode is its own
        os.chmod(path, mode)  # the umask may have taken bits away (a umask of 0277)


def create_file(path: str) -> bool:
    """Create an empty database file at ``path``, 0600; False if one is there already."""
    if os.path.exists(path):
        return False
    with _creating(path):
        if os.path.exists(path):  # made meanwhile by another opener
            return False
        _remove_orphans(path)
        return _link_new(path)


@contextlib.contextmanager
def _creating(path: str) -> Iterator[None]:
    """Hold the exclusive ``flock`` of the folder of the database at ``path`` while its
    files are made or removed (``create_file``, ``FileWatch.remove_companions``). Without
    it, an opener could find no database, another create it and start its ``-wal``, and
    the first then remove that live ``-wal`` as an orphan (seen as "disk I/O error" in the
    other's first transaction: 2 of 1,000 races of 4 openers in one run, which also logged
    the removal).

    Waited for up to ``CREATE_WAIT``: a child forked while a thread held it holds it too
    until it exits, and a making that waited that long goes on without it (as everywhere
    on a folder that takes no ``flock``), saying so."""
    folder = os.path.dirname(path) or "."
    fd = _folder_fd(folder)
    if fd < 0:
        yield
        return
    try:
        deadline = time.monotonic() + CREATE_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning(
                        "the folder %s stayed locked by another process making or removing "
                        "a database's files for %.0f s (a process forked while one was "
                        "being made holds it until it exits); going on without the lock",
                        folder,
                        CREATE_WAIT,
                    )
                    break
                time.sleep(0.002)
            except OSError:  # no flock here: unguarded, as before
                break
        yield
    finally:
        os.close(fd)  # and the lock with it


def _folder_fd(folder: str) -> int:
    """A descriptor of ``folder`` to lock, or -1 where it cannot be opened (a folder this
    user may write but not read)."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _link_new(path: str) -> bool:
    """Link an empty 0600 file into place at ``path``; False if one got there first."""
    spare = f"{path}.{secrets.token_hex(4)}.new"
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    try:
        os.link(spare, path)  # never replaces: another process may have made it meanwhile
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(spare)
    return True


def _remove_orphans(path: str) -> None:
    """Remove a -wal or -shm that has no database file: SQLite would pair it with the new one.
    Under ``_creating``: no opener that went through it can have made them meanwhile."""
    for suffix in COMPANIONS:
        if os.path.exists(path):
            return  # made meanwhile by a process that does not take the lock: its own
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
            log.warning(
                "removed %s%s: a database deleted under a process that then died left it, "
                "and SQLite would have read it into the new database %s",
                path,
                suffix,
                path,
            )


def prepare(path: str, *, create: bool, given: str) -> None:
    """Make sure a database file is at ``path`` before SQLite opens it (it is opened with
    ``mode=rw``, which never creates one). ``create=False``: only say that none is there;
    ``given`` is the path as the URL wrote it."""
    if os.path.isdir(path):  # SQLite's "unable to open" would read as a permission problem
        raise ConfigurationError(
            f"the SQLite database path {path} is a folder, not a file: point the URL at a "
            f"file in it, e.g. sqlite:///{os.path.join(given, 'conveyor.db')}"
        )
    if not create:
        if not os.path.exists(path):
            raise ConfigurationError(not_found(path, given, "no SQLite database at"))
        _warn_if_exposed(path)
        return
    try:
        make_folders(os.path.dirname(path))
        if create_file(path):
            return
    except OSError as exc:
        raise BrokerError(
            f"cannot create the SQLite database {path}: {exc.strerror or exc}. Make its "
            "folder writable by this user, or point the URL at another file"
        ) from exc
    _warn_if_exposed(path)


def not_found(path: str, given: str, what: str) -> str:
    """The message for a read-only open that finds no (Conveyor) database at ``path``."""
    where = ""
    if not os.path.isabs(given):
        where = f" (a relative sqlite:///{given} is read from the current folder, {os.getcwd()})"
    return (
        f"{what} {path}; nothing was created{where}. Point the URL (--url or CONVEYOR_URL) "
        "at the database your workers and producers use, e.g. sqlite:////absolute/path/jobs.db"
    )


def _warn_if_exposed(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return  # SQLite's own open says what is wrong
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode) and mode & stat.S_IROTH:
        log.warning(
            "the SQLite database %s is readable by every user of this machine (mode %04o): "
            "they can read every job's arguments and results. Run `chmod 600 %s %s-wal "
            "%s-shm` unless that is intended",
            path,
            mode,
            path,
            path,
            path,
        )


def companion_modes(path: str) -> tuple[int, int]:
    """(folder mode, socket mode) for the wake-up folder beside the database: owner-only,
    plus the group, or everybody, where they may write the database."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    folder = 0o700
    if mode & stat.S_IWGRP:
        folder |= 0o070
    if mode & stat.S_IWOTH:
        folder |= 0o007
    return folder, folder & 0o666


@functools.cache
def _unclosed() -> weakref.WeakSet[FileWatch]:
    """The watches of databases not closed yet; registered with ``atexit`` by the first."""
    live: weakref.WeakSet[FileWatch] = weakref.WeakSet()

    def last_looks() -> None:
        for watch in list(live):
            watch.last_look()

    atexit.register(last_looks)
    return live


class FileWatch:
    """Notices the database file, or its ``-wal`` or ``-shm``, deleted or replaced (see the
    module docstring), and calls ``gone`` the first time. ``check`` is called on every
    broker call and costs a clock read but once a second; threads may race into a look,
    which is harmless (``gone`` must bear being called twice)."""

    def __init__(self, path: str, gone: Callable[[], None]) -> None:
        self.path = path
        self._names = {"": path}  # SQLite names the -wal and -shm after the file links lead to
        self._names.update((suffix, path + suffix) for suffix in COMPANIONS)
        self._expected: dict[str, _Identity | None] = {"": _identity(path)}
        self.forget_companions()
        self._next = time.monotonic() + CHECK_EVERY
        self._gone = ""
        self._on_gone = gone

    def check(self, *, now: bool = False) -> None:
        """Raise ``BrokerGone`` if the files changed; look only if ``CHECK_EVERY`` passed
        since the last look (or ``now``). Once gone, every call raises."""
        if not now and time.monotonic() < self._next:
            return
        if not self._gone:
            self._next = time.monotonic() + CHECK_EVERY
            self._gone = self._look()
            if not self._gone:
                return
            self._next = -1.0  # no more looks: every call goes on to raise
            self._on_gone()
        raise BrokerGone(self._gone)

    def opened(self) -> None:
        """The database is open: from now on its -wal and -shm are watched too (they exist
        now, and stay while a connection is open), and it is looked at once more when the
        interpreter ends unless ``last_look`` comes first."""
        real = os.path.realpath(self.path)
        for suffix in COMPANIONS:
            self._names[suffix] = real + suffix
            self._expected[suffix] = _identity(real + suffix)
        _unclosed().add(self)

    def last_look(self) -> None:
        """Look once more, as the broker closes or the interpreter ends: a process that made
        no call since its file went still tidies up after it."""
        _unclosed().discard(self)
        with contextlib.suppress(BrokerGone):
            self.check(now=True)

    def forget_companions(self) -> None:
        """This process has no connection left: SQLite may remove the -wal and -shm now."""
        for suffix in COMPANIONS:
            self._expected[suffix] = None

    def remove_companions(self) -> None:
        """Remove the -wal and -shm at the path if they are still the ones this process had
        open; another database's are left alone. Under the folder's lock (``_creating``): a
        new database's opener could otherwise begin its own -wal between the look and the
        removal."""
        with _creating(self.path):
            for suffix in COMPANIONS:
                expected = self._expected[suffix]
                name = self._names[suffix]
                if expected is not None and _identity(name) == expected:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)

    def _look(self) -> str:
        """What happened to the files, or "" if nothing did."""
        for suffix, expected in self._expected.items():
            name = self._names[suffix]
            if expected is not None and (found := _identity(name)) != expected:
                return _what_happened(self.path, name if suffix else "", deleted=found is None)
        return ""


def _what_happened(path: str, companion: str, *, deleted: bool) -> str:
    if companion:
        return (
            f"the SQLite file {companion} was "
            f"{'deleted' if deleted else 'replaced by another file'} while this process had "
            "the database open: commits it held that were not yet copied into the database "
            "file are lost to every process that opens the database from now on, and those "
            f"that had it open no longer see the same data. Stop every process using {path}, "
            "check its jobs (restore a backup if jobs are missing), then start them again; "
            "never delete the -wal or -shm of a database in use"
        )
    if deleted:
        return (
            f"the SQLite database {path} was deleted or moved away while this process had it "
            "open: what it would write now would go to a file nobody else sees, so nothing "
            "more is written. The jobs it held went with the file. Restart the process to "
            "start a new database at that path, or point the URL at where the file went"
        )
    return (
        f"the SQLite database {path} was replaced by another file while this process had it "
        "open (moved over it, or deleted and created anew): this process still holds the old "
        "file, which nobody else sees. Nothing more is written to it; restart the process to "
        "use the file now at that path"
    )
