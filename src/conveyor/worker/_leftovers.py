"""Threads that tasks started and left running, which would keep a stopped worker alive.

At exit the interpreter waits for every non-daemon thread, and for the threads of every
``concurrent.futures`` thread pool. A task that starts one and returns (a forgotten
``Thread(...).start()``, an executor never shut down, a client library's flusher) would make
a worker hang for ever after SIGTERM, its jobs long handed back. So once a worker (or a pool
process) has stopped, ``let_go`` names such threads at WARNING and tells the interpreter
not to wait for them: they end with the process, as daemon threads do.

Telling it uses the interpreter's own bookkeeping (``threading._shutdown_locks``, on Python
3.11 and 3.12; ``concurrent.futures.thread._threads_queues``); where that is missing the
warning says that the process waits for them.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Collection
from typing import Any

log = logging.getLogger("conveyor.worker")

_NAMES_SHOWN = 20


def lingering(before: Collection[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` (a ``threading.enumerate()``) that exit would wait for."""
    pools = _pool_queues()
    here, main = threading.current_thread(), threading.main_thread()
    return [
        t
        for t in threading.enumerate()
        if t not in before
        and t is not here
        and t is not main
        and t.is_alive()
        and (not t.daemon or (pools is not None and t in pools))
    ]


def let_go(before: Collection[threading.Thread], who: str) -> None:
    """Warn about the threads ``lingering(before)`` and keep the exit from waiting for them.
    ``who`` is what is exiting ("the worker", "worker process 123")."""
    threads = lingering(before)
    if not threads:
        return
    released = [_release(t) for t in threads]
    shown = ", ".join(repr(t.name[:200]) for t in threads[:_NAMES_SHOWN])
    if len(threads) > _NAMES_SHOWN:
        shown += f" and {len(threads) - _NAMES_SHOWN} more"
    if all(released):
        log.warning(
            "%d thread(s) that tasks started are still running: %s; %s exits without "
            "waiting for them (a task's threads must end with it, or be daemon threads)",
            len(threads),
            shown,
            who,
        )
    else:
        log.warning(
            "%d thread(s) that tasks started are still running: %s; this Python gives no "
            "way to stop waiting for them, so %s exits only when they end (a task's "
            "threads must end with it, or be daemon threads)",
            len(threads),
            shown,
            who,
        )


def _release(thread: threading.Thread) -> bool:
    """Make the interpreter's exit not wait for ``thread``; False where it cannot."""
    pools = _pool_queues()
    if pools is not None:
        pools.pop(thread, None)  # concurrent.futures joins what is left in here at exit
        if thread.daemon:
            return True
    locks: Any = getattr(threading, "_shutdown_locks", None)
    guard: Any = getattr(threading, "_shutdown_locks_lock", None)
    tstate: Any = getattr(thread, "_tstate_lock", None)
    if locks is None or guard is None:
        return False
    with guard:
        if tstate is not None:
            locks.discard(tstate)  # threading._shutdown joins every lock left in here
    thread._daemonic = True  # type: ignore[attr-defined]  # and it reports so
    return True


def _pool_queues() -> Any:
    """``concurrent.futures``' registry of its pools' threads, if that module is in use."""
    module = sys.modules.get("concurrent.futures.thread")
    return getattr(module, "_threads_queues", None) if module is not None else None
