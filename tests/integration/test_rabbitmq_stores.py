"""The RabbitMQ broker over each kind of record store: what one store's ways must not change.

* An idle worker wakes when a scheduled job, a retry's backoff or a lease comes due, with
  an SQLite store too (its sweep is far: only the store's next due time can wake it).
* ``delay_async`` with an asyncio connection, in the caller's transaction, is the
  PostgreSQL store's own asyncio write, as ``delay`` with a blocking one is its blocking
  write.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest

from conveyor import Conveyor
from conveyor._message import Delivery, JobStatus
from conveyor.brokers import Broker, open_broker
from conveyor.brokers._port import Finish
from conveyor.testing.conformance import envelope
from postgres_server import drop_schema, schema_url, unique_schema
from redis_server import unique_prefix

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

LEASE = 30.0
DUE = 1.0  # seconds until the job comes due; the sweep is 30 s away


@pytest.fixture
def worker(rabbitmq_url: str, tmp_path: Path) -> Iterator[Broker]:
    store = f"sqlite:///{tmp_path / 'records.db'}"
    with open_broker(f"{rabbitmq_url}?sweep=30", store=store, prefix=unique_prefix()) as b:
        assert b.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
        yield b


def _scheduled(worker: Broker) -> str:
    job = envelope(eta=time.time() + DUE)
    worker.enqueue([job])
    return job.id


def _retried(worker: Broker) -> str:
    job = envelope()
    worker.enqueue([job])
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    later = msgspec.structs.replace(job, eta=time.time() + DUE)
    assert worker.finish([Finish(got, JobStatus.SCHEDULED, retry=later)]) == [True]
    return job.id


def _lease_expired(worker: Broker) -> str:
    job = envelope()
    worker.enqueue([job])
    (got,) = worker.fetch(["default"], "w", 10, DUE, 5.0)  # its worker dies: no finish
    return got.id


@pytest.mark.parametrize(
    "make_due", [_scheduled, _retried, _lease_expired], ids=["delay", "retry", "lease"]
)
def test_an_idle_worker_wakes_when_a_job_comes_due_with_an_sqlite_store(
    worker: Broker, make_due: Callable[[Broker], str]
) -> None:
    start = time.monotonic()
    job_id = make_due(worker)
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 10.0)
    assert got.id == job_id and DUE - 0.2 < time.monotonic() - start < DUE + 1.5


@pytest.fixture
def pg_app(rabbitmq_url: str, postgres_url: str) -> Iterator[tuple[Conveyor, str]]:
    schema = unique_schema()
    app = Conveyor(
        f"{rabbitmq_url}?sweep=30", store=schema_url(postgres_url, schema), prefix=unique_prefix()
    )
    app.open()  # migrates: the schema exists from here on
    try:
        yield app, postgres_url
    finally:
        app.close()
        drop_schema(postgres_url, schema)


@pytest.mark.postgres
def test_delay_async_writes_through_an_asyncio_connection(pg_app: tuple[Conveyor, str]) -> None:
    app, database = pg_app

    @app.task
    def send_receipt(order: int) -> str:
        return f"receipt {order}"

    async def main() -> tuple[str, str, str]:
        conn = await psycopg.AsyncConnection.connect(database)
        try:
            async with conn.transaction():
                first = await send_receipt.options(connection=conn).delay_async(1)
            async with conn.transaction():
                then = send_receipt.options(connection=conn, depends_on=first)
                second = await then.delay_async(2)
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    undone = await send_receipt.options(connection=conn).delay_async(3)
                    raise RuntimeError("rolled back")
        finally:
            await conn.close()
        return first.id, second.id, undone.id

    first, second, undone = asyncio.run(main())
    statuses = [None if r is None else r.status for r in app.broker.get([first, second, undone])]
    assert statuses == [JobStatus.QUEUED, JobStatus.SCHEDULED, None]
    broker = app.broker
    (got,) = broker.fetch(["default"], "w", 10, LEASE, 5.0)
    assert got.id == first
    fetched: list[list[Delivery]] = []
    waiting = threading.Thread(
        target=lambda: fetched.append(broker.fetch(["default"], "w", 10, LEASE, 10.0))
    )
    waiting.start()
    time.sleep(0.3)  # asleep in the fetch
    start = time.monotonic()
    assert broker.finish([Finish(got, JobStatus.SUCCEEDED, result=b"done")]) == [True]
    waiting.join()
    # woken by the ticket the end of its dependency published (noted at its delay_async)
    assert [d.id for d in fetched[0]] == [second] and time.monotonic() - start < 2
