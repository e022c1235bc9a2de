"""Network faults between the RabbitMQ broker and RabbitMQ (``faultproxy`` in front of the
machine's server, a virtual host of the session's own), the record store on a private
redis-server.

What the faults show:

* **Cut mid-publish**: the direct connection (``_direct``) is reset as an enqueue publishes
  its ticket there; the ticket goes again through aio-pika's connection, and the job runs
  once. When that publish is cut too, the enqueue still returns the job's id (the record
  is written; the failure is logged); a worker finds the job on its sweep, runs it once,
  and the producer's clients reconnect for the next enqueue.
* **Cut mid-consume**: a worker running a job loses its connection; its finish is still
  recorded (the store fences it, not the AMQP channel), and its client reconnects and
  consumes again on its own: the next ticket wakes its blocked fetch (its sweep is far).
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import pytest

from conveyor._message import Delivery, JobStatus
from conveyor.brokers import Broker, open_broker
from conveyor.brokers._port import Finish
from conveyor.testing.conformance import envelope
from redis_server import RedisServer, unique_prefix

from .faultproxy import FaultProxy

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.timeout(60)]

LEASE = 30.0


def _through(url: str, proxy: FaultProxy, options: str) -> str:
    parts = urlsplit(url)
    return f"amqp://{parts.username}:{parts.password}@127.0.0.1:{proxy.port}{parts.path}?{options}"


@pytest.fixture
def proxy(rabbitmq_url: str) -> FaultProxy:
    with FaultProxy(urlsplit(rabbitmq_url).port or 5672) as p:
        yield p


def _open(url: str, store: RedisServer, prefix: str) -> Broker:
    return open_broker(url, store=store.url, prefix=prefix)


def _finish(broker: Broker, delivery: Delivery) -> bool:
    return broker.finish([Finish(delivery, JobStatus.SUCCEEDED, result=b"ok")])[0]


@pytest.mark.parametrize("both", [False, True], ids=["direct", "direct-then-aio-pika"])
def test_a_cut_mid_publish_loses_no_job(
    rabbitmq_url: str,
    redis_server: RedisServer,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    *,
    both: bool,
) -> None:
    prefix = unique_prefix()
    producer = _open(_through(rabbitmq_url, proxy, "confirm_timeout=2"), redis_server, prefix)
    worker = _open(f"{rabbitmq_url}?sweep=0.5", redis_server, prefix)
    link = producer._link  # type: ignore[attr-defined]
    try:
        warm = [envelope(), envelope()]
        for job in warm:  # connected, queue declared, then the direct connection made
            producer.enqueue([job])
        got: set[str] = set()
        while len(got) < len(warm):
            got |= {d.id for d in worker.fetch(["default"], "w", 10, LEASE, 5.0)}
        assert got == {j.id for j in warm} and link._direct._sock is not None
        job = envelope()
        proxy.cut("up", 0)  # the next bytes the producer sends (the publish) reset it
        if not both:
            with caplog.at_level(logging.WARNING, "conveyor"):
                assert producer.enqueue([job]) == [job.id]
            assert not [r for r in caplog.records if r.name == "conveyor"]
            assert proxy.stats.cuts == 1
            (got_job,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)  # its ticket came
            assert (got_job.id, got_job.deliveries) == (job.id, 1)
            assert _finish(worker, got_job)
            return
        again = link._send_on_loop

        def cut_again(tickets: object) -> object:
            proxy.cut("up", 0)  # aio-pika's publish of the tickets the cut left unconfirmed
            return again(tickets)

        monkeypatch.setattr(link, "_send_on_loop", cut_again)
        with caplog.at_level(logging.WARNING, "conveyor"):
            assert producer.enqueue([job]) == [job.id]
        ours = [r.getMessage() for r in caplog.records if r.name == "conveyor"]
        assert any("publishing 1 ticket(s) to RabbitMQ failed" in m for m in ours)
        assert proxy.stats.cuts == 2
        monkeypatch.undo()
        (found,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)  # the sweep finds it
        assert (found.id, found.deliveries) == (job.id, 1)
        assert _finish(worker, found)
        later = envelope()  # the producer's clients have reconnected
        deadline = time.monotonic() + 20
        while not producer.enqueue([later]) or not worker.get([later.id])[0]:
            assert time.monotonic() < deadline
        assert [d.id for d in worker.fetch(["default"], "w", 10, LEASE, 5.0)] == [later.id]
        assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []
    finally:
        producer.close()
        worker.close()


def test_a_cut_mid_consume_loses_nothing_and_the_worker_consumes_again(
    rabbitmq_url: str, redis_server: RedisServer, proxy: FaultProxy
) -> None:
    prefix = unique_prefix()
    producer = _open(rabbitmq_url, redis_server, prefix)
    worker = _open(_through(rabbitmq_url, proxy, "sweep=30"), redis_server, prefix)
    try:
        assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
        first, second = envelope(), envelope()
        producer.enqueue([first])
        (mine,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
        proxy.reset()  # the worker runs the first job; its consumer is gone
        assert _finish(worker, mine)  # the store fences the finish, not the channel
        got: list[Delivery] = []
        waiter = threading.Thread(
            target=lambda: got.extend(worker.fetch(["default"], "w", 10, LEASE, 20.0))
        )
        waiter.start()
        time.sleep(0.2)  # its look found nothing: only a ticket (or a sweep, 30 s) wakes it
        enqueued_at = time.monotonic()
        producer.enqueue([second])
        waiter.join()
        assert [d.id for d in got] == [second.id]
        assert time.monotonic() - enqueued_at < 10  # reconnected and consuming again
        assert proxy.stats.accepted >= 2
        assert _finish(worker, got[0])
        records = producer.get([first.id, second.id])
        assert [(r.status, r.deliveries) for r in records if r] == [(JobStatus.SUCCEEDED, 1)] * 2
    finally:
        producer.close()
        worker.close()
