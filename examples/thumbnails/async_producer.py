"""The same producer from asyncio: enqueueing and waiting never block the event loop."""

from __future__ import annotations

import asyncio

from tasks import app, thumbnail


async def main() -> None:
    async with app:
        jobs = [await thumbnail.delay_async(f"async{i}.png", 200) for i in range(5)]
        results = await asyncio.gather(*jobs)
        print("awaited", len(results), "jobs:", results[0], "...")


if __name__ == "__main__":
    asyncio.run(main())
