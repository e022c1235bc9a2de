"""``conveyor ping``: a liveness or readiness probe that answers within its timeout.

The broker is asked from a daemon thread: a broker that accepts the connection and then
never answers (a stopped server, a black-holed network) cannot hold the probe past
``--timeout``, whatever the client library's own timeouts are.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click

from .._app import Conveyor
from .._errors import ConveyorError
from ..brokers import redact_url
from ._load import app_options, load_app, on_broker
from ._output import emit_json, json_option


@dataclass
class _Probe:
    """What the probe thread found; ``done`` is set once it has an answer or an error."""

    done: threading.Event = field(default_factory=threading.Event)
    broker: str = ""
    workers: int | None = None  # live workers, once the broker answered
    warnings: list[str] = field(default_factory=list)  # what the broker says of its setup
    error: str | None = None


def _ask(probe: _Probe, app_spec: str | None, url: str | None) -> None:
    try:
        app = load_app(app_spec)[0] if app_spec else Conveyor(url)
        # Named before the broker opens: SQLite and PostgreSQL connect as they open.
        probe.broker = redact_url(url or app.url)  # --url wins, as on_broker makes it
        on_broker(app, url, app_spec, create=False)
        probe.workers = len(app.broker.workers())
        probe.warnings = app.broker.warnings()
        app.close()
    except ConveyorError as exc:
        probe.error = str(exc)
    except Exception as exc:  # a probe reports every failure as "not ready", never a trace
        probe.error = f"{type(exc).__name__}: {exc}"
    finally:
        probe.done.set()


@click.command()
@click.option(
    "--workers",
    "need",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Also require at least N live workers.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up (exit 1) after this long, even if the broker never answers.",
)
@json_option
@app_options
def ping(need: int, timeout: float, as_json: bool, app_spec: str | None, url: str | None) -> None:
    """Exit 0 if the broker answers (and at least --workers N workers are alive), else 1.

    \b
    For a Kubernetes probe:
      livenessProbe:  exec: command: [conveyor, ping, --timeout, "3"]
      readinessProbe: exec: command: [conveyor, ping, --workers, "1"]
    """
    started = time.monotonic()
    probe = _Probe()
    args = (probe, app_spec, url)
    threading.Thread(target=_ask, args=args, name="conveyor-ping", daemon=True).start()
    answered = probe.done.wait(timeout)
    latency = time.monotonic() - started
    if not answered:
        probe.error = f"the broker did not answer within {timeout:g} s"
    elif probe.error is None and (probe.workers or 0) < need:
        probe.error = f"{probe.workers} live worker(s), fewer than the {need} required"
    ok = probe.error is None
    if as_json:
        document: dict[str, Any] = {
            "ok": ok,
            "broker": probe.broker or None,
            "workers": probe.workers if answered else None,
            "required_workers": need,
            "seconds": round(latency, 4),
            "warnings": probe.warnings,
            "error": probe.error,
        }
        emit_json(document)
    elif ok:
        click.echo(f"ok: {probe.broker} answered in {latency * 1000:.0f} ms; "
                   f"{probe.workers} live worker(s)")  # fmt: skip
    else:
        click.echo(f"error: {probe.error}", err=True)
    if not as_json:  # a misconfigured broker is worth a word, not a failed probe
        for line in probe.warnings:
            click.echo(f"warning: {line}", err=True)
    if not ok:
        sys.exit(1)
