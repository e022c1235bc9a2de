"""Logs an operator can use: one line per event, in text or JSON, each line written while a
job runs carrying that job's id, task, queue and attempt.

* ``configure(level, fmt)`` is what ``conveyor worker --log-level/--log-format`` calls: one
  handler on stderr, Conveyor's loggers (and those of the packages the worker runs code
  from, see ``attach``) at ``level``, everything else at WARNING or above, so ``-v`` shows
  Conveyor's debug lines without redis-py's; the connection churn of the broker clients
  (``quiet_clients``) is left to ``--log-level debug``.
* ``JobContext`` (``conveyor.logging_filter()``) stamps ``job_id``, ``task``, ``queue`` and
  ``attempt`` on a record from the running job (``current_job()``'s context variable), None
  outside a job. ``configure`` puts it on its handler and a ``Worker`` on every root
  handler; a logging setup of one's own adds it to its handlers.
* A ``processes`` pool child sends its records to the parent (``forward``/``replay``), where
  the parent's handlers write them: one stream, one format, the job fields stamped in the
  child where the job runs.

Nothing here runs per job: the worker sets the context variable around a run (it does for
``current_job()`` already) and the filter reads it only for a record that passed its level.
"""

from __future__ import annotations

import io
import json
import logging
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._context import _current
from ._errors import ConfigurationError, SoftTimeLimit

FIELDS = ("job_id", "task", "queue", "attempt")
_LEVELS = {
    name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
}
_QUIET = logging.WARNING  # the least a logger outside Conveyor and the app logs at
# Clients that say a connection they lost and make again in their own words: a traceback,
# then a line or two a second until the server is back (aiormq and aio-pika, RabbitMQ's;
# psycopg's pool, PostgreSQL's). They recover by themselves, and Conveyor says it once in
# its own (the RabbitMQ link's "lost the connection", the PostgreSQL broker's and the
# worker's "..., retrying"), so theirs are for --log-level debug.
CLIENTS = ("aiormq", "aio_pika", "psycopg.pool")
# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_NOT_EXTRA = _STANDARD | set(FIELDS)
_PLAIN = (str, int, float, bool, type(None))


class JobContext(logging.Filter):
    """Stamps ``job_id``, ``task``, ``queue`` and ``attempt`` (0 for the first run) of the
    job the logging code runs in, or None outside a job. A field the record has already
    (an ``extra=``, the worker's lines about a job, a pool process's records) is kept.
    Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        job = _current.get()
        if job is None:
            for name in FIELDS:
                fields.setdefault(name, None)
        else:
            fields.setdefault("job_id", job.id)
            fields.setdefault("task", job.task)
            fields.setdefault("queue", job.queue)
            fields.setdefault("attempt", job.attempt)
        return True


def logging_filter() -> logging.Filter:
    """A filter that adds ``job_id``, ``task``, ``queue`` and ``attempt`` to each record
    written while a Conveyor job runs (None outside a job), for a logging setup of your own:

        handler.addFilter(conveyor.logging_filter())
        # or in dictConfig: "filters": {"job": {"()": "conveyor.logging_filter"}},
        # then "filters": ["job"] on each handler; format with %(job_id)s, %(task)s ...

    A running ``Worker`` adds it to the root logger's handlers by itself; add it to
    handlers on other loggers, and to handlers made after the worker started.
    """
    return JobContext()


# -- formats --------------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: ``2025-01-31T09:15:02.042Z``."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [job=ID task=NAME]: MESSAGE``, the bracket only inside a job; a
    traceback follows on the lines below, as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        job = fields.get("job_id")
        where = f" [job={job} task={fields.get('task')}]" if job is not None else ""
        return f"{_timestamp(record)} {record.levelname} {record.name}{where}: {record.message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``; ``job_id``,
    ``task``, ``queue``, ``attempt`` inside a job; the record's ``extra=`` fields;
    ``traceback`` and ``stack`` when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if fields.get("job_id") is not None:
            line.update((name, fields.get(name)) for name in FIELDS)
        for name, value in fields.items():
            if name not in _NOT_EXTRA and not name.startswith("_"):
                line[name] = value
        if record.exc_info and not record.exc_text:
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


# -- configure ------------------------------------------------------------------------------


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` owns, so a second call replaces it instead of adding one.

    A line goes to the stream's file descriptor in one ``write`` of its own, without the
    handler's lock: a logging handler holds its lock around its write, and the write lets
    the GIL go, so job threads that each logged a line queued up behind the lock one after
    the other (docs/architecture.md, "jobs that log"). Lines stay whole: the kernel writes
    one of up to ``PIPE_BUF`` bytes at once, and a longer one (a traceback, say), which a
    pipe that fills up takes in pieces, is written alone: the short lines wait for it, and
    it for those being written (up to ``_SHORT_WAIT``). Only a plain file stream is
    written so (``sys.stderr`` as Python makes it, a file ``open()`` made); any other (a
    test's capture, a compressing wrapper, a notebook's stream) is written as
    ``StreamHandler`` writes it."""

    def __init__(self) -> None:
        super().__init__()
        # No lock of its own: a Python-level one (a Condition) could be left held by an
        # exception the worker aims at a job thread, or be taken again by a signal handler
        # that logs in the middle of a write. The GIL orders these plain operations.
        self._long = False  # a long line is being written: short lines take the lock
        self._writing: set[int] = set()  # the threads writing a short line now

    def _at_fork_reinit(self) -> None:  # logging calls it in a forked child
        super()._at_fork_reinit()  # type: ignore[misc]  # private to logging, in 3.9+
        self._long = False
        self._writing = set()

    def handle(self, record: logging.LogRecord) -> bool:
        passed = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12: a filter may replace it
            record = passed
        if passed:
            self.emit(record)
        return bool(passed)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            stream = self.stream  # after the format: a swap meanwhile is seen
            raw = _direct(stream)
            if raw is None:
                with self.lock:  # type: ignore[union-attr]  # made in __init__
                    stream.write(line)  # as StreamHandler.emit does
                    if hasattr(stream, "flush"):
                        stream.flush()
                return
            data = line.encode(stream.encoding, stream.errors)
            if len(data) > _ATOMIC:
                self._alone(raw, data)
            else:
                self._short(raw, data)
        except (RecursionError, SoftTimeLimit):  # a time limit is the job's, not the log's
            raise
        except Exception:
            self.handleError(record)

    def _short(self, raw: io.FileIO, data: bytes) -> None:
        # Said before ``_long`` is read, as ``_alone`` sets it before it reads this: one of
        # the two always sees the other. ``mine``: not already said by this thread's write
        # that a signal handler logging now interrupted (that one takes it back itself).
        me, writing = threading.get_ident(), self._writing
        mine = me not in writing
        try:
            writing.add(me)
            if self._long:  # a long line began meanwhile: after it
                if mine:
                    writing.discard(me)
                with self.lock:  # type: ignore[union-attr]
                    _write_all(raw, data)
            else:
                _write_all(raw, data)
        finally:
            if mine:
                writing.discard(me)

    def _alone(self, raw: io.FileIO, data: bytes) -> None:
        me = threading.get_ident()
        with self.lock:  # type: ignore[union-attr]  # one long line at a time (reentrant)
            outer = not self._long  # else a signal handler's line inside this thread's own
            try:
                self._long = True
                # The short lines being written end first (not this thread's own, from a
                # signal handler that logs while it writes one); the wait is bounded, so a
                # thread stopped in the middle of one cannot stop the log.
                deadline = time.monotonic() + _SHORT_WAIT
                while self._writing - {me} and time.monotonic() < deadline:
                    time.sleep(0.0001)
                _write_all(raw, data)
            finally:
                if outer:
                    self._long = False


def _direct(stream: Any) -> io.FileIO | None:
    """The OS file under a plain text stream, which a line may be written to directly
    (its ``write`` is one system call and takes no lock; a closed one raises, where a bare
    descriptor could be another file's by then); None for any other stream, and without
    the GIL, which orders ``_short``'s and ``_alone``'s steps."""
    if type(stream) is not io.TextIOWrapper or not _GIL:
        return None
    raw = stream.buffer
    if type(raw) is io.BufferedWriter:
        raw = raw.raw
    if type(raw) is not io.FileIO or raw.closed:
        return None
    return raw


def _write_all(raw: io.FileIO, data: bytes) -> None:
    while data:
        wrote = _write(raw, data)
        if not wrote:  # None: it would block (a non-blocking descriptor)
            raise OSError(f"no byte of {len(data)} could be written to {raw.name!r}")
        data = data[wrote:]


def _write(raw: io.FileIO, data: bytes) -> int | None:
    """A name of this module's, so that a test can slow one write down."""
    return raw.write(data)


_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
_ATOMIC = getattr(select, "PIPE_BUF", 512)  # the most a pipe takes in one piece
_SHORT_WAIT = 0.5  # the longest a long line waits for the short ones being written


class _Setup:
    """What ``configure`` chose and which packages workers run code from (either may come
    first: the command configures logging before it imports the app, a script may not)."""

    def __init__(self) -> None:
        self.level: int | None = None
        self.packages: set[str] = set()


_setup = _Setup()


def parse_level(level: str | int) -> int:
    """``"INFO"``, ``"debug"``, ``20`` or ``"20"`` -> 20; ``ConfigurationError`` otherwise."""
    text = str(level).strip()
    if isinstance(level, int) and not isinstance(level, bool):
        number: int | None = level
    elif text.isdigit():
        number = int(text)
    else:
        number = _LEVELS.get(text.upper())
    if number is None or not 1 <= number <= logging.CRITICAL:
        raise ConfigurationError(
            f"unknown log level {level!r}: write one of {', '.join(_LEVELS)} "
            f"(any case), or a number from 1 to {logging.CRITICAL}"
        )
    return number


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``"text"`` or ``"json"``; ``ConfigurationError`` otherwise."""
    name = str(fmt).strip().lower()
    if name == "text":
        return TextFormatter()
    if name == "json":
        return JsonFormatter()
    raise ConfigurationError(f"unknown log format {fmt!r}: write text or json")


# The CLIENTS loggers quiet_clients set, and the level it gave each: one found at another
# level was set since by the application, and is left as it is.
_QUIETED: dict[str, int] = {}


def quiet_clients(level: int = logging.WARNING) -> None:
    """The loggers of ``CLIENTS`` at CRITICAL for ``level`` above DEBUG; at DEBUG, as any
    other logger. Only those whose level nobody set: a level the application gave one
    (Django's ``LOGGING``, applied before the worker command's setup) is its own, and
    stays."""
    for name in CLIENTS:
        logger = logging.getLogger(name)
        if logger.level != logging.NOTSET and _QUIETED.get(name) != logger.level:
            _QUIETED.pop(name, None)
            continue  # the application's choice
        if level <= logging.DEBUG:
            logger.setLevel(logging.NOTSET)
            _QUIETED.pop(name, None)
        else:
            logger.setLevel(logging.CRITICAL)
            _QUIETED[name] = logging.CRITICAL


def configure(level: str | int, fmt: str) -> None:
    """Log to stderr in ``fmt`` (``"text"`` or ``"json"``): Conveyor's loggers, and those
    of the packages a worker runs tasks from, at ``level`` (a name such as ``"INFO"`` or
    ``"debug"``, or a number); every other logger at WARNING or above, but the broker
    clients' (``quiet_clients``) at CRITICAL unless ``level`` is DEBUG; Python warnings as
    lines of the ``py.warnings`` logger. Calling it again replaces the previous setup;
    handlers of your own are left alone. Raises ``ConfigurationError`` for a level or
    format it does not know, changing nothing."""
    number = parse_level(level)
    chosen = formatter(fmt)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler()
        handler.addFilter(JobContext())
        root.addHandler(handler)
    handler.setFormatter(chosen)
    root.setLevel(max(number, _QUIET))
    logging.captureWarnings(True)  # a library's warning is a line in the format too
    _setup.level = number
    for name in ("conveyor", *sorted(_setup.packages)):
        logging.getLogger(name).setLevel(number)
    quiet_clients(number)


def attach(packages: Iterable[str]) -> None:
    """What a ``Worker`` does when it is made: put ``JobContext`` on the root logger's
    handlers (once each), and, if ``configure`` was called, log ``packages`` (the code the
    worker runs) at the configured level rather than at WARNING. A logging setup of one's
    own keeps its levels."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, JobContext) for f in handler.filters):
            handler.addFilter(JobContext())
    new = set(packages) - _setup.packages
    _setup.packages |= new
    if _setup.level is not None:
        for name in sorted(new):
            logging.getLogger(name).setLevel(_setup.level)


# -- pool processes -------------------------------------------------------------------------


def levels() -> dict[str, int]:
    """The levels set in this process (``""`` is the root), for a pool process to copy, so
    it builds and sends only the records the parent would write."""
    found = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):  # one atomic copy
        if isinstance(logger, logging.Logger) and logger.level:
            found[name] = logger.level
    return found


class _Forward(logging.Handler):
    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send
        self.addFilter(JobContext())  # here, in the process and thread the job runs in

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = portable(record)
            try:
                self._send(("log", fields))
            except OSError:
                raise
            except Exception:  # an extra= value that does not pickle: send its repr
                plain = {k: v if isinstance(v, _PLAIN) else repr(v) for k, v in fields.items()}
                self._send(("log", plain))
        except OSError:
            pass  # the parent is gone; this process exits as soon as it notices
        except Exception:
            self.handleError(record)


def portable(record: logging.LogRecord) -> dict[str, Any]:
    """A record's fields with its message formatted and its traceback as text, so that it
    pickles and needs nothing of this process to be written elsewhere."""
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        fields["exc_text"] = record.exc_text or logging.Formatter().formatException(record.exc_info)
    fields["exc_info"] = None
    fields.pop("message", None)
    return fields


def forward(send: Callable[[tuple[Any, ...]], None], parent_levels: dict[str, int]) -> None:
    """In a pool process: send every record at the parent's levels as ``("log", fields)``,
    Python warnings included, so nothing but a crash writes to stderr directly."""
    for name, number in parent_levels.items():
        logging.getLogger(name or None).setLevel(number)
    logging.getLogger().addHandler(_Forward(send))
    logging.captureWarnings(True)


def replay(fields: dict[str, Any]) -> None:
    """In the parent: write a pool process's record through this process's own handlers."""
    record = logging.makeLogRecord(fields)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
