"""``depends_on=`` through the public API, run by ``conveyor.testing.drain`` (a real worker
in this process) on each embedded broker (the ``app`` fixture of ``conftest``)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    DependencyFailed,
    DependencyNotFound,
    JobStatus,
    Signature,
    TaskFailed,
    chain,
    chord,
    group,
)
from conveyor.testing import drain

RAN: list[str] = []


def report(tag: str) -> str:
    """A plain function for RQ-style ``app.enqueue`` (it does not know Conveyor)."""
    RAN.append(tag)
    return tag


@pytest.fixture
def tasks(app: Conveyor) -> dict[str, Any]:
    RAN.clear()

    @app.task(name="record")
    def record(tag: str) -> str:
        RAN.append(tag)
        return tag

    @app.task(name="fail")
    def fail(tag: str) -> None:
        RAN.append(tag)
        raise ValueError(f"{tag} broke")

    @app.task(name="read")
    def read(job_id: str) -> Any:
        """A dependent reads its dependency's result itself: results are not passed."""
        RAN.append("read")
        return app.job(job_id).result(timeout=0)

    @app.task(name="total")
    def total(xs: list[int]) -> int:
        return sum(xs)

    return {"record": record, "fail": fail, "read": read, "total": total}


def run(app: Conveyor) -> None:
    drain(app, trust=[__name__.split(".")[0]], timeout=30)


def test_a_dependent_runs_after_its_dependency_and_reads_its_result(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record, read = tasks["record"], tasks["read"]
    a = record.delay("a")
    b = read.options(depends_on=a).delay(a.id)
    assert b.status is JobStatus.SCHEDULED
    run(app)
    assert b.result(timeout=0) == "a"
    assert RAN == ["a", "read"]


def test_every_way_of_sending_takes_depends_on(app: Conveyor, tasks: dict[str, Any]) -> None:
    record = tasks["record"]
    a, b = record.delay("a"), record.delay("b")
    rq = app.options(depends_on=[a, b.id]).enqueue(report, "rq")
    many = app.enqueue_many([record.options(depends_on=a.id).s("many")])[0]
    sig = record.options(depends_on=(a, a, b)).s("sig").delay()  # repeats count once
    assert {j.status for j in (rq, many, sig)} == {JobStatus.SCHEDULED}
    run(app)
    assert RAN[:2] == ["a", "b"] and sorted(RAN[2:]) == ["many", "rq", "sig"]
    assert [j.result(timeout=0) for j in (rq, many, sig)] == ["rq", "many", "sig"]


def test_a_batch_may_depend_on_its_own_earlier_jobs(app: Conveyor, tasks: dict[str, Any]) -> None:
    record = tasks["record"]
    first = record.options(job_id="first-of-batch").s("first")
    second = record.options(depends_on="first-of-batch").s("second")
    jobs = app.enqueue_many([second, first][::-1])
    run(app)
    assert RAN == ["first", "second"]
    assert [j.result(timeout=0) for j in jobs] == ["first", "second"]


def test_a_failed_dependency_fails_its_dependents_down_the_line(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record, fail = tasks["record"], tasks["fail"]
    a = fail.delay("a")
    b = record.options(depends_on=a).delay("b")
    c = record.options(depends_on=b).delay("c")
    run(app)
    assert RAN == ["a"]
    with pytest.raises(DependencyFailed) as caught:
        b.result(timeout=0)
    assert isinstance(caught.value, TaskFailed)
    text = str(caught.value)
    assert a.id in text and "ended failed" in text and "ValueError: a broke" in text
    assert "allow_failed_dependencies=True" in text
    with pytest.raises(DependencyFailed, match=f"dependency {b.id} ended failed"):
        c.result(timeout=0)
    assert c.exception(timeout=0).__class__ is DependencyFailed


def test_allow_failed_dependencies_runs_anyway(app: Conveyor, tasks: dict[str, Any]) -> None:
    record, fail = tasks["record"], tasks["fail"]
    a = fail.delay("a")
    b = record.options(depends_on=a, allow_failed_dependencies=True).delay("b")
    run(app)
    assert RAN == ["a", "b"]
    assert b.result(timeout=0) == "b"


def test_a_cancelled_dependency_fails_the_dependent(app: Conveyor, tasks: dict[str, Any]) -> None:
    record = tasks["record"]
    a = record.delay("a")
    b = record.options(depends_on=a).delay("b")
    assert a.cancel()
    assert b.status is JobStatus.QUEUED  # released by the cancel, to fail when it is run
    run(app)
    assert RAN == []
    with pytest.raises(DependencyFailed, match=f"dependency {a.id} ended cancelled"):
        b.result(timeout=0)


def test_a_dead_dependency_fails_the_dependent(app: Conveyor, tasks: dict[str, Any]) -> None:
    (a,) = app.enqueue_many([Signature(app, "nowhere.at_all:missing", (), {}, app.defaults)])
    b = tasks["record"].options(depends_on=a).delay("b")
    run(app)
    assert a.status is JobStatus.DEAD
    with pytest.raises(DependencyFailed, match=f"dependency {a.id} ended dead"):
        b.result(timeout=0)


def test_a_diamond_runs_its_bottom_once_after_both_sides(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record = tasks["record"]
    a = record.delay("a")
    b = record.options(depends_on=a).delay("b")
    c = record.options(depends_on=a).delay("c")
    d = record.options(depends_on=[b, c]).delay("d")
    run(app)
    assert RAN[0] == "a" and sorted(RAN[1:3]) == ["b", "c"] and RAN[3:] == ["d"]
    assert d.result(timeout=0) == "d"


def test_an_unknown_dependency_is_refused_at_enqueue(app: Conveyor, tasks: dict[str, Any]) -> None:
    record = tasks["record"]
    with pytest.raises(DependencyNotFound, match=r"no-such-job.*nothing was enqueued"):
        app.enqueue_many([record.s("x"), record.options(depends_on="no-such-job").s("y")])
    assert app.broker.stats() == []


def test_bad_depends_on_values_are_configuration_errors(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record = tasks["record"]
    with pytest.raises(ConfigurationError, match="Job objects or job ids"):
        record.options(depends_on=[42])
    with pytest.raises(ConfigurationError, match="delay"):
        record.options(depends_on="x", delay=5)
    with pytest.raises(ConfigurationError, match="first steps"):
        chain(record.s("a"), record.options(depends_on="x").s()).delay()


def test_a_chain_whose_first_step_cannot_run_fails_whole(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record, fail = tasks["record"], tasks["fail"]
    a = fail.delay("a")
    job = chain(record.options(depends_on=a).s("b"), record.s()).delay()
    run(app)
    assert RAN == ["a"]
    with pytest.raises(TaskFailed, match=f"dependency {a.id} ended failed") as caught:
        job.result(timeout=0)
    assert caught.value.remote_type.endswith("DependencyFailed")


def test_a_chord_member_that_cannot_run_gives_its_callback_the_error(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record, fail, total = tasks["record"], tasks["fail"], tasks["total"]
    a = fail.delay("a")
    job = chord(group(record.s("x"), record.options(depends_on=a).s("y")), total.s()).delay()
    run(app)
    with pytest.raises(TaskFailed, match="DependencyFailed"):
        job.result(timeout=0)
    assert "y" not in RAN


def test_a_dependency_deleted_after_it_succeeded_fails_a_dependent_still_waiting(
    app: Conveyor, tasks: dict[str, Any]
) -> None:
    record = tasks["record"]
    a = record.delay("a")
    run(app)
    app.pause("slow")
    b = record.options(queue="slow").delay("b")
    c = record.options(depends_on=[a, b]).delay("c")
    assert app.delete([a.id]) == {a.id: JobStatus.SUCCEEDED}
    assert c.status is JobStatus.SCHEDULED  # still waits for b
    app.resume("slow")
    run(app)
    assert RAN == ["a", "b"]  # c found a without a record, as after its result TTL
    with pytest.raises(DependencyFailed, match="or it was purged or deleted"):
        c.result(timeout=0)


def test_the_worker_asks_short_circuit_only_about_steps_and_dependents(
    app: Conveyor, tasks: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The consumer checks short_circuit's own conditions inline: a plain job skips the call.
    from conveyor import workflows

    asked: list[str] = []
    real = workflows.short_circuit

    def spy(app: Conveyor, message: Any) -> Any:
        asked.append(message.id)
        return real(app, message)

    monkeypatch.setattr(workflows, "short_circuit", spy)
    plain = tasks["record"].delay("plain")
    after = tasks["record"].options(depends_on=plain).delay("after")
    last = chain(tasks["record"].s("one"), tasks["record"].s()).delay()
    run(app)
    assert plain.id not in asked and after.id in asked and last.id in asked
    assert last.result(timeout=5) == "one" and after.result(timeout=5) == "after"
