"""The kit users and adapter authors test with.

::

    from conveyor import Conveyor
    from conveyor.testing import FakeClock, drain

    app = Conveyor("memory://", clock=FakeClock())   # in your test fixture
    job = send_welcome_email.delay(user_id)
    drain(app)                                       # run every queued job, here and now
    assert job.result() == "sent"

``conveyor.testing.conformance`` holds the conformance suite every broker adapter must pass;
it needs pytest, so it is not imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._app import Conveyor
from .._clock import FakeClock
from ..brokers.memory import MemoryBroker

__all__ = ["FakeClock", "MemoryBroker", "drain"]


def drain(
    app: Conveyor,
    queues: Sequence[str] | None = None,
    *,
    timeout: float | None = 60.0,
    concurrency: int = 1,
) -> int:
    """Run jobs in this process until ``queues`` (default: every queue with jobs, and those
    of the registered tasks) have nothing queued or running; return how many finished.

    Jobs scheduled for later stay scheduled: advance a ``FakeClock`` and drain again."""
    from ..worker import Worker

    if queues is None:
        names = {s.queue for s in app.broker.stats()}
        names |= {t.opts.queue for t in app.registry.values()}
        queues = sorted(names) or ["default"]
    worker = Worker(app, queues, concurrency=concurrency, lease=60.0, grace=0.0)
    return worker.drain(timeout=timeout)
