"""``conveyor schedules -A MODULE``: the app's periodic jobs and when each fires next.

Schedules live in code (``@app.periodic``), so this reads the app, not the broker: it works
before any worker has run, and opens no database.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from .._errors import ConfigurationError
from ..scheduler import Schedule
from ._load import app_options, load_app, use_url
from ._output import clock, console, emit_json, iso, json_option, span, table, text


def _every(seconds: float) -> str:
    """``every`` for people: 90 -> 1m30s, 0.5 -> 0.5s."""
    if seconds < 60:
        return f"every {seconds:g}s"
    parts, left = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "every " + "".join(parts)


def _zone(schedule: Schedule) -> dt.tzinfo | None:
    """The time zone the schedule's cron is read in (a zoneinfo name), None for UTC."""
    zone = getattr(schedule, "tz", None)
    if zone is None or str(zone) == "UTC":
        return None
    if isinstance(zone, dt.tzinfo):
        return zone
    try:
        return ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"schedule {schedule.name} names the time zone {zone!r}, which this system does "
            "not know: use an IANA name such as 'Europe/Paris' (pip install tzdata if none "
            "is known)"
        ) from exc


def _local(ts: float, zone: dt.tzinfo | None) -> str:
    """The fire time in the schedule's zone, with its offset (UTC's is +00:00)."""
    return dt.datetime.fromtimestamp(ts, zone or dt.UTC).isoformat(timespec="seconds")


def upcoming(schedule: Schedule, now: float, count: int) -> list[float]:
    fires = [schedule.next_after(now)]
    while len(fires) < count:
        fires.append(schedule.next_after(fires[-1]))
    return fires


def schedule_json(schedule: Schedule, fires: list[float]) -> dict[str, Any]:
    zone = _zone(schedule)
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "every": schedule.every,
        "tz": str(getattr(schedule, "tz", None) or "UTC"),
        "overlap": schedule.overlap,
        "catch_up": schedule.catch_up,
        "next_fire_at": iso(fires[0]),
        "next_fire_local": _local(fires[0], zone),
        "upcoming": [iso(t) for t in fires],
    }


@click.command()
@click.option(
    "-n",
    "--next",
    "count",
    type=click.IntRange(min=1, max=100),
    default=1,
    show_default=True,
    help="Show this many upcoming fire times of each schedule.",
)
@json_option
@app_options
def schedules(count: int, as_json: bool, app_spec: str | None, url: str | None) -> None:
    """The periodic jobs of your app (-A MODULE) with their next fire time, in UTC and,
    for a schedule with tz=, on its zone's wall clock."""
    if not app_spec:
        raise click.UsageError("schedules are defined in your code: pass -A MODULE")
    app, _ = load_app(app_spec)
    if url:
        use_url(app, url)  # checked like everywhere; the broker itself is not opened
    now = time.time()
    found = [(s, upcoming(s, now, count)) for s in app.schedules]
    if as_json:
        emit_json({"now": iso(now), "schedules": [schedule_json(s, f) for s, f in found]})
        return
    zoned = any(_zone(s) is not None for s, _ in found)
    times = ("next fire (UTC)", "in", *(("its time zone",) if zoned else ()))
    names = [s.name for s, _ in found]
    grid = table(f"Schedules of {app_spec}", names, ("name", "schedule", *times), whole=times)
    for s, fires in found:
        zone = _zone(s)
        rule = f"cron {s.cron}" if s.cron is not None else _every(s.every or 0)
        if s.overlap == "allow":
            rule += ", overlap allowed"
        cells = [s.name, rule, "\n".join(map(clock, fires))]
        cells.append("\n".join(span(t - now) for t in fires))
        if zoned:
            cells.append("\n".join(clock(t, zone) for t in fires) if zone else "UTC")
        grid.add_row(*map(text, cells))
    if not found:
        grid.caption = "no periodic jobs: declare them with @app.periodic(cron=... or every=...)"
    console().print(grid)
