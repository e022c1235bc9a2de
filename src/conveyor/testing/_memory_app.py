"""``use_memory(app)``: run an application's own tasks on a fresh memory broker in a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .._clock import Clock
from ..brokers.memory import MemoryBroker

if TYPE_CHECKING:
    from .._app import Conveyor


@contextmanager
def use_memory(app: Conveyor, clock: Clock | None = None) -> Iterator[Conveyor]:
    """Point ``app`` at a fresh, empty memory broker (and ``clock``, if given) inside the
    ``with`` block, then give it back its own broker and clock.

    Tasks keep the app they were defined on, so this is how a test runs an application's
    real tasks (``from myapp.tasks import app, resize``) without its SQLite file or Redis:
    the app's own broker is neither opened nor touched. The memory broker is pinned: an
    ``app.close()`` in the code under test (a web app's shutdown hook) leaves it in place,
    rather than the next use opening the app's own broker. Not for an app that a worker is
    running meanwhile."""
    memory = MemoryBroker(clock or app.clock)
    with app._broker_lock:
        saved = app._broker, app._pinned, app.clock
        app._broker = app._pinned = memory
        if clock is not None:
            app.clock = clock
    try:
        yield app
    finally:
        with app._broker_lock:
            app._broker, app._pinned, app.clock = saved
        memory.close()
