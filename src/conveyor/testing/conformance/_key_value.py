"""The ``KeyValue`` contract: ``KeyValueConformance``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import pytest

from ..._clock import FakeClock
from ..._errors import InvalidName
from ...brokers._port import Broker
from ...stores._port import KeyValue
from ._helpers import LONG, Timeline, _Background


class KeyValueConformance:
    """The ``KeyValue`` port's contract (see ``conveyor.stores._port``), on ``broker.kv``."""

    real_time_unit: ClassVar[float] = 0.1

    @pytest.fixture
    def timeline(self, clock: FakeClock | None) -> Timeline:
        return Timeline(clock, self.real_time_unit)

    @pytest.fixture
    def kv(self, broker: Broker) -> KeyValue:
        """The store under test; override to check a store that is not a broker's."""
        return broker.kv

    # -- get, set, delete ------------------------------------------------------------------

    def test_set_then_get(self, kv: KeyValue) -> None:
        assert kv.get("absent") is None
        assert kv.set("k", b"\x00\xffbinary")
        assert kv.get("k") == b"\x00\xffbinary"
        assert kv.set("k", b"second")
        assert kv.get("k") == b"second"
        assert kv.set("empty", b"")
        assert kv.get("empty") == b""
        assert kv.get("K") is None  # keys are case-sensitive

    def test_value_expires_after_its_ttl(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.set("k", b"v", ttl=timeline.span(5))
        left = kv.ttl("k")
        assert left is not None
        assert 0 < left <= timeline.span(5)
        timeline.advance(3)
        assert kv.get("k") == b"v"
        timeline.advance(3)
        assert kv.get("k") is None
        assert kv.ttl("k") is None

    def test_ttl_is_none_without_expiry(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.ttl("absent") is None
        kv.set("k", b"v", ttl=timeline.span(5))
        kv.set("k", b"v2")  # a plain set stores without expiry
        assert kv.ttl("k") is None
        timeline.advance(6)
        assert kv.get("k") == b"v2"

    def test_a_far_expiry_reads_back(self, kv: KeyValue) -> None:
        assert kv.set("far", b"v", 2e11)  # some 6,000 years
        left = kv.ttl("far")
        assert left is not None and 1.99e11 < left <= 2e11

    def test_set_nx_writes_only_an_absent_key(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.set("k", b"first", ttl=timeline.span(5), nx=True)
        assert not kv.set("k", b"second", nx=True)
        assert kv.get("k") == b"first"
        timeline.advance(6)
        assert kv.set("k", b"third", nx=True)
        assert kv.get("k") == b"third"

    def test_delete(self, kv: KeyValue, timeline: Timeline) -> None:
        kv.set("k", b"v")
        assert kv.delete("k")
        assert kv.get("k") is None
        assert not kv.delete("k")
        kv.set("short", b"v", ttl=timeline.span(1))
        timeline.advance(2)
        assert not kv.delete("short")  # expired counts as absent

    # -- counters and transactions ---------------------------------------------------------

    def test_incr_counts_with_a_ttl_set_on_create(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.incr("n", ttl=timeline.span(5)) == 1
        assert kv.incr("n", 10) == 11
        assert kv.incr("n", -3) == 8
        assert kv.get("n") == b"8"
        timeline.advance(3)
        assert kv.incr("n", 1, ttl=timeline.span(5)) == 9  # does not push the expiry back
        left = kv.ttl("n")
        assert left is not None
        assert left <= timeline.span(2)
        timeline.advance(3)
        assert kv.get("n") is None
        assert kv.incr("n", 5) == 5
        assert kv.ttl("n") is None

    def test_incr_is_exact_past_64_bits(self, kv: KeyValue) -> None:
        """A counter is a whole number of any size, added exactly (not through a float)."""
        assert kv.incr("big", 2**53 + 1) == 2**53 + 1
        assert kv.incr("big", 1) == 2**53 + 2
        assert kv.incr("big", 2**63 - 2**53 - 3) == 2**63 - 1
        assert kv.incr("big", 1) == 2**63
        assert kv.incr("big", 10**30) == 10**30 + 2**63
        assert kv.incr("big", -(10**30) - 2**64) == -(2**63)
        assert kv.get("big") == str(-(2**63)).encode()
        for stored, after in (
            (b"+5", 6),
            (b"007", 8),
            (b"-0", 1),
            (b"-10000000000000000000", -(10**19) + 1),
        ):
            kv.set("written", stored)
            assert kv.incr("written", 1) == after

    def test_update_writes_and_returns_the_new_value(
        self, kv: KeyValue, timeline: Timeline
    ) -> None:
        seen: list[bytes | None] = []

        def append_x(old: bytes | None) -> bytes:
            seen.append(old)
            return (old or b"") + b"x"

        assert kv.update("k", append_x) == b"x"
        assert kv.update("k", append_x, ttl=timeline.span(5)) == b"xx"
        assert seen[-2:] == [None, b"x"]
        assert kv.get("k") == b"xx"
        left = kv.ttl("k")
        assert left is not None
        assert 0 < left <= timeline.span(5)

    def test_update_returning_none_deletes(self, kv: KeyValue) -> None:
        kv.set("k", b"v")
        assert kv.update("k", lambda old: None) is None
        assert kv.get("k") is None
        assert kv.update("absent", lambda old: None) is None
        assert kv.get("absent") is None

    def test_update_does_not_lose_a_concurrent_write(self, kv: KeyValue) -> None:
        kv.set("n", b"0")
        writers: list[_Background[int]] = []
        calls: list[bytes | None] = []

        def plus_one(old: bytes | None) -> bytes:
            calls.append(old)
            if not writers:
                writers.append(_Background(lambda: kv.incr("n", 100)))
                # An optimistic store lets the write land now and must then run fn again;
                # one that locks through fn makes the writer wait: give it time to try.
                time.sleep(0.2)
            return str(int(old or b"0") + 1).encode()

        kv.update("n", plus_one)
        writers[0].join()
        assert calls[0] == b"0"
        assert kv.get("n") == b"101"

    def test_update_loses_nothing_under_threads(self, kv: KeyValue) -> None:
        def plus_one(old: bytes | None) -> bytes:
            return str(int(old or b"0") + 1).encode()

        def work() -> None:
            # Losing 51 races in a row (the default retries) is a TransactionConflict, not a
            # loss: on a loaded machine eight threads can starve one of them that long, so the
            # test allows more attempts and checks only that no increment is lost.
            for _ in range(50):
                kv.update("counter", plus_one, retries=10_000)

        workers = [_Background(work) for _ in range(8)]
        for w in workers:
            w.join(timeout=30.0)
        assert kv.get("counter") == b"400"

    # -- locks -----------------------------------------------------------------------------

    def test_lock_is_exclusive(self, kv: KeyValue) -> None:
        fence = kv.lock_acquire("invoice:42", "token-a", LONG)
        assert isinstance(fence, int)
        assert kv.lock_acquire("invoice:42", "token-b", LONG) is None
        assert isinstance(kv.lock_acquire("invoice:43", "token-b", LONG), int)

    def test_lock_release_and_extend_need_the_holders_token(
        self, kv: KeyValue, timeline: Timeline
    ) -> None:
        first = kv.lock_acquire("l", "token-a", timeline.span(5))
        assert first is not None
        assert not kv.lock_release("l", "token-b")
        assert not kv.lock_extend("l", "token-b", LONG)
        assert kv.lock_acquire("l", "token-b", LONG) is None  # still held by a
        timeline.advance(3)
        assert kv.lock_extend("l", "token-a", timeline.span(5))
        timeline.advance(3)  # past the first ttl, inside the extended one
        assert kv.lock_acquire("l", "token-b", LONG) is None
        assert kv.lock_release("l", "token-a")
        assert not kv.lock_release("l", "token-a")
        second = kv.lock_acquire("l", "token-b", LONG)
        assert second is not None
        assert second > first

    def test_lock_fences_grow_with_every_grant(self, kv: KeyValue) -> None:
        fences: list[int] = []
        for i in range(5):
            fence = kv.lock_acquire("l", f"token-{i}", LONG)
            assert fence is not None
            fences.append(fence)
            assert kv.lock_release("l", f"token-{i}")
        assert fences == sorted(set(fences))

    def test_lock_expires_after_its_ttl(self, kv: KeyValue, timeline: Timeline) -> None:
        first = kv.lock_acquire("l", "token-a", timeline.span(5))
        assert first is not None
        timeline.advance(6)  # the holder died
        second = kv.lock_acquire("l", "token-b", LONG)
        assert second is not None
        assert second > first
        assert not kv.lock_extend("l", "token-a", LONG)
        assert not kv.lock_release("l", "token-a")
        assert kv.lock_acquire("l", "token-a", LONG) is None
        assert kv.lock_release("l", "token-b")

    # -- names -----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "key", ["", "new\nline", "last\n", "nul\x00", "del\x7f", "half\ud800", "x" * 513]
    )
    def test_bad_keys_are_refused(self, kv: KeyValue, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: kv.get(key),
            lambda: kv.set(key, b"v"),
            lambda: kv.delete(key),
            lambda: kv.incr(key),
            lambda: kv.ttl(key),
            lambda: kv.update(key, lambda old: b"v"),
            lambda: kv.lock_acquire(key, "token", LONG),
            lambda: kv.lock_release(key, "token"),
            lambda: kv.lock_extend(key, "token", LONG),
        ]
        for call in calls:
            with pytest.raises(InvalidName):
                call()

    def test_long_printable_keys_are_accepted(self, kv: KeyValue) -> None:
        key = "k:é/ü " + "x" * 506
        assert len(key) == 512
        assert kv.set(key, b"v")
        assert kv.get(key) == b"v"
