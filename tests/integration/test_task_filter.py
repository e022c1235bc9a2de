"""The task filter of the dashboard's list and of ``conveyor jobs --task``, on every broker
worker processes can share: a succeeded job whose payload is not kept (Redis, and RabbitMQ
over a Redis store) is found by the task its events name, as its row shows it; and where
nothing names it (``events=False``, or its events left the log), the command says it passed
such jobs over instead of saying there are none.

The jobs run in this process (``drain``): what is read is the broker's, not a worker's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from conftest import Project, conveyor
from conveyor import Conveyor
from conveyor.dashboard import asgi_app
from conveyor.testing import drain


def keeps_no_payload(broker_kind: str) -> bool:
    """Redis keeps no payload once a job succeeded, also where it keeps RabbitMQ's records."""
    return broker_kind in ("redis", "redis-cluster", "rabbitmq-redis")


def producer(project: Project, **options: Any) -> tuple[Conveyor, list[str]]:
    """An app on the project's broker whose three ``add`` jobs and one ``sub`` job have
    succeeded; the ids of the ``add`` ones."""
    app = Conveyor(project.url, prefix=project.prefix, store=project.store, **options)
    project.apps.append(app)  # closed with the project
    add = app.task(name="add", queue="math")(lambda a, b: a + b)
    sub = app.task(name="sub", queue="math")(lambda a, b: a - b)
    added = [add.delay(i, 1).id for i in range(3)]
    sub.delay(5, 1)
    drain(app)
    return app, added


def listing(project: Project, *args: str) -> Any:
    """``conveyor jobs ARGS -A jobs_app --json`` (the app names the test's key prefix)."""
    return json.loads(conveyor(project, "jobs", *args, "-A", "jobs_app", "--json").stdout)


async def test_the_dashboard_filters_succeeded_jobs_by_the_task_their_rows_show(
    project: Project,
) -> None:
    app, added = producer(project)
    transport = httpx.ASGITransport(app=asgi_app(app, refresh=0))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
        page = (await web.get("/api/jobs/succeeded", params={"task": "add"})).json()
        assert sorted(j["id"] for j in page["jobs"]) == sorted(added)
        assert {j["task"] for j in page["jobs"]} == {"add"}
        other = (await web.get("/api/jobs/succeeded", params={"task": "sub"})).json()
        assert [j["task"] for j in other["jobs"]] == ["sub"]


def test_the_command_filters_succeeded_jobs_by_the_task_their_events_name(
    project: Project,
) -> None:
    _, added = producer(project)
    found = listing(project, "succeeded", "--task", "add")
    assert sorted(j["id"] for j in found["jobs"]) == sorted(added)
    assert {j["task"] for j in found["jobs"]} == {"add"} and found["passed_over"] == 0
    every = listing(project, "succeeded")
    assert sorted(j["task"] for j in every["jobs"]) == ["add", "add", "add", "sub"]
    shown = conveyor(project, "jobs", "succeeded", "--task", "add", "-A", "jobs_app").stdout
    assert all(i in shown for i in added) and "passed over" not in shown


def test_the_command_says_when_it_passed_over_jobs_whose_task_nothing_names(
    project: Project, broker_kind: str
) -> None:
    """Without events nothing names a succeeded job's task where its payload is gone."""
    _, added = producer(project, events=False)
    found = listing(project, "succeeded", "--task", "add")
    shown = conveyor(project, "jobs", "succeeded", "--task", "add", "-A", "jobs_app").stdout
    if keeps_no_payload(broker_kind):
        assert found["jobs"] == [] and found["passed_over"] == 4
        assert "no succeeded jobs of task add" not in shown
        assert "4 succeeded job(s) passed over" in shown, shown
        assert "payload is not kept" in shown, shown
    else:
        assert sorted(j["id"] for j in found["jobs"]) == sorted(added)
        assert found["passed_over"] == 0 and "passed over" not in shown
