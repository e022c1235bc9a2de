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

from .._clock import FakeClock
from ..brokers.memory import MemoryBroker
from ..worker import drain

__all__ = ["FakeClock", "MemoryBroker", "drain"]
