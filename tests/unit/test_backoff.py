"""Backoff is pure: every delay is pinned by the injected ``rand``."""

from __future__ import annotations

import os
import random

import pytest

from conveyor._backoff import Backoff, decorrelated_jitter, exponential, full_jitter


def test_exponential_doubles_from_base_and_stops_at_the_cap() -> None:
    assert [exponential(a, 1.0, 100.0) for a in range(8)] == [1, 2, 4, 8, 16, 32, 64, 100]
    assert exponential(10_000, 1.0, 60.0) == 60.0  # no overflow on absurd attempts
    assert exponential(0, 0.0, 60.0) == 0.0


@pytest.mark.parametrize(("r", "expected"), [(0.0, 0.0), (0.5, 4.0), (0.999, 7.992)])
def test_full_jitter_draws_below_the_exponential(r: float, expected: float) -> None:
    assert full_jitter(3, 1.0, 100.0, lambda: r) == pytest.approx(expected)


def test_full_jitter_respects_the_cap() -> None:
    assert full_jitter(50, 1.0, 30.0, lambda: 0.9999) <= 30.0


def test_decorrelated_jitter_stays_between_base_and_three_times_previous() -> None:
    assert decorrelated_jitter(2.0, 0.5, 100.0, lambda: 0.0) == 0.5
    assert decorrelated_jitter(2.0, 0.5, 100.0, lambda: 1.0) == pytest.approx(6.0)
    assert decorrelated_jitter(50.0, 0.5, 5.0, lambda: 0.7) == 5.0


def test_backoff_grows_to_the_cap_and_resets() -> None:
    rng = random.Random(7)
    b = Backoff(0.1, 5.0, rng.random)
    delays = [b.next() for _ in range(40)]
    assert all(0.1 <= d <= 5.0 for d in delays)
    assert max(delays) > 2.0  # it does grow
    assert b.failures == 40
    b.reset()
    assert b.failures == 0
    assert b.next() <= 0.3  # back near the base: at most 3 x base


def test_conveyor_leaves_the_programs_random_sequence_alone() -> None:
    """A retry's jitter and a lock's waits draw from Conveyor's own generator: a program
    that seeds the random module for repeatable runs gets the same sequence."""
    from conveyor import Conveyor, LockTimeout
    from conveyor.worker import drain

    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    with Conveyor("memory://") as app:
        calls = []

        @app.task(retries=2, backoff=0.001)
        def flaky() -> None:
            calls.append(1)
            raise RuntimeError("again")

        job = flaky.delay()
        for _ in range(50):
            drain(app, timeout=5)
            if job.status.terminal:
                break
        assert job.status.value == "failed" and len(calls) == 3
        # A second holder waits a few jittered steps, then gives up.
        with app.lock("report", ttl=30, timeout=5), pytest.raises(LockTimeout):
            app.lock("report", ttl=30, timeout=0.05).acquire()
        assert app.store.update("n", lambda n: (n or 0) + 1) == 1
    assert [random.random() for _ in range(3)] == expected


def test_a_forked_child_draws_other_delays_than_its_parent() -> None:
    """Forked workers do not all back off in step: the child's generator is reseeded."""
    from conveyor._backoff import RANDOM

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draw, then out without pytest's clean-up
        os.write(write, repr(RANDOM.random()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = float(os.read(read, 64).decode())
    os.close(read)
    assert child != RANDOM.random()
