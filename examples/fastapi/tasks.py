"""Tasks for the FastAPI example: `conveyor worker tasks` runs them."""

from __future__ import annotations

import asyncio
import time

from conveyor import Conveyor, current_job

app = Conveyor()  # CONVEYOR_URL if set, else sqlite:///./conveyor.db


@app.task(timeout=300)
def build_report(rows: int) -> dict[str, int]:
    """A slow job that says how far it is: the web app streams its progress."""
    job = current_job()
    total = 0
    for row in range(1, rows + 1):
        time.sleep(0.02)  # stands for the work on one row
        total += row
        job.progress(row / rows, f"row {row} of {rows}")
    return {"rows": rows, "total": total}


@app.task(retries=3)
async def send_welcome(email: str) -> str:
    """A quick job that the web app waits for, up to a point."""
    await asyncio.sleep(0.01)  # stands for a call to the mail service
    return f"welcome mail sent to {email}"
