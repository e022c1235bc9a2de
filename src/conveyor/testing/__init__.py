"""The kit users and adapter authors test with:

    from conveyor import Conveyor
    from conveyor.testing import FakeClock, drain

    app = Conveyor("memory://", clock=FakeClock())   # in your test fixture
    job = send_welcome_email.delay(user_id)
    drain(app)              # run every job, its retries and what it enqueues, here and now
    assert job.result() == "sent"

``drain`` moves a ``FakeClock`` to each retry and delayed job instead of sleeping, and every
way it could run forever ends in ``DrainIncomplete`` (see ``conveyor.testing._drain``).
``use_memory(app)`` runs an application's own tasks on a fresh memory broker. The pytest
plugin (``conveyor.testing.pytest_plugin``, loaded by pytest on its own) has the fixtures
``conveyor_clock``, ``conveyor_app`` and ``conveyor_worker``.

``conveyor.testing.conformance`` holds the conformance suite every broker adapter must pass;
it needs pytest, so it is not imported here. Nothing is imported until first used, so the
pytest plugin costs a test run that does not use it nothing beyond ``import conveyor``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._clock import FakeClock as FakeClock
    from .._errors import DrainIncomplete as DrainIncomplete
    from ..brokers.memory import MemoryBroker as MemoryBroker
    from ._drain import DrainReport as DrainReport
    from ._drain import drain as drain
    from ._memory_app import use_memory as use_memory

__all__ = ["DrainIncomplete", "DrainReport", "FakeClock", "MemoryBroker", "drain", "use_memory"]

_WHERE = {
    "FakeClock": "conveyor._clock",
    "DrainIncomplete": "conveyor._errors",
    "MemoryBroker": "conveyor.brokers.memory",
    "DrainReport": "conveyor.testing._drain",
    "drain": "conveyor.testing._drain",
    "use_memory": "conveyor.testing._memory_app",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'conveyor.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
