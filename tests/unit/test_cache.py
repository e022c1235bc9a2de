"""app.cached: hits and misses, TTL, invalidation, async, one computation under a stampede."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path
from typing import Any, assert_type

import pytest

from conveyor import ConfigurationError, Conveyor, InvalidName, SerializationError
from conveyor._clock import FakeClock
from conveyor.stores._store import MAX_TTL


class Source:
    """A slow source that counts how often it is asked."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self._mutex = threading.Lock()

    def fetch(self, sku: str, qty: int) -> dict[str, Any]:
        with self._mutex:
            self.calls += 1
        time.sleep(self.delay)
        return {"sku": sku, "total": 2.5 * qty}


def test_a_hit_returns_the_stored_value_without_calling(app: Conveyor) -> None:
    source = Source()

    @app.cached(ttl=60)
    def price(sku: str, qty: int = 1) -> dict[str, Any]:
        return source.fetch(sku, qty)

    assert price("a") == {"sku": "a", "total": 2.5}
    assert assert_type(price("a"), dict[str, Any]) == {"sku": "a", "total": 2.5}
    assert price("a", 1) == price(sku="a") == price(qty=1, sku="a")
    assert source.calls == 1
    assert price("a", 2) == {"sku": "a", "total": 5.0}
    assert price("b") == {"sku": "b", "total": 2.5}
    assert source.calls == 3


def test_entries_expire_after_the_ttl(app: Conveyor, clock: FakeClock) -> None:
    source = Source()

    @app.cached(ttl=60)
    def price(sku: str) -> dict[str, Any]:
        return source.fetch(sku, 1)

    price("a")
    clock.advance(59)
    price("a")
    assert source.calls == 1
    clock.advance(2)
    price("a")
    assert source.calls == 2


def test_invalidate_forgets_one_entry(app: Conveyor) -> None:
    source = Source()

    @app.cached(ttl=60)
    def price(sku: str, qty: int = 1) -> dict[str, Any]:
        return source.fetch(sku, qty)

    price("a")
    price("b")
    assert price.invalidate(sku="a", qty=1) is True
    assert price.invalidate("a") is False
    price("a")
    price("b")
    assert source.calls == 3


def test_none_is_cached_but_exceptions_are_not(app: Conveyor) -> None:
    calls = 0

    @app.cached(ttl=60)
    def lookup(x: int) -> int | None:
        nonlocal calls
        calls += 1
        if x < 0:
            raise ValueError("negative")
        return None

    assert lookup(1) is None
    assert lookup(1) is None
    assert calls == 1
    for _ in range(2):
        with pytest.raises(ValueError, match="negative"):
            lookup(-1)
    assert calls == 3


def test_a_hundred_threads_missing_at_once_compute_once(app: Conveyor) -> None:
    source = Source(delay=0.3)

    @app.cached(ttl=60)
    def price(sku: str) -> dict[str, Any]:
        return source.fetch(sku, 1)

    start = threading.Barrier(100)
    results: list[dict[str, Any]] = []

    def caller() -> None:
        start.wait()
        results.append(price("hot"))

    threads = [threading.Thread(target=caller) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert source.calls == 1
    assert results == [{"sku": "hot", "total": 2.5}] * 100


def test_waiters_compute_themselves_when_the_computing_caller_died(
    app: Conveyor, clock: FakeClock
) -> None:
    @app.cached(ttl=60)
    def square(x: int) -> int:
        return x * x

    # What a caller that crashed mid-computation leaves behind: the key's computing lock,
    # held by nobody alive. The clock is fake, so move it past that lock's TTL meanwhile.
    app.lock(square.cache_key(7), ttl=5).acquire()
    threading.Timer(0.2, clock.advance, args=(6,)).start()
    assert square(7) == 49


def test_waiters_of_a_computation_that_raised_do_not_queue_one_after_another(
    app: Conveyor,
) -> None:
    """Each waiter of a failed computation computes (and fails) at once: queued on the lock,
    the last of 20 callers of a function failing after 0.3 s would wait 20 x 0.3 = 6 s."""
    source = Source(delay=0.3)

    @app.cached(ttl=60)
    def fetch(sku: str) -> dict[str, Any]:
        source.fetch(sku, 1)
        raise ConnectionError("backend down")

    start = threading.Barrier(20)
    waits: list[float] = []
    failed: list[ConnectionError] = []

    def caller() -> None:
        start.wait()
        began = time.monotonic()
        try:
            fetch("a")
        except ConnectionError as exc:
            failed.append(exc)
        waits.append(time.monotonic() - began)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(failed) == 20
    assert max(waits) < 3.0, sorted(waits)
    assert source.calls <= 20


def test_async_waiters_of_a_computation_that_raised_do_not_queue_either(app: Conveyor) -> None:
    calls = 0

    @app.cached(ttl=60)
    async def fetch(sku: str) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        raise ConnectionError("backend down")

    async def caller() -> float:
        began = time.monotonic()
        with pytest.raises(ConnectionError):
            await fetch("a")
        return time.monotonic() - began

    async def main() -> list[float]:
        return await asyncio.gather(*(caller() for _ in range(20)))

    waits = asyncio.run(main())
    assert max(waits) < 3.0, sorted(waits)
    assert calls <= 20


def test_a_miss_returns_what_a_hit_will_the_value_as_the_codec_gives_it_back(
    app: Conveyor,
) -> None:
    @app.cached(ttl=60)
    def pair() -> tuple[int, int]:
        return (1, 2)

    @app.cached(ttl=60)
    async def nested() -> dict[str, Any]:
        return {"a": (1, (2, 3))}

    assert pair() == [1, 2]  # JSON has no tuple: the hit below gives a list, and so does this
    assert pair() == [1, 2]
    assert asyncio.run(nested()) == {"a": [1, [2, 3]]}
    assert asyncio.run(nested()) == {"a": [1, [2, 3]]}


def test_async_functions_are_cached_and_stampedes_compute_once(app: Conveyor) -> None:
    calls = 0

    @app.cached(ttl=60)
    async def fetch(user: int) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return [user, user + 1]

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(fetch(5) for _ in range(100)))

    assert asyncio.run(main()) == [[5, 6]] * 100
    assert asyncio.run(main()) == [[5, 6]] * 100
    assert calls == 1
    assert fetch.invalidate(5)
    asyncio.run(main())
    assert calls == 2


def test_a_key_function_names_the_entry(app: Conveyor) -> None:
    calls = 0

    @app.cached(ttl=60, key=lambda user, **_: f"user:{user['id']}", name="profile")
    def profile(user: dict[str, Any], verbose: bool = False) -> str:
        nonlocal calls
        calls += 1
        return f"profile {user['id']}"

    assert profile.cache_key({"id": 3}) == "cache:profile:user:3"
    assert profile({"id": 3}) == profile({"id": 3}, verbose=True) == "profile 3"
    assert profile({"id": 3}, True) == profile(user={"id": 3}) == "profile 3"
    assert calls == 1


def test_a_key_function_gets_the_arguments_alike_however_they_were_passed(
    app: Conveyor,
) -> None:
    """Bound to the signature: as many by position as the key function takes by position,
    the others by name; a key function with a *args gets them all by position."""
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(*args: Any, **kwargs: Any) -> str:
        seen.append((args, kwargs))
        return "k"

    @app.cached(ttl=60, key=lambda a, b=0, **rest: f"{a}:{b}:{sorted(rest.items())}")
    def named(a: int, b: int = 0, c: int = 0, *, d: int = 0) -> int:
        return a + b + c + d

    assert (
        named.cache_key(1, 2, 3)
        == named.cache_key(c=3, b=2, a=1)
        == f"cache:{named.name}:1:2:[('c', 3)]"
    )
    assert named.cache_key(1, c=3, d=4).endswith(":1:0:[('c', 3), ('d', 4)]")

    @app.cached(ttl=60, key=record)
    def spread(a: int, /, b: int, *more: int, e: int = 0) -> int:
        return a

    spread.cache_key(1, 2, 3, 4, e=5)
    spread.cache_key(1, b=2)
    assert seen == [((1, 2, 3, 4), {"e": 5}), ((1, 2), {})]


def test_a_key_function_gets_the_call_as_made_when_the_signature_does_not_fit_it(
    app: Conveyor,
) -> None:
    # A decorator's wrapper that supplies an argument itself (functools.wraps: its
    # signature is the wrapped function's) could not be bound: every call raised TypeError.
    def with_db(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn("db", *args, **kwargs)

        return wrapper

    @app.cached(ttl=60, key=lambda user_id: f"u{user_id}")
    @with_db
    def load_user(db: str, user_id: int) -> int:
        return user_id * 10

    assert load_user(5) == load_user(5) == 50
    assert load_user.cache_key(5) == f"cache:{load_user.name}:u5"


class _TwoArguments(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def test_a_value_the_codec_cannot_read_back_is_returned_and_not_cached() -> None:
    # With pickle, a value can encode and fail to decode (an exception whose __init__
    # takes other arguments): returning the decoded copy made every call fail, and the
    # entry that cannot be read was written anyway.
    with Conveyor("memory://", serializer="pickle", secret="s3") as app:
        calls = 0

        @app.cached(ttl=60)
        def check(x: int) -> _TwoArguments:
            nonlocal calls
            calls += 1
            return _TwoArguments(x, "bad")

        assert str(check(1)) == str(check(1)) == "1: bad"
        assert calls == 2
        assert app.broker.kv.get(check.cache_key(1)) is None  # nothing written


def test_keys_differ_per_function_and_per_argument(app: Conveyor) -> None:
    @app.cached(ttl=60)
    def a(x: int) -> int:
        return x

    @app.cached(ttl=60)
    def b(x: int) -> int:
        return -x

    assert a(1) == 1 and b(1) == -1
    assert a.cache_key(1) != b.cache_key(1)
    assert a.cache_key(1) != a.cache_key(2)
    assert a.cache_key(1) == a.cache_key(x=1)
    assert "test_cache" in a.cache_key(1)


def test_arguments_the_codec_cannot_encode_ask_for_a_key_function(app: Conveyor) -> None:
    @app.cached(ttl=60)
    def f(x: object) -> int:
        return 1

    with pytest.raises(SerializationError, match="key="):
        f(object())


def test_a_signed_codec_caches_too(tmp_path: Path) -> None:
    with Conveyor("memory://", secret="s3cret") as app:
        calls = 0

        @app.cached(ttl=60)
        def f(x: int) -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"x": x}

        assert f(1) == f(1) == {"x": 1}
        assert calls == 1


def test_the_wrapper_keeps_the_functions_name_and_doc(app: Conveyor) -> None:
    @app.cached(ttl=60)
    def documented(x: int) -> int:
        """Doubles."""
        return 2 * x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Doubles."
    assert documented.__wrapped__(2) == 4


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), None, True])
def test_ttl_must_be_positive(app: Conveyor, ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        app.cached(ttl=ttl)  # type: ignore[arg-type]


def test_ttl_is_at_most_ten_years(app: Conveyor) -> None:
    assert app.cached(ttl=MAX_TTL, name="far")(lambda: 1)() == 1
    for ttl in (MAX_TTL + 1, 1e15):
        with pytest.raises(ConfigurationError, match=r"up to 315360000 \(ten years\)"):
            app.cached(ttl=ttl)


def test_a_bad_name_is_refused(app: Conveyor) -> None:
    with pytest.raises(InvalidName):

        @app.cached(ttl=1, name="bad\nname")
        def f() -> int:
            return 1


def test_a_name_too_long_for_its_keys_is_refused_when_decorating(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="too long"):
        app.cached(ttl=1, name="n" * 460)(lambda x: x)
    # with key=, the keys are the name and what the key function returns: it may be long
    assert app.cached(ttl=1, name="n" * 460, key=str)(lambda x: x)(1) == 1


def test_a_method_is_cached_per_what_its_key_takes_from_the_instance(app: Conveyor) -> None:
    source = Source()

    class Prices:
        def __init__(self, region: str) -> None:
            self.region = region

        @app.cached(ttl=60, key=lambda self, sku: f"{self.region}:{sku}")
        def price(self, sku: str) -> dict[str, Any]:
            return source.fetch(f"{self.region}/{sku}", 1)

    eu, us = Prices("eu"), Prices("us")
    assert eu.price("a") == eu.price("a") == {"sku": "eu/a", "total": 2.5}
    assert Prices("eu").price("a") == {"sku": "eu/a", "total": 2.5}  # same key: cached
    assert us.price("a") == {"sku": "us/a", "total": 2.5}
    assert source.calls == 2
    assert eu.price.cache_key("a").endswith(":eu:a")
    assert eu.price.invalidate("a") is True
    assert eu.price("a") == {"sku": "eu/a", "total": 2.5} and source.calls == 3


def test_a_method_without_a_key_function_says_to_give_one(app: Conveyor) -> None:
    class Repo:
        @app.cached(ttl=60)
        def get(self, x: int) -> int:
            return x

    with pytest.raises(SerializationError, match="key="):
        Repo().get(1)


def test_an_async_method_is_cached_too(app: Conveyor) -> None:
    calls = 0

    class Repo:
        @app.cached(ttl=60, key=lambda self, x: str(x))
        async def get(self, x: int) -> int:
            nonlocal calls
            calls += 1
            return x * 2

    async def twice() -> list[int]:
        return [await Repo().get(3), await Repo().get(3)]

    assert asyncio.run(twice()) == [6, 6] and calls == 1


def test_two_functions_under_one_name_are_refused(app: Conveyor) -> None:
    """They would share entries: a factory's functions over other values, two lambdas."""

    def make(factor: int) -> Any:
        @app.cached(ttl=60)
        def scale(n: int) -> int:
            return n * factor

        return scale

    double = make(2)
    with pytest.raises(ConfigurationError, match="give each its own name="):
        make(3)
    assert make(2)(5) == double(5) == 10  # the same values again: one function
    app.cached(ttl=60)(lambda x: x + 1)
    with pytest.raises(ConfigurationError, match="another cached function"):
        app.cached(ttl=60)(lambda x: -x)
    assert app.cached(ttl=60, name="neg")(lambda x: -x)(1) == -1
