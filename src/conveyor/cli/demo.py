"""``conveyor demo``: the main job on the embedded default, end to end, in one command."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._app import Conveyor
from ..brokers import DEFAULT_URL, redact_url
from ..brokers.sqlite._url import sqlite_url
from ._load import on_broker, sqlite_file
from ._output import table, text

_WIDTHS = (320, 640, 1280)


def _start_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONVEYOR_URL=url)
    cmd = [sys.executable, "-m", "conveyor", "worker", "conveyor.cli._demo_tasks",
           "--url", url, "-q", "demo", "-c", str(concurrency)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_worker(proc: subprocess.Popen[bytes], console: Console) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    if code == 0:
        console.print("[green]worker stopped cleanly on SIGTERM (exit 0)[/]")
    else:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        console.print(f"[red]worker exited with {code}[/]\n{err[-2000:]}")
    return code


def absolute(url: str) -> str:
    """A SQLite URL with an absolute path, so the command printed next works from anywhere."""
    path = sqlite_file(url)
    return url if path is None else sqlite_url(path)  # a '#' or '%' in it percent-encoded


def conveyor_command() -> str:
    """How to run ``conveyor`` from this shell: the bare name when it is this interpreter's
    on PATH (an active virtualenv), else the script's path (``.venv/bin/conveyor``)."""
    script = os.path.join(os.path.dirname(sys.executable), "conveyor")
    if not os.path.exists(script):
        return f"{shlex.quote(sys.executable)} -m conveyor"
    found = shutil.which("conveyor")
    if found is not None and os.path.realpath(found) == os.path.realpath(script):
        return "conveyor"
    relative = os.path.relpath(script)
    return shlex.quote(relative if not relative.startswith("..") else script)


def next_steps(url: str) -> str:
    """The line that tells what to run next, exactly: the command, the path, the URL."""
    where = redact_url(url)
    cmd = conveyor_command()
    line = f"Next: `{cmd} info --url {shlex.quote(where)}` shows the queues and workers"
    if where != url:
        line += " (put your password back in place of ***)"
    activate = os.path.join(os.path.dirname(shlex.split(cmd)[0]), "activate")
    if cmd != "conveyor" and os.path.exists(activate):
        line += f"; or `source {shlex.quote(activate)}` first, and type just `conveyor`"
    return line + ". See README.md to write your own tasks."


@click.command()
@click.option("-n", "--jobs", "count", default=3000, show_default=True, help="Jobs to run.")
@click.option("-c", "--concurrency", default=4, show_default=True, help="Worker threads.")
@click.option(
    "--url",
    envvar="CONVEYOR_URL",
    show_envvar=True,
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="Broker to run on (a SQLite file's folder is created if missing).",
)
def demo(count: int, concurrency: int, url: str) -> None:
    """Run a worker and a few thousand jobs on the embedded broker, with live progress."""
    from ._demo_tasks import thumbnail

    url = absolute(url)
    console = Console(highlight=False)
    console.print(f"[bold]Conveyor demo[/] on {redact_url(url)}")
    app = on_broker(Conveyor(url), None, None, create=True)
    worker = _start_worker(url, concurrency)
    try:
        started = time.perf_counter()
        sigs = [thumbnail.s(i, _WIDTHS[i % 3]) for i in range(count)]
        jobs = []
        for start in range(0, count, 500):
            jobs += app.enqueue_many(sigs[start : start + 500])
        enqueued = time.perf_counter()
        console.print(f"enqueued {count} jobs in {enqueued - started:.2f} s")
        columns = (TextColumn("running"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        results = []
        with Progress(*columns, console=console) as bar:
            progress = bar.add_task("jobs", total=count)
            for job in jobs:
                results.append(job.result(timeout=120))
                bar.advance(progress)
        finished = time.perf_counter()
    finally:
        code = _stop_worker(worker, console)
    rate = count / (finished - started)
    console.print(f"[bold]{count} jobs[/] enqueued, run and collected in "
                  f"{finished - started:.2f} s: [bold]{rate:,.0f} jobs/s[/]")  # fmt: skip
    shown = list(zip(jobs, results, strict=True))[:: count // 5 + 1][:5]
    sample = table("A sample of results", [job.id for job, _ in shown], ("job", "result"))
    for job, result in shown:
        sample.add_row(job.id, text(result))
    console.print(sample)
    console.print(next_steps(url), soft_wrap=True)
    app.close()
    if code != 0:
        sys.exit(code)
