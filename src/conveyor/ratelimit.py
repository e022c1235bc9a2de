"""Rate limits shared by every worker, counted in the broker's key-value store.

``@app.task(rate="100/m")`` limits how often a task *starts*, across all workers; add
``rate_key=`` (per call: ``send.options(rate="10/s", rate_key=f"tenant:{tid}")``) and the
limit applies to that key instead, so one tenant's backlog cannot starve the others. Jobs
sharing a ``rate_key`` share one budget even across tasks (give them the same ``rate``).

Rates are ``"<n>/<unit>"`` or ``"<n>/<k><unit>"`` with unit ``s``, ``m`` or ``h``:
``"100/m"``, ``"5/s"``, ``"1000/h"``, ``"10/30s"``.

Algorithm: a **sliding window counter**. Time is cut into fixed windows of the rate's period;
each window has a counter (``kv.incr`` with a TTL of two periods). A job may start when
fewer than ``n`` started in the last period before it, counting the previous window's
starts by the share of it still inside that period::

    current (before this job) + previous * (share of it still in the last period) < n

Burst behaviour: an idle key admits up to ``n`` jobs at once; steady demand gets ``n`` per
period, one every ``period / n`` (at ``1/m`` too). The previous window is assumed to have
been spread evenly, so in the worst case (all of it at its very end) a period-long window
can hold up to ``2 n`` starts, never more. A job that is refused gives its count back.
Cost: two key-value round trips for a rate-limited job (``incr`` and ``get``), two more
when it is refused; tasks without a rate cost nothing.

``acquire`` does not wait: it returns how long to wait, and the worker puts the job back with
that delay (not counting an attempt). Jobs refused within one slot (``period / n``) are
spread out, the k-th told to wait k-1 slots longer, so a backlog does not return all at
once; a job refused once a slot (it asks again when told) is not held back further. The
order among refused jobs is not FIFO.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING

from ._errors import InvalidName, InvalidOption
from ._message import Message
from .stores._port import MAX_KEY, check_key

if TYPE_CHECKING:
    from ._app import Conveyor

__all__ = ["Rate", "acquire", "parse_rate"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")
_MIN_WAIT = 0.01  # never ask for a zero delay on refusal: the worker would spin
_PREFIX = "conveyor:rate:"
_SLOTS = 1_000_000  # refusal counters per window at most: "r" and 6 digits, as "refused"
_EPSILON = 1e-6  # float slack, so waiting exactly the time returned is enough


class Rate:
    """A checked rate: ``limit`` jobs per ``period`` seconds (``parse_rate("10/30s")`` is
    ``Rate(limit=10, period=30.0)``). A frozen value: equality, hash, no assignment."""

    # Written out as a frozen dataclass would behave (repr, equality, hash, pickled and copied
    # through its ``__dict__``): building a dataclass at import compiles its methods, ~4 M
    # instructions.

    limit: int  # jobs per period
    period: float  # seconds

    __match_args__ = ("limit", "period")

    def __init__(self, limit: int, period: float) -> None:
        self.__dict__.update(limit=limit, period=period)

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(limit={self.limit!r}, period={self.period!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.limit, self.period) == (other.limit, other.period)

    def __hash__(self) -> int:
        return hash((self.limit, self.period))

    def __setattr__(self, name: str, value: object) -> None:
        if type(self) is not Rate and name not in Rate.__match_args__:
            return super().__setattr__(name, value)  # a subclass's own attribute
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        if type(self) is not Rate and name not in Rate.__match_args__:
            return super().__delattr__(name)
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"


@functools.lru_cache(maxsize=1024)
def parse_rate(text: str) -> Rate:
    """``"100/m"`` -> ``Rate(100, 60.0)``; ``InvalidOption`` for anything else.

    Call it where options are checked so a bad rate fails at task definition."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidOption(
            f"bad rate={text!r}: write '<count>/<unit>' with unit s, m or h, "
            "e.g. '100/m', '5/s', '10/30s'"
        )
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
    if count < 1 or multiple < 1:
        raise InvalidOption(
            f"bad rate={text!r}: the count and period must be positive; write e.g. '100/m'"
        )
    return Rate(count, multiple * _UNITS[unit])


def _bucket(message: Message, rate: Rate) -> str:
    name = message.rate_key if message.rate_key is not None else f"task:{message.task}"
    return check_key(f"{_PREFIX}{name}:{rate.period:g}")


def check_rate_key_length(rate: str, rate_key: str) -> None:
    """``InvalidName`` unless the counters of ``rate_key`` under ``rate`` fit the store's
    512-character keys: checked where both are first known (``Options``), so a mistake
    shows at import, and again by the worker for a job queued without the check."""
    period = f"{parse_rate(rate).period:g}"
    # the longest counter key: f"{_PREFIX}{rate_key}:{period}:{window}:r{slot}", the slot
    # of at most 6 digits (_SLOTS), as long as "refused"
    room = MAX_KEY - len(_PREFIX) - len(period) - len(f"::{10**12}:refused")
    if len(rate_key) > room:
        raise InvalidName(
            f"bad rate_key={rate_key[:40]!r}... ({len(rate_key)} characters): with "
            f"rate={rate!r} its counters take a rate key of at most {room} characters; use "
            "a shorter key (a hash of a long one, say)"
        )


def check_rate_key(app: Conveyor, message: Message) -> None:
    """At enqueue, for a job with a ``rate`` and a ``rate_key``: ``InvalidName`` unless the
    workers can count it (its counters' keys within the store's 512 characters, its
    characters ones the broker's store holds), so it is refused now rather than at every
    delivery."""
    if message.rate is None or message.rate_key is None:
        return
    check_rate_key_length(message.rate, message.rate_key)
    app.broker.kv.check_text(message.rate_key, "rate key")


def acquire(app: Conveyor, message: Message) -> float:
    """0.0 if the job may start now (and count it), else the seconds to wait before asking
    again. Jobs without ``rate`` always get 0.0 and touch nothing."""
    if message.rate is None:
        return 0.0
    rate = parse_rate(message.rate)
    if message.rate_key is not None:  # a job queued without the check: refused, briefly
        check_rate_key_length(message.rate, message.rate_key)
    kv = app.broker.kv
    now = app.clock.time()
    window = math.floor(now / rate.period)
    elapsed = (now - window * rate.period) / rate.period  # share of this window gone, [0, 1)
    base = _bucket(message, rate)
    ttl = 2 * rate.period  # the counter is "previous" for one more window, then dies
    current = kv.incr(f"{base}:{window}", 1, ttl)
    previous = int(kv.get(f"{base}:{window - 1}") or b"0")
    # Before this job, fewer than n starts in the last period (weighing the previous
    # window's by its share still inside it): at a steady pace, one every period / n.
    if (current - 1) + previous * (1.0 - elapsed) < rate.limit - _EPSILON:
        return 0.0
    kv.incr(f"{base}:{window}", -1, ttl)  # refused: give the slot back
    # The k-th refusal within one slot (period / n) waits k-1 slots longer: a backlog
    # refused at once comes back spread out, one a slot, while a job that asks again each
    # time it is told (refused once a slot) is not held back further.
    slot = rate.period / rate.limit
    j = min(math.floor(elapsed * rate.limit), _SLOTS - 1)
    refused = kv.incr(f"{base}:{window}:r{j}", 1, max(2 * slot, 1.0))
    wait = _free_in(rate, current - 1, previous, elapsed)
    return max(wait + (refused - 1) * slot, _MIN_WAIT)


def _free_in(rate: Rate, current: int, previous: int, elapsed: float) -> float:
    """Seconds until one more start fits, if nothing else starts meanwhile."""
    room = rate.limit - current  # what the previous window's weight must shrink below
    if room > 0 and previous > 0:
        # previous * (1 - e) < room  <=>  e > 1 - room / previous (and past the slack)
        e = 1.0 - (room - 2 * _EPSILON) / previous
        return max(0.0, e - elapsed) * rate.period
    # The current window alone is full: wait for the next one, where this window's count is
    # the weighted "previous" and needs (1 - e') * current < limit.
    until_next = (1.0 - elapsed) * rate.period
    if current <= 0:
        return until_next
    shrink = max(0.0, 1.0 - (rate.limit - 2 * _EPSILON) / current)
    return until_next + shrink * rate.period
