"""app.store: get/set/delete/incr/ttl, and update as an optimistic transaction."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    ConveyorError,
    InvalidName,
    TransactionConflict,
    ValidationError,
)
from conveyor._clock import FakeClock
from conveyor.stores import Store
from conveyor.stores._store import MAX_TTL


@pytest.fixture
def store(app: Conveyor) -> Store:
    return app.store


def _run_in_threads(n: int, fn: Any) -> None:
    start = threading.Barrier(n)

    def run() -> None:
        start.wait()
        fn()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


# -- values ----------------------------------------------------------------------------------


def test_set_get_delete(store: Store) -> None:
    assert store.get("user:1") is None
    assert store.get("user:1", "nobody") == "nobody"
    store.set("user:1", {"name": "Ada", "langs": ["en", "fr"], "age": 36})
    assert store.get("user:1") == {"name": "Ada", "langs": ["en", "fr"], "age": 36}
    store.set("user:1", "replaced")
    assert store.get("user:1") == "replaced"
    assert store.delete("user:1") is True
    assert store.delete("user:1") is False
    assert store.get("user:1", 0) == 0


def test_stored_none_and_falsy_values_round_trip(store: Store) -> None:
    values: list[Any] = [None, 0, "", [], {}, False, 1.5, -7]
    for value in values:
        store.set("v", value)
        assert store.get("v", "absent") == value
        assert type(store.get("v", "absent")) is type(value)


def test_values_expire_after_their_ttl(store: Store, clock: FakeClock) -> None:
    store.set("session", "abc", ttl=60)
    store.set("forever", "x")
    ttl = store.ttl("session")
    assert ttl is not None and 59 < ttl <= 60
    assert store.ttl("forever") is None
    assert store.ttl("missing") is None
    clock.advance(61)
    assert store.get("session") is None
    assert store.get("forever") == "x"


# -- counters --------------------------------------------------------------------------------


def test_incr_counts_from_zero_and_keeps_its_first_ttl(store: Store, clock: FakeClock) -> None:
    assert store.incr("hits", ttl=10) == 1
    assert store.incr("hits", 5) == 6
    assert store.incr("hits", -2) == 4
    assert store.get("hits") == 4
    clock.advance(5)
    store.incr("hits", ttl=100)  # the counter exists: its expiry stays
    clock.advance(6)
    assert store.get("hits") is None


def test_set_incr_and_update_share_one_counter(store: Store) -> None:
    store.set("n", 10)
    assert store.incr("n") == 11
    assert store.update("n", lambda n: n * 2) == 22
    assert store.incr("n") == 23


def test_incr_refuses_a_non_integer(store: Store) -> None:
    store.set("doc", {"a": 1})
    with pytest.raises(ConveyorError, match="store key 'doc' holds a value that is not an"):
        store.incr("doc")  # the key as the caller wrote it, which the advice applies to
    with pytest.raises(ValidationError):
        store.incr("n", 1.5)  # type: ignore[arg-type]


def test_fifty_concurrent_incrs_lose_nothing(store: Store) -> None:
    _run_in_threads(50, lambda: store.incr("counter"))
    assert store.get("counter") == 50


# -- transactions ----------------------------------------------------------------------------


def test_update_reads_modifies_and_writes(store: Store) -> None:
    seen: list[Any] = []

    def add_item(cart: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(cart)
        cart = cart or {"items": []}
        return {"items": [*cart["items"], "apple"]}

    assert store.update("cart", add_item) == {"items": ["apple"]}
    assert store.update("cart", add_item) == {"items": ["apple", "apple"]}
    assert seen == [None, {"items": ["apple"]}]
    assert store.get("cart") == {"items": ["apple", "apple"]}


def test_update_returning_none_deletes(store: Store) -> None:
    store.set("k", "v")
    assert store.update("k", lambda old: None) is None
    assert store.get("k", "gone") == "gone"
    assert store.update("absent", lambda old: None) is None
    assert store.get("absent", "gone") == "gone"


def test_update_that_raises_writes_nothing(store: Store) -> None:
    store.set("k", 1)

    def boom(old: Any) -> Any:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.update("k", boom)
    assert store.get("k") == 1


def test_update_sets_the_ttl_it_is_given(store: Store, clock: FakeClock) -> None:
    store.update("k", lambda old: "v", ttl=10)
    clock.advance(11)
    assert store.get("k") is None


def test_fifty_concurrent_updates_lose_nothing(store: Store) -> None:
    _run_in_threads(50, lambda: store.update("counter", lambda n: (n or 0) + 1))
    assert store.get("counter") == 50


def test_fifty_concurrent_list_appends_lose_nothing(store: Store) -> None:
    lock = threading.Lock()
    ids = iter(range(50))

    def append() -> None:
        with lock:
            mine = next(ids)
        store.update("log", lambda items: [*(items or []), mine])

    _run_in_threads(50, append)
    assert sorted(store.get("log")) == list(range(50))


def test_update_reruns_fn_on_a_conflict_and_gives_up_after_its_retries(app: Conveyor) -> None:
    if app.url.startswith("memory"):
        pytest.skip("memory runs fn under its own mutex: no writer can come in between")
    store = app.store
    store.set("k", 0)
    seen: list[int] = []

    def interfered(n: int) -> int:
        seen.append(n)
        if len(seen) == 1:
            store.set("k", 100)  # another writer, between our read and our write
        return n + 1

    assert store.update("k", interfered) == 101
    assert seen == [0, 100]

    def always_interfered(n: int) -> int:
        store.incr("k")
        return n + 1

    with pytest.raises(TransactionConflict, match=r"store\.incr"):
        store.update("k", always_interfered, retries=2)


# -- keys and arguments ----------------------------------------------------------------------


def test_store_keys_cannot_touch_locks(app: Conveyor) -> None:
    with app.lock("job", ttl=30) as lk:
        app.store.set("lock:job", "mine now")
        app.store.delete("lock:job")
        app.store.set("fence:job", 0)
        assert lk.owned()
    with app.lock("job", ttl=30) as again:
        assert again.fence > lk.fence


@pytest.mark.parametrize("key", ["", "a\x00b", "last\n", "half\udc80", "x" * 507])
def test_keys_are_validated(store: Store, key: str) -> None:
    with pytest.raises(InvalidName):
        store.set(key, 1)
    with pytest.raises(InvalidName):
        store.get(key)


@pytest.mark.parametrize("retries", [-1, 1.5, True, "3"])
def test_update_takes_a_whole_number_of_retries(store: Store, retries: Any) -> None:
    calls: list[Any] = []
    with pytest.raises(ValidationError, match="retries= takes a whole number"):
        store.update("k", lambda old: calls.append(old) or 1, retries=retries)
    assert calls == [] and store.get("k") is None


def test_the_longest_key_fits(store: Store) -> None:
    store.set("x" * 506, 1)
    assert store.get("x" * 506) == 1


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), True])
def test_a_ttl_must_be_positive(store: Store, ttl: Any) -> None:
    with pytest.raises(ConfigurationError):
        store.set("k", 1, ttl=ttl)
    with pytest.raises(ConfigurationError):
        store.update("k", lambda old: 1, ttl=ttl)


def test_a_ttl_is_at_most_ten_years_and_a_longer_one_writes_nothing(store: Store) -> None:
    store.set("far", 1, ttl=MAX_TTL)
    far = store.ttl("far")
    assert far is not None and MAX_TTL - 60 < far <= MAX_TTL
    for ttl in (MAX_TTL + 1, 1e15, 1e20):
        with pytest.raises(ConfigurationError, match=r"up to 315360000 \(ten years\)"):
            store.set("k", 1, ttl=ttl)
        with pytest.raises(ConfigurationError, match="ten years"):
            store.update("k", lambda old: 1, ttl=ttl)
        with pytest.raises(ConfigurationError, match="ten years"):
            store.incr("k", ttl=ttl)
    assert store.get("k") is None


def test_a_signed_codec_signs_values_and_still_counts() -> None:
    with Conveyor("memory://", secret="s3cret") as app:
        app.store.set("doc", {"a": [1, 2]})
        assert app.store.get("doc") == {"a": [1, 2]}
        raw = app.broker.kv.get("store:doc")
        assert raw is not None and raw.startswith(b"CV2")
        app.store.set("n", 1)
        assert app.store.incr("n") == 2
        assert app.store.update("n", lambda n: n + 1) == 3
        assert app.store.get("n") == 3
