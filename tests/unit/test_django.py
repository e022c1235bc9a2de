"""``conveyor.contrib.django`` in this process: Django's Tasks framework on Conveyor.

The project is ``tests/django_project`` (``tests/django_setup.py``): SQLite for Django and
for the broker, both files of the session. Jobs run with ``drain(get_app())``, on the
worker's threads, as a project's own tests would run them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("django_project")


@pytest.fixture
def tasks(django_project: Path) -> Any:
    from django_project.notes import tasks

    return tasks


@pytest.fixture
def app(django_project: Path) -> Any:
    from conveyor.contrib.django import get_app

    return get_app()


def run_all(app: Any) -> None:
    from conveyor.testing import drain

    drain(app, timeout=20)


def test_enqueue_sends_a_job_whose_result_the_task_result_reads(tasks: Any, app: Any) -> None:
    from django.utils import timezone

    from conveyor import JobStatus

    result = tasks.add.enqueue(2, 3)
    assert result.status == "READY" and result.args == [2, 3] and result.backend == "default"
    assert timezone.is_aware(result.enqueued_at)
    assert app.job(result.id).status is JobStatus.QUEUED  # the TaskResult id is the job's
    assert tasks.add.get_result(result.id).status == "READY"

    run_all(app)
    result.refresh()
    assert result.status == "SUCCESSFUL" and result.return_value == 5
    assert result.started_at <= result.finished_at and result.attempts == 1
    assert result.worker_ids[0].endswith(f".{__import__('os').getpid()}")
    found = tasks.add.get_result(result.id)  # by id, as another process would
    assert (found.return_value, found.args, found.task.func) == (5, [2, 3], tasks.add.func)
    assert app.job(result.id).result()["return_value"] == 5  # Conveyor's view: the record

    from django_tasks.exceptions import TaskResultMismatch

    with pytest.raises(TaskResultMismatch):
        tasks.shout.get_result(result.id)


def test_queue_name_and_priority_reach_the_job(tasks: Any, app: Any) -> None:
    result = tasks.shout.enqueue("hi")
    message = app.codec.decode_message(app.broker.payload(result.id))
    assert (message.queue, message.priority) == ("other", 3)  # priority -30: the 4th band
    run_all(app)
    assert tasks.shout.get_result(result.id).return_value == "HI"


def test_priorities_map_in_bands_of_twenty() -> None:
    from conveyor.contrib.django._backend import conveyor_priority

    bands = {p: conveyor_priority(p) for p in (-100, -81, -80, -1, 0, 19, 20, 79, 80, 100)}
    assert bands == {-100: 0, -81: 0, -80: 1, -1: 4, 0: 5, 19: 5, 20: 6, 79: 8, 80: 9, 100: 9}


def test_a_whole_float_priority_is_mapped_as_its_int(tasks: Any, app: Any) -> None:
    result = tasks.add.using(priority=50.0).enqueue(1, 1)  # the framework takes 50.0
    message = app.codec.decode_message(app.broker.payload(result.id))
    assert message.priority == 7 and type(message.priority) is int
    run_all(app)


def test_a_failure_is_failed_with_the_exception_and_its_traceback(tasks: Any, app: Any) -> None:
    result = tasks.fail.enqueue("card declined")
    run_all(app)
    result.refresh()
    assert result.status == "FAILED"
    (error,) = result.errors
    assert error.exception_class is ValueError
    assert "card declined" in error.traceback and "in fail" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018


def test_context_and_async_tasks(tasks: Any, app: Any) -> None:
    from django_project.notes.models import Note

    Note.objects.create(text="one")
    whoami = tasks.whoami.enqueue("x")
    later = tasks.add_later.enqueue(1, 2)
    counted = tasks.count_notes.enqueue()
    run_all(app)
    assert tasks.whoami.get_result(whoami.id).return_value == {
        "id": whoami.id, "attempt": 1, "tag": "x", "backend": "default",
    }  # fmt: skip
    assert tasks.add_later.get_result(later.id).return_value == 3
    assert tasks.count_notes.get_result(counted.id).return_value == Note.objects.count()


async def test_aenqueue_and_aget_result(tasks: Any, app: Any) -> None:
    result = await tasks.add.aenqueue(4, 5)
    assert app.job(result.id).status == "queued"  # sent at once, without a thread hop
    await asyncio.to_thread(run_all, app)
    await result.arefresh()
    assert result.return_value == 9
    assert (await tasks.add.aget_result(result.id)).status == "SUCCESSFUL"


def test_return_values_are_normalized_as_the_framework_does(tasks: Any, app: Any) -> None:
    pair, unstorable = tasks.pair.enqueue(), tasks.unstorable.enqueue()
    run_all(app)
    assert tasks.pair.get_result(pair.id).return_value == [1, "two"]
    failed = tasks.unstorable.get_result(unstorable.id)
    assert failed.status == "FAILED" and failed.errors[0].exception_class is TypeError


@pytest.mark.parametrize(
    ("kind", "error"),
    [("nan", "SerializationError"), ("int_key", "SerializationError"), ("big", "ResultTooLarge")],
)
def test_a_return_value_the_worker_cannot_store_fails_before_task_finished(
    tasks: Any, app: Any, kind: str, error: str
) -> None:
    """task_finished said SUCCESSFUL, then the worker failed the job on encoding its result."""
    from django_tasks.signals import task_finished

    import conveyor

    finished: dict[str, str] = {}

    def receiver(sender: type, task_result: Any, **kwargs: Any) -> None:
        finished[task_result.id] = str(task_result.status)

    task_finished.connect(receiver)
    try:
        result = tasks.unencodable.enqueue(kind)
        run_all(app)
    finally:
        task_finished.disconnect(receiver)
    result.refresh()
    assert (finished[result.id], result.status) == ("FAILED", "FAILED")
    assert result.errors[0].exception_class is getattr(conveyor, error)
    assert app.job(result.id).status is conveyor.JobStatus.FAILED


def test_run_after_schedules_the_job_and_a_cancel_fails_it(tasks: Any, app: Any) -> None:
    from django.utils import timezone

    import conveyor

    later = timezone.now() + dt.timedelta(hours=1)
    result = tasks.add.using(run_after=later).enqueue(1, 1)
    assert app.job(result.id).status is conveyor.JobStatus.SCHEDULED
    assert tasks.add.get_result(result.id).status == "READY"
    assert app.job(result.id).cancel()
    cancelled = tasks.add.get_result(result.id)
    assert cancelled.status == "FAILED" and cancelled.finished_at is not None
    assert cancelled.errors[0].exception_class is conveyor.JobCancelled


def test_on_commit_sends_when_the_transaction_commits_and_never_on_rollback(
    tasks: Any, app: Any
) -> None:
    from django.db import transaction
    from django_tasks.exceptions import TaskResultDoesNotExist

    with transaction.atomic():
        committed = tasks.add.enqueue(1, 2)
        with pytest.raises(TaskResultDoesNotExist):
            tasks.add.get_result(committed.id)  # not sent before the commit
    assert tasks.add.get_result(committed.id).status == "READY"

    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = tasks.add.enqueue(1, 2)
        raise RuntimeError("roll back")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(rolled_back.id)

    with transaction.atomic():  # the "now" backend: ENQUEUE "now"
        at_once = tasks.write_note.enqueue("now")
        assert tasks.write_note.get_result(at_once.id).status == "READY"
    run_all(app)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (float("nan"), "SerializationError"),
        ({1: "a"}, "SerializationError"),
        ("x" * (2**20 + 1), "PayloadTooLarge"),
    ],
    ids=["nan", "int_key", "too_big"],
)
def test_on_commit_refuses_a_bad_argument_at_enqueue_and_sends_the_rest(
    tasks: Any, app: Any, bad: Any, error: str
) -> None:
    """Refused at the commit, the error came after the data was committed, and Django
    dropped the transaction's later callbacks: the valid job after it was lost."""
    from django.db import transaction

    import conveyor

    with transaction.atomic():
        before = tasks.add.enqueue(1, 2)
        with pytest.raises(getattr(conveyor, error)):
            tasks.add.enqueue(bad, 1)
        after = tasks.add.enqueue(3, 4)
    assert tasks.add.get_result(before.id).status == "READY"
    assert tasks.add.get_result(after.id).status == "READY"
    run_all(app)


def test_get_result_of_what_is_no_django_task(tasks: Any, app: Any) -> None:
    from django_tasks import default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("no-such-job")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not a job id")
    own = tasks.conveyor_own.delay(4)
    with pytest.raises(TaskResultDoesNotExist, match="conveyor_own, not of a Django task"):
        default_task_backend.get_result(own.id)
    run_all(app)
    assert own.result() == 40  # the app's own tasks run beside Django's


def test_a_succeeded_job_whose_payload_is_gone_still_reads(
    tasks: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis drops a succeeded job's payload: the runner's record carries what it held."""
    result = tasks.add.enqueue(20, 22)
    run_all(app)
    monkeypatch.setattr(app.broker, "payload", lambda job_id: None)
    found = tasks.add.get_result(result.id)
    assert (found.status, found.return_value, found.args) == ("SUCCESSFUL", 42, [20, 22])
    assert found.enqueued_at is None and found.started_at is not None


def test_the_framework_signals(tasks: Any, app: Any) -> None:
    from django_tasks.signals import task_enqueued, task_finished, task_started

    seen: list[tuple[str, str]] = []

    def record(signal: str) -> Any:
        def receiver(sender: type, task_result: Any, **kwargs: Any) -> None:
            seen.append((signal, str(task_result.status)))

        return receiver

    receivers = {name: record(name) for name in ("enqueued", "started", "finished")}
    task_enqueued.connect(receivers["enqueued"])
    task_started.connect(receivers["started"])
    task_finished.connect(receivers["finished"])
    try:
        tasks.add.enqueue(1, 1)
        tasks.fail.enqueue("no")
        run_all(app)
    finally:
        task_enqueued.disconnect(receivers["enqueued"])
        task_started.disconnect(receivers["started"])
        task_finished.disconnect(receivers["finished"])
    assert sorted(seen) == sorted([
        ("enqueued", "READY"), ("enqueued", "READY"), ("started", "RUNNING"),
        ("started", "RUNNING"), ("finished", "SUCCESSFUL"), ("finished", "FAILED"),
    ])  # fmt: skip


def test_task_checks(tasks: Any) -> None:
    from django_tasks.exceptions import InvalidTaskError

    with pytest.raises(InvalidTaskError, match="bad queue name"):
        tasks.write_note.using(queue_name="no spaces")  # "now" takes any queue of its own
    with pytest.raises(InvalidTaskError, match="not valid"):
        tasks.add.using(queue_name="elsewhere")  # not in QUEUES


@pytest.mark.parametrize(
    ("conveyor", "match"),
    [
        ({"URLL": "memory://"}, "unknown key.*URLL"),
        ({"TRUST": "myapp"}, r"bad settings.CONVEYOR\['TRUST'\] \('myapp'\): it takes a list"),
        (
            {"TRUST": ["my-app"]},
            r"bad settings.CONVEYOR\['TRUST'\] \(\['my-app'\]\): it takes a list of Python "
            "package names",
        ),
        ({"URL": "nope://x"}, r"settings.CONVEYOR\['URL'\]: .*nope"),
        ({"MIDDLEWARE": ["builtins.object"]}, "is not a conveyor.Middleware"),
        ({"MIDDLEWARE": "x.Y"}, "is a list"),
        ([("URL", "memory://")], "is a dict"),
        ({"PREFIX": "bad prefix"}, r"settings.CONVEYOR\['PREFIX'\] \('bad prefix'\).*\"shop\""),
        ({"PREFIX": 5}, r"settings.CONVEYOR\['PREFIX'\] \(5\)"),
        ({"IMPORTS": "notes.tasks"}, r"settings.CONVEYOR\['IMPORTS'\].*a list of module names"),
        ({"MAX_PAYLOAD": 0}, r"settings.CONVEYOR\['MAX_PAYLOAD'\] \(0\).*\"MAX_PAYLOAD\": 2\*\*20"),
        ({"MAX_RESULT": 1.5}, r"settings.CONVEYOR\['MAX_RESULT'\] \(1.5\)"),
        ({"EVENTS": "yes"}, r"settings.CONVEYOR\['EVENTS'\] \('yes'\): it takes True or False"),
        ({"EVENTS_KEPT": 0}, r"settings.CONVEYOR\['EVENTS_KEPT'\] \(0\)"),
        ({"SERIALIZER": "yaml"}, r"settings.CONVEYOR\['SERIALIZER'\] \('yaml'\)"),
        ({"SERIALIZER": "pickle"}, r"'pickle', which needs settings.CONVEYOR\['SECRET'\]"),
        ({"SECRET": 12345}, r"settings.CONVEYOR\['SECRET'\] \(of type int\)"),
        ({"STORE": 5}, r"settings.CONVEYOR\['STORE'\] \(5\)"),
        (
            {"MIDDLEWARE": ["django_project.notes.middleware.Tagged"]},
            r"'django_project.notes.middleware.Tagged' cannot be made without arguments "
            r"\(missing a required argument: 'tag'\): put an instance in the list",
        ),
    ],
)
def test_bad_conveyor_settings_say_what_to_write(conveyor: Any, match: str) -> None:
    from django.test import override_settings

    from conveyor import ConfigurationError
    from conveyor.contrib.django._settings import build_app

    with override_settings(CONVEYOR=conveyor), pytest.raises(ConfigurationError, match=match):
        build_app()


@pytest.mark.parametrize(
    ("module", "missing"),
    [("django_project.nope", "django_project.nope"), ("nope.tasks", "nope")],
)
def test_a_missing_imports_module_is_named_when_the_worker_starts(
    app: Any, monkeypatch: pytest.MonkeyPatch, module: str, missing: str
) -> None:
    from django.core.management import call_command
    from django.test import override_settings

    from conveyor import ConfigurationError
    from conveyor.worker import Worker

    monkeypatch.setattr(Worker, "run", lambda self: None)
    monkeypatch.delenv("CONVEYOR_URL", raising=False)  # the command sets it: restored after
    match = rf"settings.CONVEYOR\['IMPORTS'\] names '{module}'.*there is no module '{missing}'"
    with (
        override_settings(CONVEYOR={"URL": app.url, "IMPORTS": [module]}),
        pytest.raises(ConfigurationError, match=match),
    ):
        call_command("conveyor_worker")


def test_an_import_error_inside_an_imports_module_keeps_its_own(app: Any) -> None:
    from django.test import override_settings

    from conveyor.contrib.django._settings import load_tasks

    imports = ["django_project.notes.broken"]
    with (
        override_settings(CONVEYOR={"URL": app.url, "IMPORTS": imports}),
        pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_notes"),
    ):
        load_tasks()


def test_settings_make_the_app(django_project: Path) -> None:
    from django.test import override_settings

    from conveyor.contrib.django import DatabaseConnections
    from conveyor.contrib.django._settings import build_app
    from conveyor.contrib.prometheus import PrometheusMiddleware

    metrics = PrometheusMiddleware()
    settings = {
        "URL": "memory://",
        "TRUST": ["reports"],
        "PREFIX": "shop",
        "EVENTS": False,
        "MIDDLEWARE": [metrics, "conveyor.contrib.django.DatabaseConnections"],
    }
    with override_settings(CONVEYOR=settings):
        app = build_app()
    assert (app.url, app.trust, app.prefix) == ("memory://", ("reports",), "shop")
    assert app.events is False
    first, *rest = app.middleware
    assert isinstance(first, DatabaseConnections) and rest[0] is metrics
    assert isinstance(rest[1], DatabaseConnections)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"OPTIONS": {"ENQUEUE": "later"}}, "use 'on_commit'"),
        ({"OPTIONS": {"ENQUEUE_ON_COMMIT": True}}, "unknown option"),
        ({"OPTIONS": {"DATABASE": "other"}}, "not in settings.DATABASES"),
        ({"QUEUES": ["default", "a b"]}, "QUEUES.*bad queue name"),
    ],
)
def test_bad_backend_options_say_what_to_write(params: dict[str, Any], match: str) -> None:
    from conveyor import ConfigurationError
    from conveyor.contrib.django import ConveyorBackend

    with pytest.raises(ConfigurationError, match=match):
        ConveyorBackend("x", {"BACKEND": "conveyor.contrib.django.ConveyorBackend", **params})


def test_transaction_mode_refuses_a_database_that_is_not_postgresql(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is PostgreSQL, but DATABASE is the project's SQLite database: refused
    when the backend is made, not at the first enqueue about a connection= never written."""
    from conveyor import ConfigurationError
    from conveyor.contrib.django import ConveyorBackend

    monkeypatch.setattr(app, "url", "postgresql://127.0.0.1/shop")
    match = r"\['OPTIONS'\]\['DATABASE'\] \('default'\), a sqlite database: it takes the PostgreSQL"
    with pytest.raises(ConfigurationError, match=match):
        ConveyorBackend("x", {"OPTIONS": {"ENQUEUE": "transaction"}})


def test_the_backend_says_what_it_supports() -> None:
    from conveyor.contrib.django import ConveyorBackend

    backend = ConveyorBackend("x", {})
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority
    assert backend.enqueue_mode == "on_commit" and backend.database == "default"


def _in_a_thread(jobs: Any) -> None:
    """Run ``jobs`` in a thread of its own (its own connections, as a worker thread has),
    closing them at the end."""
    import threading

    from django.db import connections

    errors: list[BaseException] = []

    def body() -> None:
        try:
            jobs()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(30)
    assert not errors, errors


def _texts(*texts: str) -> set[str]:
    from django_project.notes.models import Note

    return set(Note.objects.filter(text__in=texts).values_list("text", flat=True))


@pytest.mark.parametrize("middleware", [True, False])
def test_a_job_that_leaves_autocommit_off_does_not_spoil_the_next(middleware: bool) -> None:
    """Persistent connections (CONN_MAX_AGE None): without the middleware the second job's
    write joins the first one's transaction, which nobody commits."""
    from django.db import transaction

    from conveyor.contrib.django import DatabaseConnections
    from conveyor.middleware import Message, Run
    from django_project.notes.models import Note

    hooks = DatabaseConnections()
    message = Message(id=f"job-{middleware}", task="notes")
    first, second = f"pending-{middleware}", f"second-{middleware}"

    def jobs() -> None:
        if middleware:
            hooks.before_run(message)
        transaction.set_autocommit(False)
        Note.objects.create(text=first)
        if middleware:
            hooks.after_run(message, Run(error=RuntimeError("raised")))
            hooks.before_run(message)
        Note.objects.create(text=second)
        if middleware:
            hooks.after_run(message, Run(value=None))

    _in_a_thread(jobs)
    assert _texts(first, second) == ({second} if middleware else set())


def test_a_job_that_leaves_a_transaction_open_is_rolled_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django.db import transaction

    from conveyor.contrib.django import DatabaseConnections
    from conveyor.middleware import Message, Run
    from django_project.notes.models import Note

    hooks = DatabaseConnections()
    message = Message(id="job-open", task="notes")

    def jobs() -> None:
        hooks.before_run(message)
        transaction.atomic().__enter__()
        Note.objects.create(text="left open")
        hooks.after_run(message, Run(error=RuntimeError("raised")))
        hooks.before_run(message)
        Note.objects.create(text="after it")
        hooks.after_run(message, Run(value=None))

    _in_a_thread(jobs)
    assert _texts("left open", "after it") == {"after it"}
    assert "job job-open left a transaction open on database 'default'" in caplog.text


def test_a_transaction_open_before_the_job_is_not_the_jobs() -> None:
    """A test that runs jobs in its own thread, inside its own transaction."""
    from django.db import connection, transaction

    from conveyor.contrib.django import DatabaseConnections
    from conveyor.middleware import Message, Run
    from django_project.notes.models import Note

    hooks = DatabaseConnections()
    message = Message(id="job-inside", task="notes")

    def jobs() -> None:
        with transaction.atomic():
            hooks.before_run(message)
            Note.objects.create(text="inside the caller's")
            hooks.after_run(message, Run(value=None))
            assert connection.in_atomic_block and connection.connection is not None

    _in_a_thread(jobs)
    assert _texts("inside the caller's") == {"inside the caller's"}


def test_the_worker_command_takes_conveyor_workers_options(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from click.testing import CliRunner
    from django.core.management import CommandError, call_command

    from conveyor.contrib.django.management.commands.conveyor_worker import (
        BOOT,
        Command,
        command,
    )
    from conveyor.worker import Worker

    seen: list[Worker] = []

    def run(self: Worker) -> None:
        seen.append(self)

    monkeypatch.setattr(Worker, "run", run)
    monkeypatch.delenv("CONVEYOR_URL", raising=False)  # the command sets it: restored after
    worker = command(Command())
    args = ["-q", "default,other", "-c", "3", "--pool", "processes", "--trust", "reports"]
    args += ["--max-jobs-per-child", "5", "--settings", "django_project.settings"]
    result = CliRunner().invoke(worker, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (w,) = seen
    assert (w.app, w.queues, w.concurrency, w.pool) == (app, ["default", "other"], 3, "processes")
    assert w.module == BOOT and w.max_jobs_per_child == 5
    assert w.trusted == {"reports"}  # not conveyor, whose entry point the children import
    assert os.environ["CONVEYOR_URL"] == app.url  # what the children's app uses

    call_command("conveyor_worker", "--", "-q", "mail", "--grace", "3")
    assert (seen[1].queues, seen[1].grace) == (["mail"], 3.0)
    with pytest.raises(CommandError, match="No such option '--nope'"):
        call_command("conveyor_worker", "--", "--nope")

    usage = CliRunner().invoke(worker, ["-A", "myapp.tasks"])
    assert usage.exit_code == 2 and "No such option '-A'" in usage.output
    shown = CliRunner().invoke(worker, ["--help"]).output
    assert "--max-child-memory" in shown and "--settings" not in shown
