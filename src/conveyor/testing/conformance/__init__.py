"""The conformance suite: the broker and key-value contracts, as tests every adapter must pass.

An adapter is done when it passes. Use it from a test module that provides two fixtures,
``broker`` (a fresh, empty ``Broker`` per test, closed afterwards) and ``clock``::

    import pytest
    from conveyor._clock import FakeClock
    from conveyor.testing.conformance import BrokerConformance, KeyValueConformance

    @pytest.fixture
    def clock() -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def broker(clock, tmp_path):
        b = MyBroker(str(tmp_path / "jobs.db"), clock=clock)
        yield b
        b.close()

    class TestMyBroker(BrokerConformance): ...
    class TestMyKeyValue(KeyValueConformance): ...   # checks ``broker.kv``

``clock`` is the ``FakeClock`` the broker was built with: leases, ETAs and TTLs are then
driven by advancing it, with no sleeping. It is ``None`` when the backend keeps its own time
(Redis expiry): the tests then sleep, in units of ``real_time_unit`` seconds (a class
attribute an adapter may raise if its backend's timers are coarse).

Call ``pytest.register_assert_rewrite("conveyor.testing.conformance")`` in a ``conftest.py``
before this module is imported, so failures show the values compared. Needs pytest, a
development dependency.
"""

from __future__ import annotations

from ._broker import BrokerConformance
from ._dependencies import DependencyConformance
from ._helpers import BLOCK as BLOCK
from ._helpers import LONG as LONG
from ._helpers import PROMPT as PROMPT
from ._helpers import Timeline
from ._helpers import dependent as dependent
from ._helpers import envelope as envelope
from ._helpers import fetch as fetch
from ._helpers import fetch_one as fetch_one
from ._helpers import finish as finish
from ._helpers import status as status
from ._helpers import worker_info as worker_info
from ._key_value import KeyValueConformance
from ._values import ValueConformance

__all__ = [
    "BrokerConformance",
    "DependencyConformance",
    "KeyValueConformance",
    "Timeline",
    "ValueConformance",
]
