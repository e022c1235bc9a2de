"""How the Redis broker follows the master of its slot on a cluster (``_cluster``), without
a socket: what a ``CLUSTER SLOTS`` answer teaches, and what each redirecting reply does.
The real thing (failover, a migration) is in ``torture/test_redis_cluster_faults.py``."""

from __future__ import annotations

import pytest
import redis
import redis.exceptions

from conveyor import ConfigurationError, Conveyor
from conveyor.brokers.redis._cluster import SlotOwner, _redirected
from conveyor.brokers.redis._connect import check_cluster_client
from conveyor.brokers.redis._errors import MIGRATING, SlotMigrating, _convert


def _owner(slot: int = 100) -> SlotOwner:
    return SlotOwner([("seed", 7000)], slot, {})


def test_cluster_slots_names_the_master_and_every_node_is_kept() -> None:
    owner = _owner(6000)
    answer = [
        [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
        [5461, 10922, [b"", 7001, b"id2"], [b"10.0.0.5", 7004, b"id5"]],  # "": the asked one
        [10923, 16383, [b"10.0.0.3", 7002, b"id3"]],
    ]
    assert owner._learn(answer, "10.0.0.9") == ("10.0.0.9", 7001)
    assert set(owner._nodes) == {
        ("seed", 7000),
        ("10.0.0.1", 7000),
        ("10.0.0.4", 7003),
        ("10.0.0.9", 7001),
        ("10.0.0.5", 7004),
        ("10.0.0.3", 7002),
    }
    assert _owner(6000)._learn(answer[:1], "x") is None  # nobody serves it there


def test_each_redirecting_reply_says_what_the_connection_does() -> None:
    owner = _owner()
    owner.moved("old", 1)
    moved = _redirected(owner, ("old", 1), redis.exceptions.MovedError("100 new:2"))
    assert isinstance(moved, redis.ConnectionError)  # reconnect, send again ...
    assert owner.address() == ("new", 2)  # ... to the node MOVED names

    for reply in (redis.exceptions.AskError("100 other:3"), redis.exceptions.TryAgainError("x")):
        refused = _redirected(owner, ("new", 2), reply)
        assert isinstance(refused, SlotMigrating)
        assert "being migrated" in str(_convert(refused))
        assert owner.address() == ("new", 2)  # a migration does not move the owner yet

    for reply in (
        redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.ResponseError("UNBLOCKED force unblock from blocking operation"),
    ):
        owner.moved("new", 2)
        again = _redirected(owner, ("new", 2), reply)
        assert isinstance(again, redis.ConnectionError)
        assert not owner.known()  # asked again at the next connection

    assert _redirected(owner, ("new", 2), redis.ResponseError("WRONGTYPE")) is None


def test_a_script_cut_by_a_migration_says_to_pause() -> None:
    error = redis.ResponseError(
        "Script attempted to access a non local key in a cluster node script: f_1"
    )
    message = str(_convert(error))
    assert message.startswith(MIGRATING.split("(")[0])
    assert "docs/cluster.md" in message


def test_a_cluster_url_on_a_redis_py_too_old_for_cluster_transactions_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis, "__version__", "5.3.0")
    with pytest.raises(ConfigurationError, match=r"redis-py 6\.1 or newer .* 5\.3\.0.*redis>=6\.1"):
        Conveyor("redis+cluster://:secret@127.0.0.1:7000").broker  # noqa: B018
    check_cluster_client("6.1.0")
    check_cluster_client("8.2.1")
