"""The deliveries a worker holds: when a completing run wakes the consumer to fetch, it lets
the consumer have the GIL at once, and only then (not on every run it ends); a buffer that
waited too long for a run slot is given up whole."""

from __future__ import annotations

import threading
import time

import pytest

from conveyor._message import Delivery, Message
from conveyor.worker import _inflight
from conveyor.worker._attempt import RELEASED, RUNNING, Attempt
from conveyor.worker._inflight import Inflight

_made: list[Inflight] = []  # by _held, for the fake yield to look at their locks


def _held(n: int) -> tuple[Inflight, list[Attempt]]:
    """Two run slots, up to four buffered, and ``n`` deliveries held, the first two running."""
    inflight = Inflight(capacity=2, prefetch=4)
    _made.append(inflight)
    inflight.start = lambda attempt: None
    held = [Attempt(Delivery(f"job-{i}", "default", b"", f"token-{i}", 1)) for i in range(n)]
    inflight.hold(held)
    assert inflight.admit_all(held) == held[:2]
    return inflight, held


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """The threads that gave up the GIL for the consumer, by name, and whether an
    ``Inflight``'s lock was held then (a yield under it would keep the consumer waiting)."""
    seen: list[tuple[str, bool]] = []
    _made.clear()

    def let_others_run() -> None:
        seen.append((threading.current_thread().name, any(i._lock.locked() for i in _made)))

    monkeypatch.setattr(_inflight, "_let_others_run", let_others_run)
    return seen


def test_the_run_that_makes_a_fetch_worth_it_wakes_the_consumer_and_yields(
    yields: list[tuple[str, bool]],
) -> None:
    # Two run slots and four buffered: nothing is worth fetching; a fetch becomes worth it
    # once two more runs have ended (half the buffer's room), not before.
    inflight, held = _held(7)
    inflight.complete(held[0], ran=0.0001)  # a tiny run: the buffer grows to all four
    assert inflight.free() == 0

    room: list[int] = []
    waiting = threading.Event()

    def consumer() -> None:
        waiting.set()
        room.append(inflight.wait_free(30.0))

    thread = threading.Thread(target=consumer, name="consumer")
    thread.start()
    assert waiting.wait(10)
    deadline = time.monotonic() + 10
    while not inflight._fetch_waits:  # the consumer is in its wait
        assert thread.is_alive() and time.monotonic() < deadline, "the consumer did not wait"
        thread.join(0.001)
    inflight.complete(held[1], ran=0.0001)  # room for one: not worth a call yet
    assert yields == [] and inflight._fetch_waits
    inflight.complete(held[2], ran=0.0001)  # for two: the consumer is woken, and given the GIL
    thread.join(10)
    assert not thread.is_alive()
    assert room == [2]
    assert yields == [(threading.current_thread().name, False)]  # once, unlocked


def test_runs_that_end_while_the_consumer_is_not_waiting_do_not_yield(
    yields: list[tuple[str, bool]],
) -> None:
    inflight, held = _held(4)
    for attempt in held:
        assert inflight.complete(attempt, ran=0.0001)
    assert yields == []


def test_a_buffer_that_waited_its_patience_is_given_up_and_not_refilled_at_once() -> None:
    inflight, held = _held(5)  # two running, three buffered
    assert inflight.take_stale(60.0) == []  # not waited that long: kept
    assert inflight.take_stale(0.0) == held[2:]  # oldest first, all of them
    assert [a.state for a in held] == [RUNNING, RUNNING, RELEASED, RELEASED, RELEASED]
    assert inflight.take_stale(0.0) == []  # nothing buffered any more
    inflight.drop(held[2:])  # released (the consumer's release)
    assert len(inflight) == 2
    assert inflight.free() == 0  # both slots run: nothing is fetched to buffer again
    assert inflight.complete(held[0], ran=0.0001)  # a run ended: its slot, and a buffer again
    assert inflight.free() == 1 + 4  # the free slot, and a full buffer for tiny runs


def test_rate_limited_jobs_stay_buffered_when_the_rest_is_given_up() -> None:
    """The rate limit counted them when it let them through: handed back, they would be
    counted again by whichever worker took them."""
    inflight, held = _held(5)
    for attempt, rate in zip(held, [None, None, "10/m", None, "10/m"], strict=True):
        attempt.message = Message(id=attempt.delivery.id, task="t", rate=rate)
    assert inflight.take_stale(0.0) == [held[3]]
    assert held[2].state == held[4].state == RUNNING
    assert inflight.take_stale(0.0) == []  # only they are left: nothing to give up
    assert inflight.complete(held[0], ran=0.0001)  # a freed slot starts the oldest of them
    assert held[2].slot and not held[4].slot
    # A job fetched now behind the one that stays is not given up for that one's wait.
    fresh = Attempt(Delivery("job-5", "default", b"", "token-5", 1))
    fresh.message = Message(id="job-5", task="t")
    held[4].started -= 10.0
    inflight.hold([fresh])
    assert inflight.admit_all([fresh]) == []  # buffered behind held[4]
    assert inflight.take_stale(5.0) == []
    assert inflight.take_stale(0.0) == [fresh]
