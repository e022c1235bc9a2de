"""Queue thumbnails and collect their results (a worker must be running: see README)."""

from __future__ import annotations

from tasks import app, thumbnail, urgent


def main() -> None:
    job = thumbnail.delay("cat.png", 320)
    print("one job:", job.id, "->", job.result(timeout=30))

    jobs = app.enqueue_many([thumbnail.s(f"photo{i}.jpg", 640) for i in range(10)])
    print("a batch of", len(jobs), "->", [j.result(timeout=30) for j in jobs][:3], "...")

    later = thumbnail.options(delay=1).delay("late.png", 100)
    print("first in line:", urgent.delay("a.png").result(timeout=30))
    print("a delayed job:", later.status, "->", later.result(timeout=30))


if __name__ == "__main__":
    main()
