"""A row the application's open transaction holds (a job its enqueue depends on) holds up
only that job: the worker's other work on the same broker goes on."""

from __future__ import annotations

import threading

import psycopg
import pytest

from conveyor._message import Envelope, new_job_id
from conveyor.brokers import LeaseState, open_broker
from postgres_server import drop_schema, schema_url, unique_schema

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


def test_renewing_a_batch_does_not_wait_for_a_job_an_open_transaction_depends_on(
    postgres_url: str,
) -> None:
    # The enqueue locks the job it depends on (FOR SHARE) until its transaction ends; the
    # worker's renewal of all its jobs in one statement waited for that one row, so every
    # other lease of the batch ran out and those jobs ran again elsewhere.
    schema = unique_schema()
    broker = open_broker(schema_url(postgres_url, schema))
    conn = psycopg.connect(postgres_url)
    try:
        running, other = (
            Envelope(new_job_id(), "default", b"a"),
            Envelope(new_job_id(), "default", b"x"),
        )
        broker.enqueue([running, other])
        held = broker.fetch(["default"], "w1", 2, 0.5, 0.0)  # short leases: renewals write
        assert len(held) == 2
        with conn.transaction():
            dependent = Envelope(new_job_id(), "default", b"d", depends_on=[running.id])
            broker.enqueue_in(conn, [dependent])
            answer: list[list[LeaseState]] = []
            renewal = threading.Thread(target=lambda: answer.append(broker.renew(held, 30.0)))
            renewal.start()
            renewal.join(5)
            assert answer == [[LeaseState.OK, LeaseState.OK]]  # (it waited for the commit)
        # Once the transaction ended, the held job's lease is written too.
        assert broker.renew(held, 30.0) == [LeaseState.OK, LeaseState.OK]
        assert broker.fetch(["default"], "w2", 10, 30.0, 0.0) == []
    finally:
        conn.close()
        broker.close()
        drop_schema(postgres_url, schema)
