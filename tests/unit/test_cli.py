"""The ``conveyor`` command's own pieces, in process: formats, paging, URL override, help.

What a user sees end to end (subprocesses on SQLite and Redis) is in
``tests/integration/test_cli.py``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from conveyor import Conveyor, JobStatus
from conveyor._inspect import NOT_KEPT, Decoded, TaskNames, find, logged_tasks, task_matches
from conveyor.cli import cli, redact
from conveyor.cli._load import on_broker, use_url
from conveyor.cli._output import iso, span
from conveyor.cli.schedules import _every


def test_times_are_iso_utc_with_milliseconds() -> None:
    assert iso(1_700_000_000.1239) == "2023-11-14T22:13:20.123Z"
    assert iso(1_700_000_000) == "2023-11-14T22:13:20.000Z"
    assert iso(None) is None and iso(0) is None
    parsed = dt.datetime.fromisoformat(iso(1_700_000_000.5) or "")
    assert parsed.timestamp() == 1_700_000_000.5 and parsed.utcoffset() == dt.timedelta(0)


def test_durations_for_people() -> None:
    assert [span(s) for s in (0, 42, 89, 90, 3600, 5400, 86400, 3 * 86400)] == [
        "0s", "42s", "89s", "2m", "60m", "2h", "24h", "3d",
    ]  # fmt: skip
    assert [_every(s) for s in (0.5, 30, 90, 5400, 86400 + 60)] == [
        "every 0.5s", "every 30s", "every 1m30s", "every 1h30m", "every 1d1m",
    ]  # fmt: skip


def test_passwords_are_masked_in_any_message() -> None:
    message = "cannot reach redis://ops:s3cret@db:6379/0 nor rediss://:pw@[::1]:6380"
    assert redact(message) == "cannot reach redis://ops:***@db:6379/0 nor rediss://:***@[::1]:6380"
    assert redact("sqlite:////srv/a:b/jobs.db") == "sqlite:////srv/a:b/jobs.db"


def test_task_names_match_in_full_or_by_function() -> None:
    assert task_matches("myapp.tasks:resize", "resize")
    assert task_matches("myapp.tasks:resize", "myapp.tasks:resize")
    assert not task_matches("myapp.tasks:resize_all", "resize")
    assert not task_matches(None, "resize")


@pytest.fixture
def memory_app() -> Iterator[Conveyor]:
    with Conveyor("memory://") as app:
        yield app


def test_task_filter_pages_until_it_has_enough(
    memory_app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = memory_app.task(name="shop:send", queue="mail")(lambda to: to)
    resize = memory_app.task(name="shop:resize", queue="mail")(lambda path: path)
    memory_app.enqueue_many([send.s(f"{i}@example.com") for i in range(450)])
    late = memory_app.enqueue_many([resize.s(f"{i}.png") for i in range(3)])
    offsets: list[int] = []
    entries = memory_app.broker.entries

    def spy(status: JobStatus, queue: str | None, limit: int, offset: int = 0) -> Any:
        offsets.append(offset)
        return entries(status, queue, limit, offset=offset)

    monkeypatch.setattr(memory_app.broker, "entries", spy)
    found = find(memory_app, JobStatus.QUEUED, None, "resize", 2)
    assert [e.id for e, _ in found] == [j.id for j in late[:2]]
    assert offsets == [0, 200, 400]  # stops on the page that completes the limit
    offsets.clear()
    assert len(find(memory_app, JobStatus.QUEUED, "mail", "resize", 10)) == 3
    assert offsets == [0, 200, 400]  # the short last page ends the status
    assert find(memory_app, JobStatus.FAILED, None, "resize", 5) == []


def test_a_job_without_a_payload_is_named_by_its_events(memory_app: Conveyor) -> None:
    """What ``conveyor jobs`` reads where a succeeded job's payload is not kept (Redis):
    the whole event log, page after page, once."""
    send = memory_app.task(name="shop:send", queue="mail")(lambda to: to)
    jobs = memory_app.enqueue_many([send.s(f"{i}@example.com") for i in range(1500)])
    assert len(logged_tasks(memory_app)) == 1500
    names, gone = TaskNames(memory_app), Decoded(None, NOT_KEPT)
    assert names(jobs[0].id, gone) == names(jobs[-1].id, gone) == "shop:send"
    assert names("0" * 26, gone) is None and names.unknown == {"0" * 26}


def test_the_newest_jobs_are_named_though_the_log_is_longer_than_this_app_keeps(
    memory_app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the read stopped at twice this app's events_kept, while a sharded Redis
    # prefix keeps that per shard and workers may keep more: `--task` missed the newest
    # jobs and said their events had left the log.
    send = memory_app.task(name="shop:send", queue="mail")(lambda to: to)
    jobs = memory_app.enqueue_many([send.s(f"{i}@example.com") for i in range(1500)])
    log = memory_app.broker.read_events(None, 0, 5000)  # what the workers' log holds

    def read(after: str | None, block: float, count: int) -> Any:
        start = 0 if after is None else [n for n, _ in log].index(after) + 1
        return log[start : start + count]

    monkeypatch.setattr(memory_app.broker, "read_events", read)
    monkeypatch.setattr(memory_app.broker, "events_kept", 100)  # this app keeps fewer
    names = logged_tasks(memory_app)
    assert names[jobs[-1].id] == "shop:send" and len(names) == 1500


def test_url_override_keeps_the_app_and_its_tasks(tmp_path: Path) -> None:
    app = Conveyor("memory://", prefix="shop")
    double = app.task(name="shop:double")(lambda x: 2 * x)
    app.broker.stats()  # opened on the old URL
    url = f"sqlite:///{tmp_path}/new/jobs.db"
    on_broker(app, url, "shop", create=True)
    assert app.url == url and app.registry["shop:double"] is double
    job = double.delay(21)
    assert app.broker.get([job.id])[0] is not None
    assert (tmp_path / "new" / "jobs.db").exists()
    with pytest.raises(Exception, match="bad broker URL"):
        use_url(app, "nowhere")
    assert app.url == url  # a bad URL changes nothing
    app.close()


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_job_shows_a_payload_nested_600_deep(tmp_path: Path, kind: str) -> None:
    """A worker decodes a payload nested up to ~990 levels (written into the broker by
    other means than Conveyor's enqueue): ``conveyor job`` and ``--json`` ended with a
    ``RecursionError`` traceback from 500 levels on. What is deeper than the CLI shows is a
    note; the rest of the job is as it is."""
    from conveyor._message import Envelope
    from conveyor.cli._output import DEEPEST

    url = f"sqlite:///{tmp_path}/jobs.db"
    opened, closed = (b"[", b"]") if kind == "list" else (b'{"k":', b"}")
    deep = opened * 600 + (b"" if kind == "list" else b"1") + closed * 600
    with Conveyor(url) as app:
        payload = b'{"id":"deep","task":"m:f","args":[' + deep + b"]}"
        app.broker.enqueue([Envelope("deep", "default", payload)])
    shown = CliRunner().invoke(cli, ["job", "deep", "--url", url], terminal_width=100)
    assert (shown.exit_code, shown.exception) == (0, None), shown.output
    assert "Traceback" not in shown.output and "queued" in shown.output
    out = CliRunner().invoke(cli, ["job", "deep", "--url", url, "--json"])
    assert (out.exit_code, out.exception) == (0, None), out.output[-2000:]
    document = json.loads(out.output)
    assert (document["id"], document["task"], document["status"]) == ("deep", "m:f", "queued")
    value, levels = document["args"], 1  # containers: the document, then args and in it
    while isinstance(value, list | dict):
        value = value[0] if isinstance(value, list) else value["k"]
        levels += 1
    assert (value, levels) == (f"(nested more than {DEEPEST} levels deep: not shown)", DEEPEST)


HELP = [[], ["info"], ["jobs"], ["job"], ["cancel"], ["requeue"], ["delete"], ["purge"], ["queues"],
        ["queues", "pause"], ["queues", "resume"], ["schedules"], ["ping"], ["events"],
        ["worker"], ["exporter"], ["demo"], ["dashboard"]]  # fmt: skip


@pytest.mark.parametrize("command", HELP, ids=lambda c: "-".join(c) or "conveyor")
def test_help_shows_no_markup(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "``" not in result.output and ":class:" not in result.output
    if command and command != ["demo"]:
        assert "-A, --app MODULE" in result.output and "--url URL" in result.output


def test_every_listing_command_takes_json() -> None:
    def walk(group: click.Group) -> Iterator[click.Command]:
        ctx = click.Context(group)  # commands are imported on first use: ask the group
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            yield command
            if isinstance(command, click.Group):
                yield from walk(command)

    takes = {c.name for c in walk(cli) if any(p.name == "as_json" for p in c.params)}
    listing = {"info", "jobs", "job", "queues", "schedules", "ping", "cancel", "requeue", "events"}
    assert takes >= listing


def test_usage_errors_exit_2() -> None:
    runner = CliRunner()
    for args in (
        ["jobs", "queued", "--limit", "0"],
        ["jobs", "lost"],
        ["requeue"],
        ["requeue", "--all", "abc"],
        ["requeue", "abc", "--status", "dead"],
        ["ping", "--timeout", "0"],
        ["worker"],
        ["worker", "a.tasks", "-A", "b.tasks"],
        ["schedules"],
        # A malformed id or queue name, and worker settings past the worker's bounds, were
        # exit 1 with the library's words (concurrency=8 for -c), not usage errors.
        ["job", "bad id!"],
        ["cancel", "ok", "bad id!"],
        ["delete", "bad id!"],
        ["requeue", "bad id!"],
        ["purge", "bad queue!", "--yes"],
        ["queues", "pause", "bad queue!"],
        ["jobs", "failed", "-q", "bad queue!"],
        ["requeue", "--all", "-q", "bad queue!"],
        ["worker", "a.tasks", "-c", "10001"],
        ["worker", "a.tasks", "--max-deliveries", "10001"],
        ["worker", "a.tasks", "--lease", "1e12"],
        ["worker", "a.tasks", "--grace", "1e12"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)


def test_the_demo_names_its_file_by_a_url_that_opens_it_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the demo joined "sqlite:///" and the path, so in a folder named "q#1" its
    # worker refused the URL (options are not supported), and in "p%41" it used "pA".
    from conveyor.brokers.sqlite import sqlite_path
    from conveyor.cli.demo import absolute

    for name in ("q#1", "p%41", "with space"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        assert sqlite_path(absolute("sqlite:///./conveyor.db")) == str(folder / "conveyor.db")


@pytest.mark.parametrize("width", [50, 55, 60, 64, 68, 80, 120])
def test_a_listing_fits_the_terminal_with_every_column(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: least widths for the folding columns pushed `updated` off a terminal of
    # 55-64 columns; before them, times kept whole squeezed a column to nothing at 80.
    from rich.console import Console

    from conveyor.cli._output import table, text

    monkeypatch.setenv("COLUMNS", str(width))
    ids = ["01a2525dee3c23c1ca0eddc059", "01a2525dee3c23c1ca0eddc05a"]
    grid = table(
        "failed jobs", ids, ("id", "queue", "task", "reason", "updated"), whole=("updated",)
    )
    reason = "builtins.ValueError: cannot identify image file 'x.png'"
    for i in ids:
        grid.add_row(text(i), text("default"), text("myapp.tasks:resize"), text(reason), "2m ago")
    out = Console(width=width, record=True, highlight=False)
    out.print(grid)
    shown = out.export_text()
    lines = shown.splitlines()
    top = next(line for line in lines if line.startswith("┏"))
    assert top.endswith("┓") and top.count("┳") == 4  # five columns, the last one whole
    assert all(len(line) <= width for line in lines)
    assert all(i in shown for i in ids)  # ids whole: people copy them
