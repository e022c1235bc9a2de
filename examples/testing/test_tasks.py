"""Unit tests of the shop's tasks: no worker process, no server, no sleeping."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from tasks import convert, fetch_rate, morning_report

from conveyor import Conveyor, chain
from conveyor.testing import FakeClock, drain

PARIS = ZoneInfo("Europe/Paris")


def test_a_rate_is_fetched_after_a_retry(conveyor_app: Conveyor) -> None:
    job = fetch_rate.delay("USD")
    report = drain(conveyor_app)  # the retry's backoff passes on the FakeClock
    assert job.result() == 1.08
    assert report.ran == 2  # the attempt that timed out, then the retry


def test_a_chain_converts_with_the_fetched_rate(conveyor_app: Conveyor) -> None:
    job = chain(fetch_rate.s("JPY"), convert.s(1000)).delay()
    drain(conveyor_app)
    assert job.result() == 162_500


def test_the_morning_report_runs_on_weekdays_at_six_in_paris(
    conveyor_app: Conveyor, conveyor_clock: FakeClock
) -> None:
    conveyor_clock.set(dt.datetime(2026, 3, 27, tzinfo=PARIS).timestamp())  # a Friday
    drain(conveyor_app, until=dt.datetime(2026, 4, 4, tzinfo=PARIS))  # 8 days, a clock change
    assert conveyor_app.store.get("reports") == 6  # Fri, then Mon to Fri
    assert morning_report.name in {s.name for s in conveyor_app.schedules}
