"""What a process says when its connection to RabbitMQ is lost and made again (the machine's
server behind ``faultproxy``, a virtual host of the session's own, the records in SQLite):
one warning of Conveyor's own with the reason, whatever the failed attempts in between
(debug lines), and one line when it is back; then the link consumes again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conveyor.brokers import open_broker
from conveyor.testing.conformance import envelope

from .faultproxy import FaultProxy

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(urlsplit(rabbitmq_url).port or 5672) as p:
        yield p


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.05)


def test_a_lost_connection_is_one_warning_and_one_line_when_it_is_back(
    rabbitmq_url: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = urlsplit(rabbitmq_url)
    through = (
        f"amqp://{parts.username}:{parts.password}@127.0.0.1:{proxy.port}{parts.path}"
        "?connection_timeout=1&sweep=30"
    )
    store, prefix = f"sqlite:///{tmp_path / 'records.db'}", "lost" + uuid.uuid4().hex[:8]
    worker = open_broker(through, store=store, prefix=prefix)
    producer = open_broker(rabbitmq_url, store=store, prefix=prefix)
    caplog.set_level(logging.DEBUG, logger="conveyor")

    def said(level: int) -> list[str]:
        mine = [r for r in caplog.records if r.name == "conveyor" and r.levelno == level]
        return [r.getMessage() for r in mine]

    try:
        assert worker.fetch(["default"], "w", 10, 30.0, 0.0) == []  # consuming
        proxy.blackhole()  # what connects now waits for an answer that never comes
        proxy.reset()  # the connection is cut
        # The client tries again each second, each attempt given up after 1 s.
        _wait(lambda: len(said(logging.DEBUG)) >= 2, 20)
        proxy.heal()
        back = "reconnected to RabbitMQ after"
        _wait(lambda: any(m.startswith(back) for m in said(logging.INFO)), 20)
        (warning,) = said(logging.WARNING)
        assert warning.startswith("lost the connection to RabbitMQ (")
        assert "reconnecting every 1 s: jobs are in the record store" in warning
        job = envelope()
        producer.enqueue([job])  # its ticket wakes the worker's fetch: consuming again
        got = worker.fetch(["default"], "w", 10, 30.0, 10.0)
        assert [d.id for d in got] == [job.id]
    finally:
        producer.close()
        worker.close()
