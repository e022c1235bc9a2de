"""Backoff is pure: every delay is pinned by the injected ``rand``."""

from __future__ import annotations

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
