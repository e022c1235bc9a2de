"""Every broker (``tests/brokers.py``, see ``conftest``) against what travels: values and
payloads arrive exactly as sent, or are refused before anything is written."""

from __future__ import annotations

from conveyor.testing.conformance import ValueConformance


class TestValues(ValueConformance):
    pass
