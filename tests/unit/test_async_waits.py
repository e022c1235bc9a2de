"""``wait_async`` on a broker without an asyncio client of its own: threads of the broker's
own wait the job out (``Broker._wait_in_threads``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conveyor._message import Envelope, new_job_id
from conveyor.brokers import open_broker

pytestmark = pytest.mark.timeout(30)


def test_closing_the_broker_under_more_waits_than_threads_cancels_none_of_them() -> None:
    # A close shut the waits' threads down cancelling the waits queued for a thread: code
    # that cancelled nothing got CancelledError (which asyncio.gather, a TaskGroup or a web
    # framework take for cancellation: the caller gone).
    broker = open_broker("memory://")
    envs = [Envelope(new_job_id(), "default", b"x") for _ in range(80)]
    broker.enqueue(envs)

    async def main() -> list[object]:
        waits = [asyncio.ensure_future(broker.wait_async(e.id, 1.0)) for e in envs]
        await asyncio.sleep(0.2)
        closing = threading.Thread(target=broker.close)
        closing.start()
        closing.join()
        return await asyncio.gather(*waits, return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results if r is not None] == []
