"""Tickets published from the caller's own thread (``_direct``): beside aio-pika's loop
thread, never waiting for it, and handed to it when the direct connection fails.

* An enqueue publishes its ticket and has its confirm while the loop thread is held.
* Enqueues from many threads at once each get their confirms (one thread reads them for all).
* A direct connection that breaks fails its publishes, which go out again through aio-pika:
  no ticket is lost, and a later publish connects again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.brokers import Broker, open_broker
from conveyor.brokers.rabbitmq import _direct
from conveyor.testing.conformance import envelope
from redis_server import RedisServer, unique_prefix

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def producer(rabbitmq_url: str, redis_server: RedisServer, prefix: str) -> Iterator[Broker]:
    url = f"{rabbitmq_url}?sweep=30&confirm_timeout=2"
    with open_broker(url, store=redis_server.url, prefix=prefix) as b:
        b.enqueue([envelope()])  # declares the queue: the next tickets may go direct
        b.enqueue([envelope()])  # and the direct connection is made
        yield b


def _ready(rabbitmq_url: str, queue: str) -> int:
    """Messages ready in a queue, as RabbitMQ counts them (a passive declare)."""
    import aio_pika

    async def count() -> int:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            found = await channel.declare_queue(queue, passive=True)
            return found.declaration_result.message_count or 0

    return asyncio.run(count())


def test_an_enqueue_does_not_wait_for_the_loop_thread(
    rabbitmq_url: str, producer: Broker, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    link = producer._link  # type: ignore[attr-defined]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30)

    link._loop.call_soon_threadsafe(hold)
    assert held.wait(10)
    try:
        with caplog.at_level(logging.WARNING, logger="conveyor"):
            producer.enqueue([envelope()])
        # confirmed while the loop thread was held: the ticket is in the queue
        assert _ready(rabbitmq_url, f"{prefix}.default") == 3
        assert not [r for r in caplog.records if "RabbitMQ failed" in r.getMessage()]
    finally:
        release.set()


def test_enqueues_from_many_threads_all_get_their_confirms(
    rabbitmq_url: str, producer: Broker, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    def enqueue() -> None:
        for _ in range(25):
            producer.enqueue([envelope()])

    with caplog.at_level(logging.WARNING, logger="conveyor"):
        threads = [threading.Thread(target=enqueue) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not [r for r in caplog.records if "RabbitMQ failed" in r.getMessage()]
    assert _ready(rabbitmq_url, f"{prefix}.default") == 2 + 8 * 25


def test_a_broken_direct_connection_loses_no_ticket(
    rabbitmq_url: str, producer: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = producer._link._direct  # type: ignore[attr-defined]
    assert direct is not None and direct._sock is not None  # the first enqueue's connection
    direct._sock.shutdown(socket.SHUT_RDWR)  # the connection drops
    producer.enqueue([envelope()])  # through aio-pika after the direct write failed
    assert _ready(rabbitmq_url, f"{prefix}.default") == 3
    monkeypatch.setattr(_direct, "RETRY", 0.0)
    producer.enqueue([envelope()])
    assert direct._sock is not None  # connected again
    assert _ready(rabbitmq_url, f"{prefix}.default") == 4


def test_a_ticket_bigger_than_a_frame_is_sent_in_several(
    rabbitmq_url: str, producer: Broker, prefix: str
) -> None:
    """A bulk enqueue of many jobs shares 64 tickets out, each of which may outgrow
    RabbitMQ's frame size (128 kB): its body goes in several frames."""
    import aio_pika

    link = producer._link  # type: ignore[attr-defined]
    body = b" ".join(b"%026d" % i for i in range(10_000))  # 270 kB of ids
    confirms = link._direct.send([(f"{prefix}.default", body)])
    assert confirms is not None and link._direct.wait(confirms, 10)

    async def last() -> bytes:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            queue = await channel.get_queue(f"{prefix}.default", ensure=False)
            got = b""
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                got = message.body
            return got

    assert asyncio.run(last()) == body


def test_a_ticket_for_a_queue_deleted_meanwhile_is_not_confirmed(
    rabbitmq_url: str, producer: Broker, prefix: str
) -> None:
    """Unroutable, it would be confirmed and dropped: published mandatory, it comes back
    (and the enqueue says so, like aio-pika's publish, which is mandatory too)."""
    import aio_pika

    async def delete() -> None:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(f"{prefix}.default")

    asyncio.run(delete())
    link = producer._link  # type: ignore[attr-defined]
    confirms = link._direct.send([(f"{prefix}.default", b"x")])
    assert confirms is not None and not link._direct.wait(confirms, 10)


def test_an_enqueue_waits_for_its_confirms_no_longer_than_the_timeout(
    rabbitmq_url: str, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct publish that fails goes again through aio-pika within what is left of
    ``confirm_timeout``: one not confirmed in time (a memory alarm blocks the connections)
    is left to the sweep, and the enqueue returns after the timeout, not after it twice."""
    url = f"{rabbitmq_url}?sweep=30&confirm_timeout=1"
    with open_broker(url, store=redis_server.url, prefix=prefix) as b:
        b.enqueue([envelope()])  # declares the queue
        b.enqueue([envelope()])  # the direct connection is made
        link = b._link  # type: ignore[attr-defined]
        monkeypatch.setattr(link._direct, "_take", lambda sock, data: None)  # no confirm
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(30)

        link._loop.call_soon_threadsafe(hold)  # aio-pika cannot publish either
        assert held.wait(10)
        try:
            start = time.monotonic()
            b.enqueue([envelope()])
            assert time.monotonic() - start < 1.8
        finally:
            release.set()


def test_a_forked_child_publishes_on_a_connection_of_its_own_and_closes_it(
    rabbitmq_url: str, producer: Broker, prefix: str
) -> None:
    """The parent's connection is the parent's: a forked child (a process pool's) that
    publishes makes its own, and its broker's close closes that one."""
    direct = producer._link._direct  # type: ignore[attr-defined]
    parent = direct._sock
    pid = os.fork()
    if pid == 0:  # the child: its exit code says what it saw
        code = 1
        try:
            producer.enqueue([envelope()])
            mine = direct._sock is not None and direct._sock is not parent
            producer.close()
            code = 0 if mine and direct._sock is None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    producer.enqueue([envelope()])
    assert direct._sock is parent  # the parent's, untouched
    assert _ready(rabbitmq_url, f"{prefix}.default") == 4
