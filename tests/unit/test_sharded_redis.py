"""A sharded Redis prefix's pure parts: ids and their shard, placement, tags, cursors.

No socket: a ``ShardedRedisBroker`` connects at its first call, and none is made here.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor._errors import ConfigurationError, InvalidURL, ValidationError
from conveyor._message import Envelope
from conveyor.brokers import open_broker
from conveyor.brokers.redis._cluster import slot_of
from conveyor.brokers.redis._sharded import ShardedRedisBroker
from conveyor.brokers.redis._shards import (
    choose_tags,
    join_cursor,
    key_shard,
    mint,
    pick,
    round_robin,
    shard_of,
    split_cursor,
)

URL = "redis://127.0.0.1:1/?shards=4&prefix=billing"  # nothing listens: nothing is asked


@pytest.fixture
def broker() -> Iterator[ShardedRedisBroker]:
    b = open_broker(URL)
    assert isinstance(b, ShardedRedisBroker)
    yield b
    b.close()


def test_a_minted_id_names_its_shard_and_any_other_id_hashes_to_one() -> None:
    for shard in range(4):
        job_id = mint(shard)
        assert job_id.endswith(f".s{shard}") and shard_of(job_id, 4) == shard
    assert shard_of("report-2024", 4) == zlib.crc32(b"report-2024") % 4
    assert shard_of("nightly.s9", 4) == zlib.crc32(b"nightly.s9") % 4  # no shard 9 of 4
    assert shard_of("nightly.s3", 4) == 3  # a user's id may name its shard
    assert key_shard("invoice:7", 4) == zlib.crc32(b"invoice:7") % 4


def test_the_url_opens_a_sharded_broker_of_that_many_shards(broker: ShardedRedisBroker) -> None:
    assert broker.shards == 4 and broker.prefix == "billing"
    with pytest.raises(InvalidURL, match="shards"):
        open_broker("redis://127.0.0.1:1/?shards=0")
    for too_many in (257, 5000):
        with pytest.raises(ConfigurationError, match="1 to 256 shards"):
            open_broker(f"redis://127.0.0.1:1/?shards={too_many}")


def test_ids_minted_between_two_enqueues_share_the_threads_current_shard(
    broker: ShardedRedisBroker,
) -> None:
    first = broker.new_job_id()
    batch = [broker.new_job_id() for _ in range(20)]
    assert {broker.shard_of(i) for i in batch} == {broker.shard_of(first)}


def test_a_keyed_job_goes_to_its_keys_shard_and_a_dependent_to_its_dependencies(
    broker: ShardedRedisBroker,
) -> None:
    for key in ("a", "b", "invoice:7", "x" * 100):
        assert broker.shard_of(broker.new_job_id(key=key)) == key_shard(key, 4)
    dep = mint(2)
    assert broker.shard_of(broker.new_job_id(depends_on=[dep, mint(2)])) == 2
    assert broker.shard_of(broker.new_job_id()) == 2  # the rest of the batch joins them
    with pytest.raises(ValidationError, match=r"on 2 shards.*enqueue_many"):
        broker.new_job_id(depends_on=[mint(1), mint(3)])
    other = (key_shard("k", 4) + 1) % 4
    with pytest.raises(ValidationError, match="a job with both must have them on one shard"):
        broker.new_job_id(key="k", depends_on=[mint(other)])


def test_an_envelope_on_another_shard_than_its_key_or_dependencies_is_refused(
    broker: ShardedRedisBroker,
) -> None:
    wrong = next(s for s in range(4) if s != key_shard("k", 4))
    env = Envelope(mint(wrong), "default", b"p", key="k")
    with pytest.raises(ValidationError, match=rf"\.s{key_shard('k', 4)}|\.s<shard>"):
        broker.enqueue([env])
    env = Envelope(mint(0), "default", b"p", depends_on=(mint(1),))
    with pytest.raises(ValidationError, match="dependencies are on shard"):
        broker.enqueue([env])


def test_the_app_mints_its_ids_through_the_broker() -> None:
    app = Conveyor(URL)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    envs = [app.envelope(add.s(i, 1)) for i in range(5)]
    assert len({e.id.rsplit(".s", 1)[1] for e in envs}) == 1
    keyed = app.envelope(add.options(key="only-one").s(1, 1))
    assert keyed.id.endswith(f".s{key_shard('only-one', 4)}")
    app.close()


def test_power_of_two_choices_takes_the_less_loaded_of_two() -> None:
    rng = random.Random(7)
    loads = [50, 0, 50, 50]
    picks = [pick(loads, rng) for _ in range(1000)]
    # Shard 1 wins whenever it is drawn: half the draws of two of four.
    assert 400 < picks.count(1) < 600
    assert pick([9], rng) == 0


def test_tags_fall_on_the_masters_in_turn() -> None:
    halves = [lambda slot: slot < 8192, lambda slot: slot >= 8192]
    tags = choose_tags("billing", 6, halves)
    assert len(set(tags)) == 6 and all(t.startswith("billing~") for t in tags)
    for i, tag in enumerate(tags):
        assert halves[i % 2](slot_of("{" + tag + "}"))
    assert choose_tags("billing", 3, []) == ["billing~0", "billing~1", "billing~2"]


def test_a_cursor_names_a_place_in_every_log() -> None:
    assert split_cursor(None, 3) == [0, 0, 0]
    assert split_cursor(join_cursor([4, 0, 17]), 3) == [4, 0, 17]
    for bad in ("12", "1.2", "1.2.x", "1.2.3.4", ""):
        with pytest.raises(ConfigurationError, match="sharded over 2 shards"):
            split_cursor(bad, 3)


def test_pages_are_merged_one_item_of_each_in_turn() -> None:
    pages = [["a1", "a2", "a3"], [], ["c1"]]
    assert list(round_robin(pages)) == [(0, "a1"), (2, "c1"), (0, "a2"), (0, "a3")]
