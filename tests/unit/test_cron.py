"""Cron parsing and ``next_fire``: pure, checked against a minute-by-minute oracle."""

from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conveyor import ConfigurationError
from conveyor._cron import next_fire, parse_cron

UTC = dt.UTC


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * *", at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 1)),
        ("*/5 * * * *", at(2024, 1, 1, 0, 4) + dt.timedelta(seconds=59), at(2024, 1, 1, 0, 5)),
        ("*/5 * * * *", at(2024, 1, 1, 0, 5), at(2024, 1, 1, 0, 10)),  # strictly after
        ("0 * * * *", at(2024, 1, 1, 23, 30), at(2024, 1, 2, 0, 0)),
        ("15,45 9-17 * * *", at(2024, 1, 1, 17, 46), at(2024, 1, 2, 9, 15)),
        ("0 9-17/4 * * *", at(2024, 1, 1, 13, 1), at(2024, 1, 1, 17, 0)),
        ("10/20 * * * *", at(2024, 1, 1, 0, 31), at(2024, 1, 1, 0, 50)),
        ("0 0 31 * *", at(2024, 2, 1), at(2024, 3, 31)),  # skips months without a 31st
        ("0 0 29 feb *", at(2024, 3, 1), at(2028, 2, 29)),  # leap day
        ("0 12 * * mon-fri", at(2024, 1, 5, 12, 0), at(2024, 1, 8, 12, 0)),  # Fri -> Mon
        ("0 0 * * 0", at(2024, 1, 1), at(2024, 1, 7)),  # Sunday as 0
        ("0 0 * * 7", at(2024, 1, 1), at(2024, 1, 7)),  # ... and as 7
        ("0 0 * * SUN", at(2024, 1, 1), at(2024, 1, 7)),
        ("0 0 1 JAN,Jul *", at(2024, 1, 2), at(2024, 7, 1)),
        # Both day fields restricted: either matches (1st of the month OR a Friday).
        ("0 0 1 * fri", at(2024, 1, 1), at(2024, 1, 5)),
        ("0 0 1 * fri", at(2024, 1, 26), at(2024, 2, 1)),
        # '*/n' in day-of-month counts as unrestricted: both must match.
        ("0 0 */2 * mon", at(2024, 1, 1), at(2024, 1, 15)),
        ("@hourly", at(2024, 1, 1, 5, 0), at(2024, 1, 1, 6, 0)),
        ("@daily", at(2024, 1, 1, 5, 0), at(2024, 1, 2)),
        ("@weekly", at(2024, 1, 1), at(2024, 1, 7)),
        ("@monthly", at(2024, 1, 31, 23, 59), at(2024, 2, 1)),
        ("@yearly", at(2024, 6, 1), at(2025, 1, 1)),
        ("@annually", at(2024, 6, 1), at(2025, 1, 1)),
        ("59 23 31 12 *", at(2024, 12, 31, 23, 59), at(2025, 12, 31, 23, 59)),
    ],
)
def test_next_fire(expr: str, after: dt.datetime, expected: dt.datetime) -> None:
    assert next_fire(expr, after) == expected


def test_naive_is_utc_and_other_zones_are_converted() -> None:
    assert next_fire("0 * * * *", dt.datetime(2024, 1, 1, 5, 30)) == at(2024, 1, 1, 6)
    paris = dt.timezone(dt.timedelta(hours=1))
    assert next_fire("0 * * * *", dt.datetime(2024, 1, 1, 5, 30, tzinfo=paris)) == at(2024, 1, 1, 5)


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day-of-week"),
        ("* * * foo *", "month"),
        ("* * * * mon-sux", "day-of-week"),
        ("*/0 * * * *", "minute"),
        ("5-1 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("*/x * * * *", "minute"),
        ("\u00b2 * * * *", "minute"),  # a superscript two: a digit to str.isdigit, not to int
        ("\u0663 * * * *", "minute"),  # an Arabic-Indic three
        ("*/\u0663 * * * *", "minute"),
        ("0 0 30 2 *", "day-of-month"),  # never fires
    ],
)
def test_bad_field_is_named(expr: str, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        parse_cron(expr)


@pytest.mark.parametrize("expr", ["* * * *", "* * * * * *", "", "@often"])
def test_bad_shape(expr: str) -> None:
    with pytest.raises(ConfigurationError, match="cron expression"):
        parse_cron(expr)


# -- oracle: walk minute by minute and test each field the slow, obvious way ----------------


def _matches(expr: str, t: dt.datetime) -> bool:
    spec = parse_cron(expr)
    fields = expr.split()
    dom, dow = t.day in spec.days, t.isoweekday() % 7 in spec.weekdays
    restricted = not fields[2].startswith("*") and not fields[4].startswith("*")
    day = (dom or dow) if restricted else (dom and dow)
    return t.minute in spec.minutes and t.hour in spec.hours and t.month in spec.months and day


def _field(values: list[int], low: int, high: int) -> st.SearchStrategy[str]:
    number = st.sampled_from(values)
    rng = st.tuples(number, number).map(lambda ab: f"{min(ab)}-{max(ab)}")
    step = st.integers(1, max(1, (high - low) // 2))
    return st.one_of(
        st.just("*"),
        number.map(str),
        rng,
        step.map(lambda s: f"*/{s}"),
        st.tuples(rng, step).map(lambda rs: f"{rs[0]}/{rs[1]}"),
        st.lists(number, min_size=1, max_size=3).map(lambda xs: ",".join(map(str, xs))),
    )


expressions = st.tuples(
    _field(list(range(60)), 0, 59),
    _field(list(range(24)), 0, 23),
    _field(list(range(1, 29)), 1, 28),
    _field(list(range(1, 13)), 1, 12),
    _field(list(range(8)), 0, 7),
).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(
    expressions, st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2090, 1, 1))
)
def test_next_fire_agrees_with_the_definition(expr: str, after: dt.datetime) -> None:
    got = next_fire(expr, after)
    start = after.replace(tzinfo=UTC, second=0, microsecond=0)
    assert got > after.replace(tzinfo=UTC)
    assert got.second == 0 and _matches(expr, got)
    # Nothing between: check every minute for a bounded stretch (and sample beyond it).
    t = start + dt.timedelta(minutes=1)
    checked = 0
    while t < got and checked < 3000:
        assert not _matches(expr, t), (expr, after, t, got)
        t += dt.timedelta(minutes=1)
        checked += 1
    while t < got:
        assert not _matches(expr, t), (expr, after, t, got)
        t += dt.timedelta(minutes=97)


# -- time zones: the same oracle, read on a zone's wall clock -----------------------------

ZONES = [
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute daylight saving shift
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Sao_Paulo",  # southern summer, and no daylight saving since 2019
    "Asia/Kolkata",  # +05:30, no changes
    "UTC",
]


def _offset(t: dt.datetime, zone: ZoneInfo) -> dt.timedelta:
    return t.astimezone(zone).utcoffset() or dt.timedelta(0)


def _gap_matches(expr: str, change: dt.datetime, zone: ZoneInfo) -> bool:
    """A spring-forward at ``change`` skipped a wall time that ``expr`` names."""
    before, after = _offset(change - dt.timedelta(seconds=1), zone), _offset(change, zone)
    wall = (change + before).replace(tzinfo=None)
    while wall < (change + after).replace(tzinfo=None):
        if _matches(expr, wall):
            return True
        wall += dt.timedelta(minutes=1)
    return False


@functools.cache
def _changes(name: str, year: int) -> list[dt.datetime]:
    """The instants in ``year`` where ``name`` changes its UTC offset."""
    zone, found = ZoneInfo(name), []
    t = dt.datetime(year, 1, 1, tzinfo=UTC)
    while t.year == year:
        nxt = t + dt.timedelta(hours=6)
        if _offset(nxt, zone) != _offset(t, zone):
            low, high = t, nxt
            while high - low > dt.timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (
                    (middle, high) if _offset(middle, zone) == _offset(t, zone) else (low, middle)
                )
            found.append(high.replace(microsecond=0))
        t = nxt
    return found


@st.composite
def zoned_starts(draw: st.DrawFn) -> tuple[str, dt.datetime]:
    """A zone and a start: anywhere in 2000-2090, or within three days before a change of
    that zone's offset (where the interesting cases are)."""
    name = draw(st.sampled_from(ZONES))
    anywhere = draw(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2090, 1, 1)))
    changes = _changes(name, draw(st.integers(2000, 2089)))
    if not changes or draw(st.booleans()):
        return name, anywhere.replace(tzinfo=UTC)
    before = dt.timedelta(seconds=draw(st.integers(0, 3 * 86400)))
    return name, draw(st.sampled_from(changes)) - before


def test_a_wildcard_fires_in_a_repeated_half_hour_whose_next_match_is_a_year_away() -> None:
    """Lord Howe falls back half an hour on 2000-03-26 (02:00 +11 -> 01:30 +10:30). Every
    minute of 1 a.m. on March Sundays matches 01:30-01:59 again; the next match after that
    is in March 2001, on the same offset as before the change, which once hid the change."""
    zone = "Australia/Lord_Howe"
    last_first_pass = dt.datetime(2000, 3, 25, 14, 59, tzinfo=dt.UTC)  # 01:59 +11
    fire = next_fire("* 1 * 3 0", last_first_pass, zone)
    assert fire == dt.datetime(2000, 3, 25, 15, 0, tzinfo=dt.UTC)  # 01:30 +10:30, again
    assert fire.astimezone(ZoneInfo(zone)).fold == 1
    last_second_pass = dt.datetime(2000, 3, 25, 15, 29, tzinfo=dt.UTC)  # 01:59 +10:30
    assert next_fire("* 1 * 3 0", last_second_pass, zone) == dt.datetime(
        2001, 3, 3, 14, 0, tzinfo=dt.UTC
    )  # 01:00 +11 on Sunday 2001-03-04


@settings(max_examples=150, deadline=None)
@given(expressions, zoned_starts())
def test_zoned_fires_increase_and_match_the_zones_wall_clock(
    expr: str, zoned: tuple[str, dt.datetime]
) -> None:
    _check_zoned(expr, *zoned)


@st.composite
def times_a_change_moves(draw: st.DrawFn) -> tuple[str, str, dt.datetime]:
    """A fixed-time expression naming a wall time that a change skips or repeats (and maybe
    others), its zone, and a start within three days before the change."""
    name = draw(st.sampled_from([z for z in ZONES if z not in ("UTC", "Asia/Kolkata")]))
    changes = _changes(name, draw(st.integers(2000, 2089)))
    if not changes:
        changes = _changes(name, 2010)
    change, zone = draw(st.sampled_from(changes)), ZoneInfo(name)
    before, after = _offset(change - dt.timedelta(seconds=1), zone), _offset(change, zone)
    first, last = sorted(
        [(change + before).replace(tzinfo=None), (change + after).replace(tzinfo=None)]
    )
    span = int((last - first).total_seconds() // 60)
    wall = first + dt.timedelta(minutes=draw(st.integers(0, span - 1)))
    minutes = draw(st.lists(st.integers(0, 59), max_size=2))
    hours = draw(st.lists(st.integers(0, 23), max_size=1))
    expr = (
        f"{','.join(map(str, [wall.minute, *minutes]))} "
        f"{','.join(map(str, [wall.hour, *hours]))} "
        f"{draw(st.sampled_from(['*', str(wall.day)]))} * *"
    )
    start = change - dt.timedelta(seconds=draw(st.integers(1, 3 * 86400)))
    return expr, name, start


@settings(max_examples=150, deadline=None)
@given(times_a_change_moves())
def test_fixed_times_a_change_skips_or_repeats_fire_once(
    case: tuple[str, str, dt.datetime],
) -> None:
    _check_zoned(*case)


def _check_zoned(expr: str, name: str, previous: dt.datetime) -> None:
    """Each fire, converted to the zone, matches the expression, except a fixed-time one's
    fire at the end of a spring-forward gap that swallowed a matching time; fires strictly
    increase; between two fires no instant matches, except a fixed-time expression's times
    repeated by a fall-back (they ran at their first occurrence)."""
    zone, wildcard = ZoneInfo(name), parse_cron(expr).wildcard
    for _ in range(3):
        fire = next_fire(expr, previous, name)
        assert fire > previous
        wall = fire.astimezone(zone)
        if not _matches(expr, wall.replace(tzinfo=None)):
            assert not wildcard and _gap_matches(expr, fire, zone), (expr, name, fire)
            event("a fixed time skipped by a spring-forward fired after the gap")
        elif not wildcard:
            assert wall.fold == 0, (expr, name, fire)
        if wall.fold == 1:
            event("a wildcard fired in a repeated hour")
        # Nothing in between: every minute of a bounded stretch, then a sample beyond it.
        t = previous.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        step, checked = dt.timedelta(minutes=1), 0
        while t < fire:
            here = t.astimezone(zone)
            repeat = not wildcard and here.fold == 1
            if repeat and _matches(expr, here.replace(tzinfo=None)):
                event("a fixed time repeated by a fall-back did not fire again")
            assert repeat or not _matches(expr, here.replace(tzinfo=None)), (expr, name, t, fire)
            if (
                step.seconds == 60
                and _offset(t + step, zone) > _offset(t, zone)
                and t + step < fire
            ):
                assert wildcard or not _gap_matches(expr, t + step, zone), (expr, name, t, fire)
            checked += 1
            if checked == 1500:
                step = dt.timedelta(minutes=97)
            t += step
        previous = fire
