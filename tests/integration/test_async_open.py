"""The asyncio API on a broker that opens slowly: its first call opens the broker in a
thread, so the event loop goes on meanwhile (a PostgreSQL server that never answers froze it
for the whole connection timeout, and ``asyncio.wait_for`` could not fire); and
``app.aclose()`` closes the loop's own connections, awaited."""

from __future__ import annotations

import asyncio
import socket
import time
import warnings

import pytest

from conveyor import Conveyor
from redis_server import RedisServer, unique_prefix


@pytest.mark.timeout(60)
def test_the_first_async_call_opens_the_broker_off_the_event_loop() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        app = Conveyor(f"postgresql://user@127.0.0.1:{silent.getsockname()[1]}/x")

        @app.task
        def add(a: int, b: int) -> int:
            return a + b

        async def main() -> tuple[float, float]:
            lag = 0.0

            async def ticker() -> None:
                nonlocal lag
                while True:
                    before = time.monotonic()
                    await asyncio.sleep(0.01)
                    lag = max(lag, time.monotonic() - before - 0.01)

            tick = asyncio.create_task(ticker())
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(add.delay_async(1, 2), 1.0)
            took = time.monotonic() - began
            tick.cancel()
            return took, lag

        took, lag = asyncio.run(main())
        assert took < 5.0  # wait_for fired (the open takes the connection timeout, 10 s)
        assert lag < 1.0  # the loop went on while the broker opened


@pytest.mark.redis
def test_aclose_closes_the_loops_own_connections(redis_server: RedisServer) -> None:
    app = Conveyor(f"redis://127.0.0.1:{redis_server.port}/0", prefix=unique_prefix())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        await add.delay_async(1, 2)
        await app.aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        import gc

        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
