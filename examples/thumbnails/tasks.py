"""Tasks for the thumbnails example: `conveyor worker tasks` runs them."""

from __future__ import annotations

import time

from conveyor import Conveyor, current_job

app = Conveyor()  # CONVEYOR_URL if set, else ./conveyor.db


@app.task(retries=3, backoff=0.2, timeout=30)
def thumbnail(path: str, width: int) -> str:
    """Pretend to resize an image, reporting progress on the way."""
    job = current_job()
    job.progress(0.1, "decoding")
    time.sleep(0.01)
    job.progress(0.9, "encoding")
    stem = path.rsplit(".", 1)[0]
    return f"{stem}_{width}w.webp"


@app.task(queue="default", priority=9)
def urgent(path: str) -> str:
    return f"checked {path}"
