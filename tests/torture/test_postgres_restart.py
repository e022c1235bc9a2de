"""A private PostgreSQL restarted under load (``tests/postgres_server.py``: a server of the
test's own, never the machine's): producers keep enqueueing and two ``conveyor worker``
subprocesses keep running jobs while the server stops, as in a crash (``immediate``) or
cleanly (``fast``, disconnecting everyone), and starts again.

Nothing acknowledged is lost, no job ends twice, and runs of a job beyond its first are no
more than the jobs that were running when the server went (their finishes may have been
lost with their connections; the lease brings them back). Producers retry what raised with
the same job id, so a write that landed before the connection dropped is not made twice
(the broker itself tries a broken pooled connection's call once more on another).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._message import Delivery, Envelope, JobStatus, new_job_id
from conveyor.brokers._port import Finish, LeaseState
from conveyor.brokers.postgres import PostgresBroker
from postgres_server import PrivatePostgres

from .workers import Cluster, Producer, assert_each_ran_once, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

JOBS = 300


@pytest.mark.parametrize(("mode", "commit"), [
    ("immediate", "sync"), ("immediate", "async"), ("fast", "async"),
])  # fmt: skip
@pytest.mark.timeout(120)
def test_a_restart_under_load_loses_no_job(
    private_postgres: PrivatePostgres, tmp_path: Path, mode: str, commit: str
) -> None:
    cluster = Cluster(tmp_path / "app", f"{private_postgres.url}?worker_commit={commit}")
    try:
        app = cluster.app()
        app.open()  # migrated before the workers start
        for name in ("w1", "w2"):
            cluster.worker(name, "-c", "4", "--lease", "2")
        producer = Producer(app, JOBS)
        wait_for(lambda: len(producer.acknowledged) >= JOBS // 3, 60, cluster.outputs)
        private_postgres.stop(mode)
        time.sleep(1.0)  # producers and workers find it gone
        private_postgres.start()
        producer.thread.join(90)
        assert len(producer.acknowledged) == JOBS
        # At most the jobs two workers of 4 threads held when the server went ran again;
        # after a crash, also those whose async finishes it undid (any number: none lost).
        duplicates = JOBS if (mode, commit) == ("immediate", "async") else 8
        assert_each_ran_once(cluster, app, producer.acknowledged, 90, duplicates=duplicates)
        # The restart was felt: the wake-up listener lost its connection, or the pool
        # discarded a connection the restart broke (which comes first depends on timing).
        felt = cluster.outputs()
        assert "not listening for wake-ups" in felt or "[BAD]" in felt, felt
        assert all(w.alive() for w in cluster.workers), cluster.outputs()
        app.close()
    finally:
        cluster.cleanup()


@pytest.mark.timeout(60)
def test_after_a_restart_the_pooled_connections_cost_no_failed_call(
    private_postgres: PrivatePostgres,
) -> None:
    """The pool's connections all broke with the restart: the next calls try another
    connection (enqueue is idempotent on its id, finish and fetch are fenced) and succeed."""
    app = Conveyor(private_postgres.url)

    @app.task
    def noop() -> None: ...

    first = noop.delay()
    private_postgres.stop("fast")
    private_postgres.start()
    second = noop.delay()  # no BrokerError: the broken pooled connection is replaced
    assert [r is not None for r in app.broker.get([first.id, second.id])] == [True, True]
    app.close()


@pytest.mark.timeout(90)
def test_an_async_claim_a_crash_loses_is_handed_out_again_and_fenced(
    private_postgres: PrivatePostgres,
) -> None:
    """With ``conveyor.claim_commit = async`` a claim made just before a crash may be lost:
    then its job is handed out again (at least once), and the lost delivery can neither
    finish nor renew it. An enqueue and a finish still survive the crash."""
    url = f"{private_postgres.url}?options=-c%20conveyor.claim_commit%3Dasync"
    broker = PostgresBroker(url)
    finished = Envelope(new_job_id(), "default", b"f")
    broker.enqueue([finished])
    [first] = broker.fetch(["default"], "c", 1, 60, 0)
    assert broker.finish([Finish(first, JobStatus.SUCCEEDED, b"r")]) == [True]
    lost_any = False
    for _ in range(5):  # the server's WAL writer may still win the race now and then
        env = Envelope(new_job_id(), "default", b"p")
        broker.enqueue([env])
        [claimed] = broker.fetch(["default"], "c", 1, 60, 0)
        private_postgres.stop("immediate")
        private_postgres.start()
        [record] = broker.get([env.id])
        assert record is not None  # the enqueue was acknowledged: it survived
        if record.status is JobStatus.RUNNING:
            assert broker.finish([Finish(claimed, JobStatus.SUCCEEDED, b"r")]) == [True]
            continue
        lost_any = True
        assert record.status is JobStatus.QUEUED
        assert broker.renew([claimed], 60) == [LeaseState.LOST]
        [again] = broker.fetch(["default"], "c", 1, 60, 0)
        assert (again.id, again.deliveries) == (env.id, 1)
        assert broker.finish([Finish(claimed, JobStatus.SUCCEEDED, b"stale")]) == [False]
        assert broker.finish([Finish(again, JobStatus.SUCCEEDED, b"r")]) == [True]
    assert lost_any
    assert [r.status if r else None for r in broker.get([finished.id])] == [JobStatus.SUCCEEDED]
    broker.close()


@pytest.mark.timeout(90)
def test_an_async_finish_a_crash_undoes_runs_the_job_again_and_is_fenced(
    private_postgres: PrivatePostgres,
) -> None:
    """A worker's finish commits without waiting for the disk (schema version 5): one made
    just before a crash may be undone. Then its job is running under the lease of that
    delivery and, once the lease is out, handed out again (at least once); nothing the
    server acknowledged synchronously is lost."""
    broker = PostgresBroker(private_postgres.url)
    lost_any = False
    for _ in range(5):  # the server's WAL writer may still win the race now and then
        env = Envelope(new_job_id(), "default", b"p")
        broker.enqueue([env])
        [claimed] = broker.fetch(["default"], "c", 1, 1.0, 0)
        assert broker.finish([Finish(claimed, JobStatus.SUCCEEDED, b"r")]) == [True]
        private_postgres.stop("immediate")
        private_postgres.start()
        [record] = broker.get([env.id])
        assert record is not None  # the enqueue was acknowledged: it survived
        if record.status is JobStatus.SUCCEEDED:
            continue
        lost_any = True
        assert record.status in (JobStatus.RUNNING, JobStatus.QUEUED)  # the claim, too
        again = wait_for_delivery(broker)
        assert again.id == env.id and again.token != claimed.token
        # The delivery whose finish the crash undid is fenced out: its finish again (as
        # its worker's retry would be) and its renewal are refused.
        assert broker.finish([Finish(claimed, JobStatus.SUCCEEDED, b"r")]) == [False]
        assert broker.renew([claimed], 60) == [LeaseState.LOST]
        assert broker.finish([Finish(again, JobStatus.SUCCEEDED, b"r2")]) == [True]
        assert broker.finish([Finish(claimed, JobStatus.SUCCEEDED, b"r")]) == [False]
        broker.enqueue([Envelope(new_job_id(), "other", b"flush")])  # a synchronous commit
        [record] = broker.get([env.id])
        assert record is not None and record.status is JobStatus.SUCCEEDED
        assert record.result == b"r2"  # the second run's
    assert lost_any
    broker.close()


def wait_for_delivery(broker: PostgresBroker) -> Delivery:
    """The next delivery of ``default`` (its lease may have to run out first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = broker.fetch(["default"], "c", 1, 60, 1.0)
        if got:
            return got[0]
    raise AssertionError("no delivery within 30 s")
