"""``conveyor demo``: the main job on the embedded default, end to end, in one command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._app import Conveyor
from ..brokers import DEFAULT_URL, redact_url

_WIDTHS = (320, 640, 1280)


def _start_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CONVEYOR_URL=url)
    cmd = [sys.executable, "-m", "conveyor", "worker", "conveyor.cli._demo_tasks",
           "-q", "demo", "-c", str(concurrency)]  # fmt: skip
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


@click.command()
@click.option("-n", "--jobs", "count", default=3000, show_default=True, help="Jobs to run.")
@click.option("-c", "--concurrency", default=4, show_default=True, help="Worker threads.")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="Broker to run on.")
def demo(count: int, concurrency: int, url: str) -> None:
    """Run a worker and a few thousand jobs on the embedded broker, with live progress."""
    from ._demo_tasks import thumbnail

    console = Console()
    console.print(f"[bold]Conveyor demo[/] on {redact_url(url)} in {os.getcwd()}")
    app = Conveyor(url)
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
    sample = Table(title="A sample of results")
    for column in ("job", "result"):
        sample.add_column(column)
    for job, result in list(zip(jobs, results, strict=True))[:: count // 5 + 1][:5]:
        sample.add_row(job.id, str(result))
    console.print(sample)
    console.print("Next: `conveyor info` shows the queues; see README.md to write your own tasks.")
    app.close()
    if code != 0:
        sys.exit(code)
