"""Schedules read in the user's time zone: ``@app.periodic(cron=..., tz="Europe/Paris")``,
across both daylight saving changes of 2026 in Paris and in New York, on the FakeClock."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor._cron import next_fire
from conveyor.scheduler import Schedule
from conveyor.testing import FakeClock, drain

PARIS, NEW_YORK = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")


def local(zone: ZoneInfo, *fields: int, fold: int = 0) -> float:
    """Epoch seconds of a wall time in ``zone``."""
    return dt.datetime(*fields, tzinfo=zone, fold=fold).timestamp()


def runs(zone: str, cron: str, first: dt.date, last: dt.date) -> list[str]:
    """Drain an app with one schedule on the FakeClock from just before ``first`` to just
    before ``last`` (midnight UTC); the wall times, in ``zone``, at which its job ran."""
    start = dt.datetime.combine(first, dt.time(), dt.UTC).timestamp() - 60
    clock = FakeClock(start)
    app = Conveyor("memory://", clock=clock)
    seen: list[float] = []

    @app.periodic(cron=cron, tz=zone)
    def job() -> None:
        seen.append(clock.time())

    drain(app, until=dt.datetime.combine(last, dt.time(), dt.UTC).timestamp() - 60)
    tz = ZoneInfo(zone)
    return [dt.datetime.fromtimestamp(t, tz).strftime("%m-%d %H:%M%z") for t in seen]


def test_spring_forward_in_paris_runs_a_time_in_the_gap_once_just_after_it() -> None:
    assert runs("Europe/Paris", "30 2 * * *", dt.date(2026, 3, 27), dt.date(2026, 3, 31)) == [
        "03-27 02:30+0100",
        "03-28 02:30+0100",
        "03-29 03:00+0200",  # 02:00 became 03:00: 02:30 never happened
        "03-30 02:30+0200",
    ]


def test_fall_back_in_paris_runs_a_repeated_time_once() -> None:
    assert runs("Europe/Paris", "30 2 * * *", dt.date(2026, 10, 24), dt.date(2026, 10, 27)) == [
        "10-24 02:30+0200",
        "10-25 02:30+0200",  # 03:00 became 02:00: the second 02:30 does not run
        "10-26 02:30+0100",
    ]


def test_new_york_both_changes() -> None:
    spring = runs("America/New_York", "30 2 * * *", dt.date(2026, 3, 7), dt.date(2026, 3, 10))
    assert spring == ["03-07 02:30-0500", "03-08 03:00-0400", "03-09 02:30-0400"]
    fall = runs("America/New_York", "30 1 * * *", dt.date(2026, 10, 31), dt.date(2026, 11, 3))
    assert fall == ["10-31 01:30-0400", "11-01 01:30-0400", "11-02 01:30-0500"]


def test_an_hourly_schedule_follows_the_clock_through_both_changes() -> None:
    spring = runs("Europe/Paris", "0 * * * *", dt.date(2026, 3, 29), dt.date(2026, 3, 30))
    assert spring[:4] == ["03-29 01:00+0100", "03-29 03:00+0200", "03-29 04:00+0200", spring[3]]
    assert len(spring) == 24  # one a real hour: 03:00 follows 01:00
    fall = runs("Europe/Paris", "0 * * * *", dt.date(2026, 10, 25), dt.date(2026, 10, 26))
    assert fall[:3] == [
        "10-25 02:00+0200",
        "10-25 02:00+0100",  # 03:00 became 02:00 again: an hourly job runs in both
        "10-25 03:00+0100",
    ]
    assert len(fall) == 24


def test_several_times_in_the_gap_run_once_and_strictly_later_each_time() -> None:
    fires = []
    t = dt.datetime(2026, 3, 29, 0, 0, tzinfo=dt.UTC)
    for _ in range(4):
        t = next_fire("0,15,30,45 2,3 * * *", t, "Europe/Paris")
        fires.append(t.astimezone(PARIS).strftime("%H:%M%z"))
    assert fires == ["03:00+0200", "03:15+0200", "03:30+0200", "03:45+0200"]


def test_utc_stays_the_default_and_keeps_its_job_ids() -> None:
    app = Conveyor("memory://")

    @app.periodic(cron="30 2 * * *", name="myapp.tasks:cleanup")
    def cleanup() -> None: ...

    (schedule,) = app.schedules
    assert schedule.tz == "UTC"
    assert schedule == Schedule("myapp.tasks:cleanup", cron="30 2 * * *")
    # Written down before zones existed: a rolling upgrade must not fire a tick twice.
    assert (
        schedule.job_id(1_775_442_600_000) == "periodic.myapp.tasks_cleanup.def8487f.1775442600000"
    )
    assert schedule.unique_key == "conveyor:periodic:myapp.tasks:cleanup"
    assert schedule.next_after(1_775_400_000) == 1_775_442_600.0


def test_a_zoned_schedule_has_its_zone_and_next_after() -> None:
    app = Conveyor("memory://")

    @app.periodic(cron="0 9 * * mon-fri", tz="Europe/Paris")
    def report() -> None: ...

    (schedule,) = app.schedules
    assert schedule.tz == "Europe/Paris"
    friday_evening = local(PARIS, 2026, 7, 3, 18)
    assert schedule.next_after(friday_evening) == local(PARIS, 2026, 7, 6, 9)  # Monday 09:00


@pytest.mark.parametrize("name", ["Europe/Pariss", "paris", "", "../etc/passwd", "UTC+2"])
def test_a_bad_zone_is_a_configuration_error_naming_it(name: str) -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="unknown time zone") as info:
        app.periodic(cron="0 9 * * *", tz=name)
    assert repr(name) in str(info.value)


def test_a_zone_is_a_name_and_only_for_cron() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="IANA time zone name"):
        app.periodic(cron="0 9 * * *", tz=PARIS)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="IANA time zone name"):
        app.periodic(cron="0 9 * * *", tz=["Europe/Paris"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="applies to cron= schedules"):
        app.periodic(every=3600, tz="Europe/Paris")
