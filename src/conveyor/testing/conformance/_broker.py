"""``BrokerConformance``: the whole ``Broker`` contract, composed of its parts."""

from __future__ import annotations

from typing import ClassVar

import pytest

from ..._clock import FakeClock
from ._cancel_wait import _CancelWaitTests
from ._delete import _DeleteTests
from ._dependencies import DependencyConformance
from ._enqueue import _EnqueueTests
from ._entries import _EntriesTests
from ._events import _EventsTests
from ._helpers import Timeline
from ._leases import _LeaseTests
from ._operations import _OperationsTests
from ._pause import _PauseTests
from ._requeue import _RequeueTests


# pytest collects a class's tests base by base in reverse MRO order, so the parts are listed
# last first: the suite runs in the order it always has (dependencies, enqueue, fetch,
# delays, leases, ..., operations, concurrency, then entries, requeue, pause, events,
# delete).
class BrokerConformance(
    _DeleteTests,
    _EventsTests,
    _PauseTests,
    _RequeueTests,
    _EntriesTests,
    _OperationsTests,
    _CancelWaitTests,
    _LeaseTests,
    _EnqueueTests,
    DependencyConformance,
):
    """The ``Broker`` port's contract (see ``conveyor.brokers._port``), dependencies
    included."""

    real_time_unit: ClassVar[float] = 0.1

    @pytest.fixture
    def timeline(self, clock: FakeClock | None) -> Timeline:
        return Timeline(clock, self.real_time_unit)
