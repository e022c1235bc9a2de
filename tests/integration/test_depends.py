"""``depends_on=`` and cancelling inside workflows, with real ``conveyor worker``
subprocesses on each broker (SQLite, Redis: the ``project`` fixture of conftest).

The tasks are ``jobs_app``'s (conftest): ``slow(tag, seconds)`` logs its start and end to an
append-only file, so "ran after", "never ran" and "ran once" are checked on what happened.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Project, wait_for
from conveyor import (
    Conveyor,
    DependencyFailed,
    DependencyNotFound,
    JobCancelled,
    JobStatus,
    Signature,
    TaskFailed,
    chain,
)

pytestmark = pytest.mark.slow


def sig(app: Conveyor, task: str, *args: Any, **options: Any) -> Signature[Any]:
    """A ``jobs_app`` call by name: this test process never imports the module."""
    return Signature(app, f"jobs_app:{task}", args, {}, app.defaults.merge(**options))


def send(app: Conveyor, task: str, *args: Any, **options: Any) -> Any:
    return sig(app, task, *args, **options).delay()


def events(project: Project) -> list[str]:
    return [f"{event} {tag}" for event, tag, _ in project.runs()]


@pytest.mark.timeout(90)
def test_a_dependent_runs_once_after_both_of_its_dependencies(project: Project) -> None:
    app = project.app()
    a = send(app, "slow", "a", 0.6)
    b = send(app, "slow", "b", 0.2)
    c = send(app, "slow", "c", 0.0, depends_on=[a, b.id])
    assert c.status is JobStatus.SCHEDULED
    project.worker("-c", "4")
    assert c.result(timeout=30) == "c"
    log = events(project)
    assert log.index("start c") > max(log.index("end a"), log.index("end b"))
    assert log.count("start c") == 1
    app.close()


@pytest.mark.timeout(90)
def test_a_failed_dependency_fails_the_chain_behind_its_dependent(project: Project) -> None:
    app = project.app()
    project.worker("-c", "2")
    a = send(app, "double", None)  # None * 2: TypeError
    b = send(app, "slow", "b", 0.0, depends_on=a)
    after = chain(sig(app, "slow", "c", 0.0, depends_on=b), sig(app, "slow", 0.0)).delay()
    with pytest.raises(DependencyFailed, match=f"dependency {a.id} ended failed.*TypeError"):
        b.result(timeout=30)
    with pytest.raises(TaskFailed, match=f"dependency {b.id} ended failed"):
        after.result(timeout=30)
    allowed = send(app, "slow", "allowed", 0.0, depends_on=a, allow_failed_dependencies=True)
    assert allowed.result(timeout=30) == "allowed"
    assert [e for e in events(project) if e.startswith("start")] == ["start allowed"]
    with pytest.raises(DependencyNotFound):
        send(app, "slow", "never", 0.0, depends_on="no-such-job")
    app.close()


@pytest.mark.timeout(90)
def test_cancelling_a_parked_step_ends_its_chain(project: Project) -> None:
    app = project.app()
    job = chain(
        sig(app, "slow", "first", 1.0), sig(app, "slow", 0.0), sig(app, "slow", 0.0)
    ).delay()
    project.worker("-c", "2")
    wait_for(lambda: "start first" in events(project), 30, lambda: str(events(project)))
    assert app.job(job.steps[1]).cancel()  # parked behind the running first step
    with pytest.raises(TaskFailed, match="ended cancelled") as caught:
        job.result(timeout=30)
    assert caught.value.remote_type.endswith("JobCancelled")
    assert app.job(job.steps[0]).result(timeout=30) == "first"  # not held up by the cancel
    assert events(project) == ["start first", "end first"]
    assert [r.status for r in app.broker.get(list(job.steps)) if r] == [
        JobStatus.SUCCEEDED,
        JobStatus.CANCELLED,
        JobStatus.FAILED,
    ]
    app.close()


@pytest.mark.timeout(90)
def test_cancelling_a_workflow_job_stops_what_has_not_run(project: Project) -> None:
    app = project.app()
    job = chain(sig(app, "slow", "one", 1.0), sig(app, "slow", 0.0)).delay()
    project.worker("-c", "2")
    wait_for(lambda: "start one" in events(project), 30, lambda: str(events(project)))
    assert job.cancel()  # the running step is stopped at its next renewal
    with pytest.raises(JobCancelled):
        job.result(timeout=30)
    statuses = [r.status for r in app.broker.get(list(job.steps)) if r]
    assert statuses[1] is JobStatus.CANCELLED
    assert events(project).count("start one") == 1
    assert "end one" not in events(project) or statuses[0] is JobStatus.SUCCEEDED
    app.close()
