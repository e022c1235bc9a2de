"""A pooled connection the server dropped (a restart, ``idle_session_timeout``, a firewall)
costs a call one more try on another connection, never its answer: the broker's own
housekeeping after a claim, the store, locks and the admin calls (docs/postgres.md,
*Operating it*). On the machine's PostgreSQL (``tests/postgres_server.py``): the server
drops a connection when a test's function terminates its own backend."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import psycopg
import pytest

from conveyor import Conveyor
from conveyor._clock import FakeClock
from conveyor._errors import LockTimeout
from conveyor._message import Envelope, JobStatus, new_job_id
from conveyor.brokers._port import Finish
from conveyor.brokers.postgres import PostgresBroker
from postgres_server import schema_url

pytestmark = pytest.mark.postgres


def _replace_sweep(url: str, schema: str, body: str) -> None:
    """``{schema}.sweep`` made to run ``body`` first (``sweep_real``: the real one)."""
    s = f'"{schema}"'
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER FUNCTION {s}.sweep(int, float8) RENAME TO sweep_real")
        conn.execute(f"CREATE SEQUENCE {s}.sweeps")
        conn.execute(
            f"""CREATE FUNCTION {s}.sweep(p_batch int, p_now float8) RETURNS int
            LANGUAGE plpgsql AS $$
            BEGIN
                {body}
                RETURN {s}.sweep_real(p_batch, p_now);
            END $$"""
        )


def _expired_record(broker: PostgresBroker, clock: FakeClock) -> str:
    """A job that ended and whose record expired (its row is left for the next sweep)."""
    job = Envelope(new_job_id(), "default", b"p")
    broker.enqueue([job])
    [delivery] = broker.fetch(["default"], "c", 1, 60, 0)  # (sweeps: the next is 30 s away)
    broker.finish([Finish(delivery, JobStatus.SUCCEEDED, b"r", result_ttl=10)])
    clock.advance(31)
    return job.id


def _row_exists(url: str, schema: str, job_id: str) -> bool:
    with psycopg.connect(url) as conn:
        sql = f'SELECT 1 FROM "{schema}".jobs WHERE id = %s'
        return conn.execute(sql, (job_id,)).fetchone() is not None


def test_a_sweep_on_a_dropped_connection_retries_and_the_claim_is_returned(
    postgres_url: str, schema: str
) -> None:
    clock = FakeClock()
    broker = PostgresBroker(schema_url(postgres_url, schema), clock=clock)
    try:
        expired = _expired_record(broker, clock)
        # the first sweep's connection is dropped under it, as a restart would
        _replace_sweep(
            postgres_url,
            schema,
            f"""IF nextval('"{schema}".sweeps') = 1 THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;""",
        )
        job = Envelope(new_job_id(), "default", b"p")
        broker.enqueue([job])
        claimed = broker.fetch(["default"], "c", 1, 60, 0)
        assert [d.id for d in claimed] == [job.id]
        assert not _row_exists(postgres_url, schema, expired)  # swept on the second try
    finally:
        broker.close()


def test_a_sweep_that_fails_is_logged_and_the_claim_is_returned(
    postgres_url: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    broker = PostgresBroker(schema_url(postgres_url, schema), clock=clock)
    try:
        _expired_record(broker, clock)
        _replace_sweep(postgres_url, schema, "RAISE EXCEPTION 'no space left on device';")
        job = Envelope(new_job_id(), "default", b"p")
        broker.enqueue([job])
        with caplog.at_level(logging.WARNING, logger="conveyor.postgres"):
            claimed = broker.fetch(["default"], "c", 1, 60, 0)
        assert [d.id for d in claimed] == [job.id]
        [record] = broker.get([job.id])
        assert record is not None and record.status is JobStatus.RUNNING
        assert [r.getMessage() for r in caplog.records if "no space left" in r.getMessage()]
        # a failed sweep is tried again only after _SWEEP_EVERY: not logged on every fetch
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="conveyor.postgres"):
            assert broker.fetch(["default"], "c", 1, 60, 0) == []
        assert not caplog.records
    finally:
        broker.close()


class Restarting:
    """An app on a schema of its own whose pooled connections the server can drop at once,
    as a restart does (found by their ``application_name``)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.name = f"conveyor_{schema}"
        self.app = Conveyor(f"{schema_url(url, schema)}&application_name={self.name}")

        @self.app.task
        def ok(x: int) -> int:
            return x

        self.ok = ok
        self.app.open()

    def drop_connections(self) -> None:
        """Terminate the app's backends and wait until they are gone (the pool may open new
        ones meanwhile, under the same name: those are not waited for)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            found = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.name,)
            ).fetchall()
            pids = [pid for (pid,) in found]
            conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
            deadline = time.monotonic() + 5
            left = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s::int[])"
            while conn.execute(left, (pids,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "the backends did not go"
                time.sleep(0.02)


@pytest.fixture
def restarting(postgres_url: str, schema: str) -> Iterator[Restarting]:
    r = Restarting(postgres_url, schema)
    try:
        yield r
    finally:
        r.app.close()


def _status(r: Restarting, job_id: str) -> JobStatus | None:
    [record] = r.app.broker.get([job_id])
    return None if record is None else record.status


def test_the_store_reads_and_writes_after_a_restart(restarting: Restarting) -> None:
    store = restarting.app.store
    store.set("k", 1)
    restarting.drop_connections()
    assert store.get("k") == 1
    restarting.drop_connections()
    store.set("k", 2, ttl=60)
    restarting.drop_connections()
    assert store.get("k") == 2
    restarting.drop_connections()
    ttl = store.ttl("k")
    assert ttl is not None and 0 < ttl <= 60


def test_a_lock_is_taken_and_extended_after_a_restart(restarting: Restarting) -> None:
    lock = restarting.app.lock("invoice:42", ttl=5, timeout=0)
    restarting.drop_connections()
    fence = lock.acquire(timeout=0)
    assert fence >= 1
    restarting.drop_connections()
    lock.extend(30)
    with pytest.raises(LockTimeout):  # still held
        restarting.app.lock("invoice:42", ttl=5, timeout=0).acquire(timeout=0)
    lock.release()


def test_pause_resume_and_purge_work_after_a_restart(restarting: Restarting) -> None:
    broker = restarting.app.broker
    jobs = [restarting.ok.options(queue="rs").delay(i) for i in range(3)]
    restarting.drop_connections()
    broker.pause("rs")
    assert broker.paused() == ["rs"]
    restarting.drop_connections()
    broker.resume("rs")
    assert broker.paused() == []
    restarting.drop_connections()
    assert broker.purge("rs") == 3
    assert [_status(restarting, j.id) for j in jobs] == [None] * 3


def test_cancel_delete_and_requeue_work_after_a_restart(restarting: Restarting) -> None:
    broker = restarting.app.broker
    first, second = (restarting.ok.options(queue="rs").delay(i) for i in range(2))
    restarting.drop_connections()
    assert broker.cancel(first.id) is JobStatus.CANCELLED
    restarting.drop_connections()
    payload = broker.payload(first.id)
    assert payload is not None
    restarting.drop_connections()
    assert broker.requeue([(first.id, payload)]) == [first.id]
    assert _status(restarting, first.id) is JobStatus.QUEUED
    restarting.drop_connections()
    assert broker.delete([second.id]) == [JobStatus.QUEUED]
    assert _status(restarting, second.id) is None
