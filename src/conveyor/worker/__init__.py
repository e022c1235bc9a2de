"""The worker: runs jobs with at-least-once delivery. It drives the broker port only, so the
same code runs on every adapter.

``Worker(app, ...).run()`` is what ``conveyor worker MODULE`` does; ``drain(app)`` runs
everything queued in the calling thread, for tests on ``memory://``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._message import DEFAULT_QUEUE
from ._resolve import top_package
from ._worker import Worker

if TYPE_CHECKING:
    from .._app import Conveyor

__all__ = ["Worker", "drain"]


def drain(
    app: Conveyor,
    queues: Sequence[str] | None = None,
    *,
    timeout: float | None = None,
    trust: Sequence[str] = (),
    concurrency: int = 8,
) -> int:
    """Run jobs until ``queues`` (default: every queue the app or the broker knows) have
    nothing queued or running; return how many finished.

    Meant for tests: besides ``app.trust`` and ``trust``, the packages that define the
    app's registered tasks are trusted, as if a worker had been started with their module.
    Jobs scheduled for later (a retry's backoff, ``delay=``) and those of a paused queue
    (``app.pause``) are left for a later drain.
    """
    if queues is None:
        known = {DEFAULT_QUEUE} | {t.opts.queue for t in app.registry.values()}
        known |= {s.queue for s in app.broker.stats()}
        queues = sorted(known)
    packages = {top_package(t.fn.__module__) for t in app.registry.values()}
    worker = Worker(
        app,
        queues,
        concurrency=concurrency,
        grace=0.0,
        trust=[*trust, *sorted(packages)],
    )
    return worker.drain(timeout)
