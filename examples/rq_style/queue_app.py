"""The Conveyor app; workers may run callables from the `reports` package by name."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor(trust=["reports"])
