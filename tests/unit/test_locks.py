"""app.lock: mutual exclusion, fencing, stale holders, extend, auto-renewal, async, timeouts."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brokers import params
from conveyor import (
    ConfigurationError,
    Conveyor,
    InvalidName,
    LockError,
    LockLost,
    LockTimeout,
)
from conveyor._clock import FakeClock
from conveyor.locks import Lock, backoff
from conveyor.stores._store import MAX_TTL


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.param.target(request, tmp_path).url)


@pytest.fixture(params=params(embedded=True))
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    """An app on each broker, on real time."""
    with Conveyor(_url(request, tmp_path)) as a:
        yield a


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=params(embedded=True))
def fake_app(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Conveyor]:
    """An app on each broker whose TTLs run on ``clock``."""
    with Conveyor(_url(request, tmp_path), clock=clock) as a:
        yield a


def _renewers(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"conveyor-lock-renewal:{name}"]


def _eventually(check: Callable[[], bool], within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


# -- mutual exclusion and fencing ------------------------------------------------------------


def test_twenty_threads_never_overlap_and_fences_grow_in_grant_order(app: Conveyor) -> None:
    spans: list[tuple[float, float, int]] = []
    start = threading.Barrier(20)

    def holder() -> None:
        start.wait()
        for _ in range(3):
            with app.lock("invoice:42", ttl=30) as lk:
                entered = time.monotonic()
                time.sleep(0.002)
                spans.append((entered, time.monotonic(), lk.fence))

    threads = [threading.Thread(target=holder) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(spans) == 60
    spans.sort()
    for (_, left_exit, left_fence), (right_enter, _, right_fence) in itertools.pairwise(spans):
        assert right_enter >= left_exit, "two holders were inside at once"
        assert right_fence > left_fence


def test_fences_grow_per_name_and_names_are_independent(app: Conveyor) -> None:
    fences = []
    for _ in range(3):
        with app.lock("a", ttl=5) as lk:
            fences.append(lk.fence)
    assert fences == sorted(set(fences))
    with app.lock("a", ttl=5) as a, app.lock("b", ttl=5) as b:
        assert a.fence > fences[-1]
        assert b.owned() and a.owned()


def test_acquire_returns_the_fence_and_a_reused_lock_is_a_new_holder(app: Conveyor) -> None:
    lk = app.lock("reuse", ttl=5)
    first = lk.acquire()
    first_token = lk.token
    assert first == lk.fence
    lk.release()
    second = lk.acquire()
    assert second > first
    assert lk.token != first_token
    assert len(lk.token) == 32
    lk.release()


# -- a stale holder --------------------------------------------------------------------------


def test_holder_paused_past_its_ttl_loses_the_lock_to_a_larger_fence(
    fake_app: Conveyor, clock: FakeClock
) -> None:
    old = fake_app.lock("report", ttl=10)
    old.acquire()
    clock.advance(11)  # the holder was paused (GC, swap, a slow call) past its TTL
    new = fake_app.lock("report", ttl=10, timeout=0)
    new.acquire()
    assert new.fence > old.fence
    assert not old.owned()
    with pytest.raises(LockLost, match="fence"):
        old.release()
    # The stale release left the new holder's lock alone.
    assert new.owned()
    with pytest.raises(LockTimeout):
        fake_app.lock("report", ttl=10, timeout=0).acquire()
    new.release()


def test_stale_holder_on_real_time_cannot_extend_or_release(app: Conveyor) -> None:
    old = app.lock("short", ttl=0.2)
    old.acquire()
    time.sleep(0.3)
    with app.lock("short", ttl=5, timeout=0) as new:
        with pytest.raises(LockLost, match="ttl ran out"):
            old.extend()
        with pytest.raises(LockLost, match=r"lk\.fence"):
            old.release()
        assert new.owned()
        assert new.fence > old.fence


def test_lock_lost_inside_a_with_block_is_raised_on_exit(
    fake_app: Conveyor, clock: FakeClock
) -> None:
    with pytest.raises(LockLost), fake_app.lock("job", ttl=1):
        clock.advance(2)
        with fake_app.lock("job", ttl=1, timeout=0):
            pass


# -- extend ----------------------------------------------------------------------------------


def test_extend_resets_the_time_left(fake_app: Conveyor, clock: FakeClock) -> None:
    lk = fake_app.lock("ext", ttl=10)
    lk.acquire()
    clock.advance(8)
    lk.extend()
    clock.advance(8)  # 16 s after acquiring: alive only thanks to extend
    assert lk.owned()
    lk.extend(ttl=30)
    clock.advance(25)
    with pytest.raises(LockTimeout):
        fake_app.lock("ext", ttl=1, timeout=0).acquire()
    clock.advance(10)
    with pytest.raises(LockLost):
        lk.extend()
    with pytest.raises(LockLost):
        lk.release()


def test_extend_refuses_a_bad_ttl(app: Conveyor) -> None:
    with app.lock("ext", ttl=5) as lk, pytest.raises(ConfigurationError):
        lk.extend(ttl=0)


# -- auto-renewal ----------------------------------------------------------------------------


def test_auto_renewal_keeps_a_lock_past_its_ttl_and_stops_on_release(app: Conveyor) -> None:
    # Renewed every third of its TTL: a 1 s TTL outlives a stall of over half a second.
    with app.lock("renewed", ttl=1, auto_renew=True) as lk:
        time.sleep(3.2)  # over three TTLs
        assert lk.owned()
        with pytest.raises(LockTimeout):
            app.lock("renewed", ttl=1, timeout=0).acquire()
        assert len(_renewers("renewed")) == 1
    assert _eventually(lambda: not _renewers("renewed"))
    with app.lock("renewed", ttl=1, timeout=0) as again:
        assert again.fence > lk.fence


def test_auto_renewal_stops_when_the_lock_is_garbage_collected(app: Conveyor) -> None:
    lk = app.lock("dropped", ttl=0.3, auto_renew=True)
    lk.acquire()
    assert _renewers("dropped")
    del lk
    gc.collect()
    assert _eventually(lambda: not _renewers("dropped"))
    # Nobody renews it any more: it frees itself after its TTL.
    app.lock("dropped", ttl=1, timeout=10).acquire()


def test_a_failed_renewal_marks_the_lock_lost(fake_app: Conveyor, clock: FakeClock) -> None:
    lk = fake_app.lock("flaky", ttl=0.3, auto_renew=True)
    lk.acquire()
    clock.advance(1)  # the broker's clock ran past the TTL before the next renewal
    assert _eventually(lambda: not _renewers("flaky"))
    assert not lk.owned()
    with fake_app.lock("flaky", ttl=10, timeout=0) as other:
        with pytest.raises(LockLost, match="renewed"):
            lk.release()
        assert other.owned()


def test_renewals_keep_the_ttl_that_extend_set(fake_app: Conveyor, clock: FakeClock) -> None:
    """extend(60) on a renewed lock holds for 60 s: the renewals that follow do not set the
    time left back to the lock's own 0.3 s."""
    with fake_app.lock("long", ttl=0.3, auto_renew=True) as lk:
        lk.extend(60)
        time.sleep(0.5)  # the old renewal interval (0.1 s) passes several times
        clock.advance(5)  # past 0.3 s, far from 60 s
        with pytest.raises(LockTimeout):
            fake_app.lock("long", ttl=1, timeout=0).acquire()
        assert lk.owned()


def test_renewals_come_sooner_after_extend_shortened_the_ttl(app: Conveyor) -> None:
    """extend(0.6) on a lock renewed every 10 s (ttl 30): the renewals come every 0.2 s."""
    with app.lock("short", ttl=30, auto_renew=True) as lk:
        lk.extend(0.6)
        time.sleep(1.5)  # over twice the new ttl
        assert lk.owned()
        with pytest.raises(LockTimeout):
            app.lock("short", ttl=1, timeout=0).acquire()
        assert len(_renewers("short")) == 1
    assert _eventually(lambda: not _renewers("short"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_hold_its_parents_lock(app: Conveyor) -> None:
    with app.lock("forked", ttl=5, auto_renew=True) as lk:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            verdict = b"ok"
            try:
                if lk.owned() or _renewers("forked"):
                    verdict = b"child thinks it holds the lock"
                try:
                    lk.release()
                    verdict = b"child released the parent's lock"
                except LockError as exc:
                    if "forked child" not in str(exc):
                        verdict = str(exc).encode()
            finally:
                os.write(write, verdict)
                os._exit(0)
        os.close(write)
        verdict = os.read(read, 1000)
        os.waitpid(pid, 0)
        os.close(read)
        assert verdict == b"ok"
        assert lk.owned()


# -- async -----------------------------------------------------------------------------------


def test_async_lock_waits_without_blocking_the_event_loop(app: Conveyor) -> None:
    async def main() -> tuple[int, int, int]:
        ticks = 0
        stop = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(heartbeat())
        async with app.lock("async", ttl=5) as first:
            second_lock = app.lock("async", ttl=5, timeout=5)
            waiter = asyncio.create_task(second_lock.acquire_async())
            await asyncio.sleep(0.3)
            assert not waiter.done()
        second = await waiter
        await second_lock.release_async()
        stop.set()
        await beat
        return first.fence, second, ticks

    first, second, ticks = asyncio.run(main())
    assert second > first
    assert ticks >= 15  # the loop kept running while the waiter waited


def test_async_lock_timeout(app: Conveyor) -> None:
    async def main() -> None:
        async with app.lock("busy", ttl=5):
            with pytest.raises(LockTimeout, match=r"within 0\.1s"):
                async with app.lock("busy", ttl=5, timeout=0.1):
                    pass

    asyncio.run(main())


def test_cancelled_async_acquire_leaves_no_lock_behind(app: Conveyor) -> None:
    async def main() -> None:
        holder = app.lock("cancel", ttl=5)
        await holder.acquire_async()
        waiter = asyncio.create_task(app.lock("cancel", ttl=5).acquire_async())
        await asyncio.sleep(0.05)
        await holder.release_async()
        waiter.cancel()  # it may be mid-attempt, about to be granted the lock
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.1)  # let an orphaned grant be handed back
        async with app.lock("cancel", ttl=5, timeout=0):
            pass

    asyncio.run(main())


# -- timeouts and misuse ---------------------------------------------------------------------


def test_timeout_zero_tries_once_and_a_timeout_waits_that_long(app: Conveyor) -> None:
    with app.lock("held", ttl=60):  # a waiter that never gave up would get it at 60 s
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match="timeout="):
            app.lock("held", ttl=5, timeout=0).acquire()
        assert time.monotonic() - t0 < 30
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            app.lock("held", ttl=5).acquire(timeout=0.3)
        assert 0.3 <= time.monotonic() - t0 < 30


def test_waiting_backs_off_instead_of_spinning(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = app.broker.kv
    attempts = 0
    real = kv.lock_acquire

    def counting(name: str, token: str, ttl: float) -> int | None:
        nonlocal attempts
        attempts += 1
        return real(name, token, ttl)

    with app.lock("spin", ttl=5):
        monkeypatch.setattr(kv, "lock_acquire", counting)
        with pytest.raises(LockTimeout):
            app.lock("spin", ttl=5, timeout=1).acquire()
    assert 2 <= attempts <= 20  # a loaded machine makes fewer, never more
    # ...and never sleeps more than a quarter second: a released lock is taken soon.
    delays = list(itertools.islice(backoff(), 100))
    assert min(delays) > 0 and max(delays) <= 0.25


def test_a_waiter_gets_the_lock_soon_after_release(app: Conveyor) -> None:
    holder = app.lock("handoff", ttl=60)  # only its release lets the waiter in
    holder.acquire()
    threading.Timer(0.2, holder.release).start()
    t0 = time.monotonic()
    with app.lock("handoff", ttl=5, timeout=60):
        assert time.monotonic() - t0 < 30  # on the release, not at the timeout


@pytest.mark.parametrize("ttl", [0, 0.0001, -1, None, float("nan"), float("inf"), True, "30"])
def test_a_ttl_is_mandatory_and_positive(app: Conveyor, ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        app.lock("x", ttl=ttl)  # type: ignore[arg-type]


def test_a_ttl_is_at_most_ten_years_and_a_longer_one_is_refused_before_any_grant(
    app: Conveyor,
) -> None:
    """Past ten years a ttl is "forever" in practice (and Redis once failed one half-written,
    the lock held by nobody for ages): refused, with the bound, before the broker is asked."""
    with app.lock("far", ttl=MAX_TTL, timeout=0) as lk:
        assert lk.ttl == MAX_TTL
        with pytest.raises(ConfigurationError, match="315360000 s"):
            lk.extend(MAX_TTL * 1.01)
    for ttl in (MAX_TTL + 1, 1e15):
        with pytest.raises(ConfigurationError, match=r"315360000 s \(ten years\)"):
            app.lock("far", ttl=ttl)
    with app.lock("far", ttl=1, timeout=0):  # nothing was left held
        pass


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5"])
def test_a_bad_timeout_is_refused(app: Conveyor, timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        app.lock("x", ttl=1, timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("auto_renew", ["no", 1, None])
def test_a_bad_auto_renew_is_refused(app: Conveyor, auto_renew: object) -> None:
    with pytest.raises(ConfigurationError, match="auto_renew takes True or False"):
        app.lock("x", ttl=1, auto_renew=auto_renew)  # type: ignore[arg-type]
    assert not _renewers("x")


@pytest.mark.parametrize("name", ["", "a\nb", "x" * 513])
def test_lock_names_are_validated(app: Conveyor, name: str) -> None:
    with pytest.raises(InvalidName):
        app.lock(name, ttl=1)


def test_misuse_says_what_is_wrong(app: Conveyor) -> None:
    lk = app.lock("misuse", ttl=5)
    with pytest.raises(LockError, match="not been acquired"):
        _ = lk.fence
    with pytest.raises(LockError, match="does not hold it"):
        lk.release()
    with pytest.raises(LockError, match="does not hold it"):
        lk.extend()
    assert not lk.owned()
    with lk, pytest.raises(LockError, match="reentrant"):
        lk.acquire()
    with pytest.raises(LockError, match="already released"):
        lk.release()
    assert "token" not in repr(lk) and lk.token not in repr(lk)


def test_lock_is_the_public_type(app: Conveyor) -> None:
    assert isinstance(app.lock("t", ttl=1), Lock)
