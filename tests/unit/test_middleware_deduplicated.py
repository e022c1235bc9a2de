"""A send the broker deduplicated (a ``key=`` that matches a live job) wrote nothing: the
producer middleware hears ``on_deduplicated(message, job_id)`` in place of
``after_enqueue``, and middleware that does not override it hears ``after_enqueue`` as
before."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import Conveyor, Middleware
from conveyor._clock import FakeClock
from conveyor.middleware import Message


class Spy(Middleware):
    """What the producer hooks heard, as ``(tag, hook, message id, detail)``."""

    def __init__(self, tag: str, calls: list[tuple[str, str, str, Any]]) -> None:
        self.tag = tag
        self.calls = calls

    def before_enqueue(self, message: Message) -> None:
        self.calls.append((self.tag, "before_enqueue", message.id, None))

    def after_enqueue(self, message: Message, error: BaseException | None) -> None:
        self.calls.append((self.tag, "after_enqueue", message.id, error))


class Telling(Spy):
    def on_deduplicated(self, message: Message, job_id: str) -> None:
        self.calls.append((self.tag, "on_deduplicated", message.id, job_id))


def make_app(*middleware: Middleware) -> Conveyor:
    app = Conveyor("memory://", clock=FakeClock(), middleware=middleware)

    @app.task(name="report")
    def report(day: str) -> str:
        return day

    return app


def test_a_deduplicated_send_is_told_apart_and_names_the_live_job() -> None:
    calls: list[tuple[str, str, str, Any]] = []
    app = make_app(Telling("a", calls), Spy("b", calls))
    report = app.registry["report"].options(key="report-mon")
    first = report.delay("mon")
    second = report.delay("mon")
    assert second.id == first.id  # one job
    again = calls[4][2]  # the second message's id: never written
    assert again != first.id
    assert calls == [
        ("a", "before_enqueue", first.id, None),
        ("b", "before_enqueue", first.id, None),
        ("b", "after_enqueue", first.id, None),
        ("a", "after_enqueue", first.id, None),
        ("a", "before_enqueue", again, None),
        ("b", "before_enqueue", again, None),
        ("b", "after_enqueue", again, None),  # b does not override it: heard as before
        ("a", "on_deduplicated", again, first.id),  # in after_enqueue's place and order
    ]


def test_a_batch_tells_only_its_deduplicated_jobs_and_so_does_the_async_path() -> None:
    calls: list[tuple[str, str, str, Any]] = []
    app = make_app(Telling("a", calls))
    report = app.registry["report"]

    def day(name: str) -> Any:
        return report.options(key=f"report-{name}")

    live = day("mon").delay("mon")
    calls.clear()
    jobs = app.enqueue_many([day("tue").s("tue"), day("mon").s("mon"), day("tue").s("tue")])
    assert [j.id for j in jobs][1:] == [live.id, jobs[0].id]
    heard = [(hook, i, detail) for _, hook, i, detail in calls if hook != "before_enqueue"]
    sent = [i for _, hook, i, _ in calls if hook == "before_enqueue"]
    assert heard == [
        ("after_enqueue", jobs[0].id, None),
        ("on_deduplicated", sent[1], live.id),
        ("on_deduplicated", sent[2], jobs[0].id),  # the same key twice in one batch
    ]
    calls.clear()
    again = asyncio.run(day("mon").delay_async("mon"))
    assert again.id == live.id
    assert [(hook, detail) for _, hook, _, detail in calls] == [
        ("before_enqueue", None),
        ("on_deduplicated", live.id),
    ]
