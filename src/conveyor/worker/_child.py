"""A process-pool child: ``python -m conveyor.worker._child FD`` (a fresh interpreter).

It reads ``(sys.path, app spec, trusted packages, log levels, worker)`` from the socket
``FD``, imports the app, answers ``ready``, then runs one job per message until it reads
``None``. A closed socket means the parent is gone: the child exits at once.

The app's middleware (as its module builds it here) runs its lifecycle hooks when the child
starts and when it is told to stop, and its run hooks around each job; what the worker
decides about a job (``on_running``, ``on_outcome``...) runs in the worker process.

Its log records go to the parent as ``("log", fields)`` at the parent's levels, stamped with
the running job's fields here, and the parent's handlers write them (``_logging.forward``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import msgspec

from .. import _logging
from .._app import Conveyor
from .._errors import ConfigurationError
from .._hooks import Hooks
from .._message import Delivery
from ..middleware import WorkerProcess
from ._attempt import Result, Results, acall, call, make_current_job, raised
from ._describe import name_of, text_of
from ._leftovers import let_go
from ._middleware import wrap
from ._resolve import Resolver

Job = tuple[bytes, int] | None


def import_app(spec: str) -> Conveyor:
    """``module`` or ``module:attribute``, found the way ``conveyor worker`` finds it."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    found: Any = getattr(module, attr or "app", None)
    if isinstance(found, Conveyor):
        return found
    apps = [v for v in vars(module).values() if isinstance(v, Conveyor)]
    if attr or len(apps) != 1:
        raise ConfigurationError(f"cannot find the Conveyor application in {spec!r}")
    return apps[0]


def main(fd: int) -> None:
    _leave_stop_signals_to_the_worker()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the parent blocked them to start us
    os.set_inheritable(fd, False)  # a program a task starts must not keep the socket open
    conn = Connection(fd)
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    try:
        path, spec, trusted, levels, worker = conn.recv()
        _logging.forward(send, levels)  # first, so the app's import-time lines reach the parent
        sys.path[:] = path
        app = import_app(spec)
    except BaseException as exc:
        send(("error", f"{name_of(type(exc))}: {text_of(exc)}"))
        return
    resolver = Resolver(app.registry, trusted)
    results = Results(app.codec, app.max_result)
    hooks = Hooks(app.middleware) if app.middleware else None
    me = _me(worker)
    if hooks is not None:
        hooks.worker_start(me)
    jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
    threading.Thread(target=_listen, args=(conn, jobs), daemon=True).start()
    before = threading.enumerate()
    send(("ready", None))
    while (job := jobs.get()) is not None:
        payload, deliveries = job
        send(("done", _run(resolver, results, payload, deliveries, send, hooks=hooks)))
    if hooks is not None:
        hooks.worker_stop(me)
    let_go(before, f"worker process {os.getpid()}")


def _leave_stop_signals_to_the_worker() -> None:
    """SIGINT and SIGTERM do nothing here: Heroku and a terminal's Ctrl-C signal the whole
    process group, and the worker decides what happens to the job. A handler rather than
    ``SIG_IGN``, which every process a task starts would inherit (``Popen.terminate()``
    would not end a helper): exec resets a handler to the default, and a fork gets the
    defaults back below."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore)
        signal.siginterrupt(signum, False)  # restart system calls, as when ignored
    os.register_at_fork(after_in_child=_default_stop_signals)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _default_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _me(worker: WorkerProcess | None) -> WorkerProcess:
    """This child, as its lifecycle hooks see it: the worker it runs jobs for."""
    if worker is None:  # started by hand, not by a worker
        return WorkerProcess("?", (), "processes", 1, child=True)
    return msgspec.structs.replace(worker, child=True, pid=os.getpid())


def _listen(conn: Connection, jobs: queue.SimpleQueue[Job]) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone; its jobs come back by lease expiry
        jobs.put(job)
        if job is None:
            return


def _run(
    resolver: Resolver,
    results: Results,
    payload: bytes,
    deliveries: int,
    send: Any,
    *,
    hooks: Hooks | None,
) -> Result:
    try:
        message = results.codec.decode_message(payload)
        fn = resolver.resolve(message.task).fn
    except BaseException as exc:  # the parent checked both already; only a race gets here
        return raised(exc)
    if hooks is not None:
        fn = wrap(hooks, fn, message)
    delivery = Delivery(message.id, message.queue, b"", "", deliveries)
    # The job's id goes along: a thread this job leaves running may report during the next.
    job = make_current_job(message, delivery, lambda v, n: send(("progress", message.id, v, n)))
    if inspect.iscoroutinefunction(fn):
        try:
            return asyncio.run(acall(fn, message, job, results))
        except BaseException as exc:
            return raised(exc)
    return call(fn, message, job, results)


if __name__ == "__main__":
    main(int(sys.argv[1]))
