"""``DatabaseConnections``: Django's database connections around each job, as Django
handles them around each request.

Django opens a connection per thread on first use and keeps it for ``CONN_MAX_AGE``
seconds; its request cycle calls ``close_old_connections`` when a request starts and when
it ends, which closes a connection past its age, one whose errors left it unusable, and one
whose autocommit a request turned off and did not restore. A worker thread runs one job
after another as a server thread runs requests, so this middleware does the same in
``before_run`` and ``after_run``, where the job runs (its thread, or its child process
with ``--pool processes``).

One more case a request cannot leave but a job can: a transaction still open when the job
ended (``atomic()`` entered and never exited, say). The connection is closed, which rolls
that transaction back, and dropped, so the next job on this thread gets a fresh one
instead of a connection stuck in a transaction it does not know about.

A connection that was already inside a transaction when the job started is not the job's
(a test that runs jobs in its own thread, inside its test transaction): it is left alone.

``async def`` tasks run on the worker's event loop, where Django's database calls go
through ``sync_to_async``: those are handled by the Django task's runner (``_runner``),
which gives each run its own thread for them and closes its connections at the end.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from django.db import connections

from ...middleware import Message, Middleware, Run

log = logging.getLogger("conveyor.django")

# The aliases whose connection was in a transaction when this job started (not the job's).
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "conveyor_django_held", default=frozenset()
)


class DatabaseConnections(Middleware):
    """Closes the database connections Django would close between two requests, before
    and after each job (see the module docstring). ``settings.CONVEYOR``'s app has it
    first among its middleware."""

    def before_run(self, message: Message) -> None:
        if _on_event_loop():
            return
        opened = connections.all(initialized_only=True)
        held = frozenset(c.alias for c in opened if c.in_atomic_block)
        _held.set(held)
        tidy(held, message.id)

    def after_run(self, message: Message, run: Run) -> None:
        if _on_event_loop():
            return
        tidy(_held.get(), message.id)


def tidy(held: frozenset[str], job_id: str) -> None:
    """``close_old_connections`` for the connections of this thread but those in ``held``,
    and a connection left inside a transaction closed and dropped."""
    for conn in connections.all(initialized_only=True):
        if conn.alias in held:
            continue
        if conn.in_atomic_block:
            log.warning(
                "job %s left a transaction open on database %r: rolling it back (the "
                "connection is closed, and the next job opens a new one)",
                job_id,
                conn.alias,
            )
            try:
                conn.close()
            finally:
                del connections[conn.alias]
        else:
            conn.close_if_unusable_or_obsolete()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
