"""RQ style: enqueue any importable function (a worker must be running: see README)."""

from __future__ import annotations

import reports
from queue_app import app


def main() -> None:
    job = app.enqueue(reports.build, 2024, region="emea")
    print("report:", job.result(timeout=30))
    slow = app.options(queue="default", priority=1).enqueue(reports.build, 2025)
    print("another:", slow.result(timeout=30))


if __name__ == "__main__":
    main()
