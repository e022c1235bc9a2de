"""Periodic jobs: ``@app.periodic(cron=... | every=...)`` and the ``Scheduler`` workers run.

Any number of schedulers (one per worker) may run against one broker; each tick is enqueued
once. How:

* **Fire times are deterministic.** Cron ticks come from ``_cron.next_fire``, read on the
  wall clock of the schedule's ``tz`` (UTC by default; see ``_cron`` for daylight saving
  time); ``every`` ticks are the multiples of the interval since the epoch, so every
  scheduler computes the same instants whatever time it started.
* **One claim per tick.** The scheduler that wins ``kv.set(claim, nx=True, ttl=CLAIM_TTL)``
  for (schedule, fire time) enqueues it; the others move on.
* **One job id per tick.** The job id is derived from (schedule, fire time) and enqueue is
  idempotent on the id, so even a scheduler that claims a tick again after a crash (its claim
  expired before it could record progress) cannot queue it twice while the first job's record
  lives (``result_ttl``).
* **Where it was.** The latest fire time handled is kept in the key-value store and only moves
  forward, so a restarted scheduler resumes there. On the very first start a schedule begins
  at the current time: nothing in the past is run.
* **Bounded catch-up.** Of the ticks that came due since then, the latest ``catch_up`` run
  and the older ones are skipped and logged.
* **Overlap.** ``overlap="skip"`` (the default) gives the jobs a uniqueness key, so a tick
  that comes while the previous run is queued, running or waiting for a retry is skipped
  (logged); ``"allow"`` enqueues regardless.

Key-value keys::

    conveyor:periodic:<name>:last         ticks up to it are handled, integer milliseconds
    conveyor:periodic:<name>:claim:<ms>   who enqueues the tick at <ms> (expires, CLAIM_TTL;
                                          one whose job cannot be built: when it is retried)
    conveyor:periodic:<name>:failed       the latest tick whose job could not be built (ms)
    conveyor:periodic:<name>              the uniqueness key of its jobs (overlap="skip")

Job ids: ``periodic.<name, sanitized>.<hash of name>.<fire time in ms>`` (the fire time is
an instant, so the id does not depend on the zone the schedule is read in).
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import inspect
import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import _checks
from ._backoff import RANDOM, Backoff
from ._cron import next_fire, parse_cron, time_zone
from ._errors import BrokerError, ConfigurationError, ConveyorError
from ._job import Job
from ._message import Envelope
from ._task import Signature, Task
from .stores._port import MAX_KEY, check_key

if TYPE_CHECKING:
    from ._app import Conveyor
    from ._hooks import Sending
    from .stores._port import KeyValue

__all__ = ["CLAIM_TTL", "Schedule", "Scheduler", "periodic"]

R = TypeVar("R")
log = logging.getLogger("conveyor.scheduler")
_AWAY_MAX = 30.0  # seconds between a scheduler's tries at most, while the broker is away

CLAIM_TTL = 300.0  # a claimer that dies before enqueueing delays its tick by at most this
_PREFIX = "conveyor:periodic:"
_NOT_ID = re.compile(r"[^A-Za-z0-9_.\-]")
_SCAN_LIMIT = 2000  # cron ticks walked one by one before looking back from `now` instead
_CRON_WINDOWS = (3600, 86400, 32 * 86400, 400 * 86400, 10 * 366 * 86400)  # seconds
_HOLD_MARGIN = 1000  # ms: a failed tick's claim ends this long before it is retried
_RETRY = 60_000  # ms: a tick whose job cannot be built is retried this often (or at each tick)
_RETELL = 600_000  # ms: a schedule's same build error is logged at ERROR at most this often
_FORBIDDEN = ("delay", "eta", "job_id", "connection")
_TICK_DIGITS = 13  # a fire time in ms, up to the year 2286: the longest key is a claim's


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


def _step_ms(every: float) -> int:
    """An interval in whole ms, rounded: ``2.01`` is 2010 (``2.01 * 1000`` is 2009.99...)."""
    return max(round(every * 1000), 1)


@dataclass(frozen=True)
class Schedule:
    """One periodic task. ``name`` is the task's registered name and the schedule's id;
    ``tz`` the IANA zone whose wall clock ``cron`` is read on."""

    name: str
    cron: str | None = None
    every: float | None = None  # seconds
    overlap: Literal["skip", "allow"] = "skip"
    catch_up: int = 1
    tz: str = "UTC"

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t`` (epoch seconds)."""
        return self._next_ms(_ms(t)) / 1000

    def ticks_between(self, start: float, end: float, limit: int | None = None) -> int:
        """How many fire times there are in ``(start, end]`` (epoch seconds), counted as
        ``due`` counts them (a cron schedule's walked, up to ``limit``)."""
        first, last = _ms(start), _ms(end)
        if self.every is not None:
            step = _step_ms(self.every)
            return max(0, last // step - first // step)
        return self._scan(first, last, limit)[1]

    def _next_ms(self, t: int) -> int:
        if self.every is not None:
            step = _step_ms(self.every)
            return (t // step + 1) * step
        assert self.cron is not None
        after = dt.datetime.fromtimestamp(t / 1000, dt.UTC)
        return _ms(next_fire(self.cron, after, self.tz).timestamp())

    def due(self, last: int, now: int) -> tuple[list[int], int | None]:
        """Fire times in ``(last, now]`` (ms) to run, the latest ``catch_up`` of them, and how
        many older ones are skipped (None: some, not counted)."""
        if self.every is not None:
            step = _step_ms(self.every)
            first, latest = (last // step + 1) * step, (now // step) * step
            if first > latest:
                return [], 0
            count = (latest - first) // step + 1
            run = [latest - i * step for i in reversed(range(min(count, self.catch_up)))]
            return run, count - len(run)
        # Cron cannot be walked backwards. Walk forward from `last`; after a long downtime
        # (too many ticks to walk) look back from `now` over growing windows instead.
        kept, count, complete = self._scan(last, now, _SCAN_LIMIT)
        if complete:
            return kept, count - len(kept)
        first, end = self._next_ms(last), now  # the ticks in (end, now] are counted
        kept, count = [], 0
        for window in _CRON_WINDOWS:
            start = max(last, now - window * 1000)
            older, n, _ = self._scan(start, end, None)  # each tick is walked once
            kept, count, end = (older + kept)[-self.catch_up :], count + n, start
            if first > start:  # the window holds every due tick: the count is exact
                return kept, count - len(kept)
            if len(kept) == self.catch_up:
                break
        return kept, None

    def _scan(self, start: int, now: int, limit: int | None) -> tuple[list[int], int, bool]:
        """The latest ``catch_up`` fire times in ``(start, now]``, how many there are, and
        whether the walk got to ``now`` within ``limit`` steps."""
        kept: collections.deque[int] = collections.deque(maxlen=self.catch_up)
        count, t = 0, self._next_ms(start)
        while t <= now:
            if limit is not None and count >= limit:
                return list(kept), count, False
            kept.append(t)
            count += 1
            t = self._next_ms(t)
        return list(kept), count, True

    def job_id(self, fire: int) -> str:
        digest = hashlib.sha1(self.name.encode(), usedforsecurity=False).hexdigest()[:8]
        return f"periodic.{_NOT_ID.sub('_', self.name)[:60]}.{digest}.{fire}"

    @property
    def unique_key(self) -> str:
        return _PREFIX + self.name


def _every_seconds(every: float | dt.timedelta) -> float:
    return _checks.seconds(
        "every", every, least=0.001, example="every=60 or every=timedelta(minutes=1)"
    )


def periodic(
    app: Conveyor,
    *,
    cron: str | None = None,
    every: float | dt.timedelta | None = None,
    name: str | None = None,
    overlap: str = "skip",
    catch_up: int = 1,
    tz: str = "UTC",
    **options: Any,
) -> Callable[[Callable[[], R]], Task[[], R]]:
    """The decorator behind ``@app.periodic``: registers the task and its schedule."""
    if (cron is None) == (every is None):
        raise ConfigurationError("periodic takes exactly one of cron= or every=")
    if cron is not None:
        parse_cron(cron)
    time_zone(tz)
    if every is not None and tz != "UTC":
        raise ConfigurationError(
            f"tz={tz!r} applies to cron= schedules; every= ticks count real seconds and "
            "no clock change moves them (use cron= for times of day in a zone)"
        )
    seconds = _every_seconds(every) if every is not None else None
    if overlap not in ("skip", "allow"):
        raise ConfigurationError(f"overlap must be 'skip' or 'allow', got {overlap!r}")
    _checks.whole("catch_up", catch_up, 1, 1_000_000, "catch_up=1 (how many missed ticks to run)")
    if catch_up > 1 and overlap == "skip":
        raise ConfigurationError(
            f"catch_up={catch_up} enqueues up to {catch_up} missed ticks at once, but "
            "overlap='skip' (the default) lets one job of a schedule wait or run at a time, "
            f"so only the oldest of them would run: pass overlap='allow' with catch_up={catch_up}, "
            "or leave catch_up at 1 (the latest missed tick runs)"
        )
    bad = [k for k in _FORBIDDEN if k in options]
    if overlap == "skip" and "key" in options:
        bad.append("key")
    if bad:
        raise ConfigurationError(
            f"periodic tasks cannot take {', '.join(bad)}: the scheduler sets when they run, "
            "their job id and (with overlap='skip') their uniqueness key"
        )
    opts = app.defaults.merge(**options)
    mode: Literal["skip", "allow"] = "skip" if overlap == "skip" else "allow"

    def decorator(fn: Callable[[], R]) -> Task[[], R]:
        task_name = name if name is not None else f"{fn.__module__}:{fn.__qualname__}"
        if any(s.name == task_name for s in app.schedules):
            raise ConfigurationError(
                f"a schedule named {task_name!r} already exists; pass @app.periodic(name=...)"
            )
        _check_keys(task_name)
        _check_no_arguments(fn, task_name)
        task: Task[[], R] = app._register(fn, task_name, opts)
        app.schedules.append(Schedule(task.name, cron, seconds, mode, catch_up, tz))
        return task

    return decorator


def _claim_key(name: str, fire: int) -> str:
    """The store key that claims a schedule's tick at ``fire`` (ms) for one scheduler."""
    return f"{_PREFIX}{name}:claim:{fire}"


def _check_keys(name: object) -> None:
    """Refuse a schedule name the store cannot hold in its keys, when it is defined: else
    every tick of it would fail (its longest key is a tick's claim)."""
    if not isinstance(name, str):
        return  # registering the task refuses it, as for @app.task(name=...)
    try:
        check_key(_claim_key(name, 10**_TICK_DIGITS - 1))
    except ConveyorError:
        most = MAX_KEY - len(_claim_key("", 10**_TICK_DIGITS - 1))
        raise ConfigurationError(
            f"periodic task {name!r} cannot be scheduled: its name goes into store keys "
            f"({_PREFIX}<name>:claim:<ms>), which take at most {MAX_KEY} printable "
            f"characters; pass @app.periodic(name=...) a shorter name (at most {most} "
            f"characters, this one has {len(name)}) without control characters"
        ) from None


def _check_no_arguments(fn: Callable[..., object], name: object) -> None:
    """The scheduler calls a periodic task with no arguments: one that needs some is
    refused when it is defined, rather than failing at every tick. The signature read is
    the function's own, not the one it wraps (a decorator's wrapper may supply the wrapped
    function's arguments)."""
    try:
        inspect.signature(fn, follow_wrapped=False).bind()
    except TypeError as exc:
        raise ConfigurationError(
            f"periodic task {name!r} requires arguments ({exc}), but each tick calls it with "
            "none: wrap the call in a function of no arguments and schedule that one"
        ) from None
    except ValueError:
        pass  # no signature to read (a builtin): calling it tells


@dataclass
class _Plan:
    schedule: Schedule
    fires: list[int]  # claimed by this scheduler
    envelopes: list[Envelope]
    latest: int  # the latest due tick, run or skipped: where the schedule now stands
    failed: int  # where it stands if its jobs cannot be built: just before them, still due


class Scheduler:
    """Enqueues the app's periodic jobs when they come due; run one per worker."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._next: dict[str, int] = {}  # a lower bound on each schedule's next due tick (ms)
        # Per schedule whose jobs could not be built: the error, when it was last logged at
        # ERROR, and how many times since (at DEBUG); until a job of it is built, here or by
        # another scheduler.
        self._failing: dict[str, tuple[str, int, int]] = {}

    def tick(self, now: float | None = None) -> list[Job[Any]]:
        """Enqueue every tick due at ``now`` (default: the app's clock) that no other
        scheduler has; return the jobs this call enqueued."""
        now_ms = _ms(self.app.clock.time() if now is None else now)
        kv = self.app.broker.kv
        plans: list[_Plan] = []
        current: Schedule | None = None
        with self.app._sending() as sending:  # ticks go through the producer middleware
            try:
                for current in list(self.app.schedules):
                    if now_ms < self._next.get(current.name, 0):
                        continue
                    plan = self._plan_alone(kv, current, now_ms)
                    if plan is not None and self._build(kv, plan, sending, now_ms):
                        plans.append(plan)
                current = None
                envelopes = [e for p in plans for e in p.envelopes]
                events = self.app._announce(
                    envelopes, [p.schedule.name for p in plans for _ in p.envelopes]
                )
                ids = self.app.broker.enqueue(envelopes, events) if envelopes else []
            except Exception:
                # Let the next tick (ours or another scheduler's) retry them: a schedule
                # listed before the failure must not lose its tick with the others.
                if current is not None:
                    self._next.pop(current.name, None)
                for p in plans:
                    self._next.pop(p.schedule.name, None)
                    self._release(kv, p.schedule, p.fires)
                raise
        jobs: list[Job[Any]] = []
        got = iter(ids)
        for p in plans:
            for env in p.envelopes:
                job_id = next(got)
                if job_id == env.id:
                    jobs.append(Job(self.app, job_id))
                else:
                    log.info(
                        "skipped tick %s of %s: its previous run %s is still pending "
                        "(overlap='skip')",
                        env.id,
                        p.schedule.name,
                        job_id,
                    )
            self._advance(kv, p.schedule, p.latest)
        return jobs

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Tick until ``stop`` is set, at least every ``interval`` seconds (a worker thread).
        While the broker is away, one line per try, the tries further apart each time (up
        to ``_AWAY_MAX`` s), as the worker's fetch does."""
        away = Backoff(interval, _AWAY_MAX, RANDOM.random)
        while not stop.is_set():
            try:
                self.tick()
            except BrokerError as exc:
                delay = away.next()
                log.warning("scheduler: cannot reach the broker, retrying in %.1f s: %s",
                            delay, exc)  # fmt: skip
                stop.wait(delay)
                continue
            except Exception:
                log.exception("scheduler tick failed; trying again in %.1f s", interval)
            else:
                away.reset()
            stop.wait(self._pause(interval))

    def _pause(self, interval: float) -> float:
        if not self._next:
            return interval
        gap = (min(self._next.values()) - _ms(self.app.clock.time())) / 1000
        return min(interval, max(gap, 0.05))

    # -- internals -------------------------------------------------------------------------

    def _plan_alone(self, kv: KeyValue, s: Schedule, now: int) -> _Plan | None:
        """``_plan``, but a schedule that cannot be planned (a key the store refuses, ...)
        costs the others nothing: logged, and tried again in about ``_RETRY``. A broker
        failure is the broker's, not the schedule's: it stops the tick (all retry)."""
        try:
            return self._plan(kv, s, now)
        except BrokerError:
            raise
        except Exception as exc:
            self._next[s.name] = now + _RETRY
            log.error(
                "schedule %s: cannot plan its ticks at %s; it is tried again at %s. Other "
                "schedules go on: %s",
                s.name,
                _iso(now),
                _iso(now + _RETRY),
                exc,
                exc_info=not isinstance(exc, ConveyorError),
            )
            return None

    def _plan(self, kv: KeyValue, s: Schedule, now: int) -> _Plan | None:
        last = self._last(kv, s, now)
        if s.name in self._failing and self._failed(kv, s) <= last:
            # A scheduler (maybe another worker's) built a job since the latest failed
            # tick: the error, should it come back, is news again.
            del self._failing[s.name]
        run, skipped = s.due(last, now)
        if not run:
            self._next[s.name] = s._next_ms(max(last, now))
            return None
        upcoming = s._next_ms(run[-1])
        self._next[s.name] = upcoming
        claimed: list[int] = []
        try:
            for fire in run:
                if kv.set(_claim_key(s.name, fire), b"1", CLAIM_TTL, nx=True):
                    claimed.append(fire)
        except Exception:  # a store failure between two claims: no tick kept claimed
            self._release(kv, s, claimed)
            raise
        if not claimed:
            # Another scheduler has these ticks. Look again soon all the same: should it not
            # build them (it keeps them claimed until it retries) or die, any worker retries.
            self._next[s.name] = min(upcoming, now + _RETRY)
            return None
        if skipped != 0:
            # Ticks whose jobs could not be built, left behind by catch_up, were not missed.
            failed = self._failed(kv, s)
            if failed > last and s._next_ms(failed) >= run[0]:
                skipped = 0
            elif failed > last:
                last, skipped = failed, s.due(failed, now)[1]
        if skipped != 0:
            log.warning(
                "schedule %s missed %s tick(s) between %s and %s (downtime?); "
                "running the latest %d (catch_up=%d), skipping the rest",
                s.name,
                "some" if skipped is None else skipped,
                _iso(last),
                _iso(run[0]),
                len(run),
                s.catch_up,
            )
        # Should its jobs fail to build, they stay due: retried soon, and at the next tick
        # as catch_up allows (the older ones are done then), as ticks missed for downtime.
        return _Plan(s, claimed, [], run[-1], run[0] - 1)

    def _build(self, kv: KeyValue, plan: _Plan, sending: Sending, now: int) -> bool:
        """Build the plan's jobs; False (logged once for all schedulers) if one of them
        cannot be built (a rate key the store refuses, a payload too large, ...): the other
        schedules' ticks go on, and these stay due, retried by one of the schedulers about
        every ``_RETRY`` (or at each tick if more often) while ``catch_up`` keeps them."""
        s = plan.schedule
        try:
            with sending.alone():  # the middleware hears it was not sent, and not otherwise
                plan.envelopes = [self._envelope(s, f, sending) for f in plan.fires]
        except BrokerError:
            self._next.pop(s.name, None)  # the store failed, not the job: the next tick retries
            self._release(kv, s, plan.fires)
            raise
        except Exception as exc:
            upcoming = self._next.get(s.name, plan.latest)
            retry = min(upcoming, now + _RETRY)
            self._next[s.name] = retry
            text = f"{type(exc).__name__}: {exc}"
            told, at, since = self._failing.get(s.name, ("", 0, 0))
            if told == text and now - at < _RETELL:  # told already: once a tick is spam
                self._failing[s.name] = (told, at, since + 1)
                level, again = logging.DEBUG, ""
            else:
                self._failing[s.name] = (text, now, 0)
                level, again = logging.ERROR, ""
                if since and told == text:  # the count is of this error, not another one
                    again = f" ({since} more time(s) since)"
            log.log(
                level,
                "schedule %s: cannot build its job for the tick at %s%s; it is tried again at "
                "%s, then about every minute (or at each tick) while catch_up=%d keeps it due "
                "(next tick %s). Other schedules go on. Fix the task's options or middleware: %s",
                s.name,
                _iso(plan.fires[-1]),
                again,
                _iso(retry),
                s.catch_up,
                _iso(upcoming),
                exc,
                exc_info=level == logging.ERROR and not isinstance(exc, ConveyorError),
            )
            self._hold(kv, plan, max(retry - now, 1))
            return False
        self._failing.pop(s.name, None)
        return True

    def _release(self, kv: KeyValue, s: Schedule, fires: list[int]) -> None:
        """Give up these claimed ticks, so a tick can take them again."""
        for fire in fires:
            try:
                kv.delete(_claim_key(s.name, fire))
            except Exception as exc:  # the claim expires by itself (CLAIM_TTL)
                log.warning(
                    "could not release the claim of %s at %s (it expires): %s",
                    s.name,
                    _iso(fire),
                    exc,
                )

    def _hold(self, kv: KeyValue, plan: _Plan, until_retry: int) -> None:
        """A plan whose jobs could not be built: keep its ticks claimed until just before
        they are retried, so that no other scheduler tries (and logs) them again meanwhile;
        move the schedule to just before them (the older ticks are done: a cron one would
        walk from them every time), and note the latest failed tick (catch_up leaves it
        behind as done, not missed)."""
        s = plan.schedule
        ttl = max(until_retry - _HOLD_MARGIN, until_retry // 2, 1) / 1000
        try:
            for fire in plan.fires:
                kv.set(_claim_key(s.name, fire), b"1", ttl)
            self._advance(kv, s, plan.failed)
            self._advance(kv, s, plan.fires[-1], "failed")
        except Exception as exc:  # the claims expire by themselves (CLAIM_TTL)
            log.warning("could not record the failed tick of %s: %s", s.name, exc)

    def _last(self, kv: KeyValue, s: Schedule, now: int) -> int:
        key = f"{_PREFIX}{s.name}:last"
        raw = kv.get(key)
        if raw is None:  # first start ever: begin now, run nothing from the past
            kv.set(key, str(now).encode(), nx=True)
            raw = kv.get(key) or str(now).encode()
        return int(raw)

    def _advance(self, kv: KeyValue, s: Schedule, fire: int, what: str = "last") -> None:
        def forward(old: bytes | None) -> bytes:
            return str(max(int(old or b"0"), fire)).encode()

        kv.update(f"{_PREFIX}{s.name}:{what}", forward)

    def _failed(self, kv: KeyValue, s: Schedule) -> int:
        """The latest tick of ``s`` whose job could not be built (0: none)."""
        return int(kv.get(f"{_PREFIX}{s.name}:failed") or b"0")

    def _envelope(self, s: Schedule, fire: int, sending: Sending) -> Envelope:
        task = self.app.registry.get(s.name)
        base = task.opts if task is not None else self.app.defaults
        key = s.unique_key if s.overlap == "skip" else None
        # The same id in every scheduler; on a sharded broker, on its key's shard.
        changes: dict[str, Any] = {"job_id": self.app.broker.new_job_id(key, fixed=s.job_id(fire))}
        if key is not None:
            changes["key"] = key
        sig: Signature[Any] = Signature(self.app, s.name, (), {}, base.merge(**changes))
        return sending.envelope(sig)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()
