"""Every broker (``tests/brokers.py``, see ``conftest``) writes a key-value entry or a lock
with a TTL far past what ``app.lock`` / ``app.store`` / ``@app.cached`` take (ten years)
whole: the port may be given one by other callers.

Redis once wrote the value, then failed the ``PEXPIRE`` of a TTL of 1e14 s and up (its
milliseconds went as ``1e+17``): a lock held by nobody for ages, an ``update`` that raised
yet wrote.
"""

from __future__ import annotations

import pytest

from conveyor.brokers import Broker

FAR = (1e15, 1e20)  # seconds; ten years is some 3e8


@pytest.mark.parametrize("ttl", FAR)
def test_a_far_ttl_writes_a_value_whole(broker: Broker, ttl: float) -> None:
    kv = broker.kv
    assert kv.set("far", b"v", ttl)
    assert kv.get("far") == b"v"
    left = kv.ttl("far")
    assert left is not None and ttl * 0.99 < left <= ttl
    assert kv.update("updated", lambda old: b"new", ttl) == b"new"
    assert kv.get("updated") == b"new"
    assert kv.incr("counter", 1, ttl) == 1
    left = kv.ttl("counter")
    assert left is not None and ttl * 0.99 < left <= ttl


@pytest.mark.parametrize("ttl", FAR)
def test_a_far_ttl_grants_a_lock_its_holder_can_release(broker: Broker, ttl: float) -> None:
    kv = broker.kv
    assert kv.lock_acquire("far", "token-a", ttl) is not None
    assert kv.lock_acquire("far", "token-b", 1) is None
    assert kv.lock_extend("far", "token-a", ttl)
    assert kv.lock_release("far", "token-a")
    assert kv.lock_acquire("far", "token-b", 1) is not None
