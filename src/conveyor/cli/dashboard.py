"""``conveyor dashboard``: the web dashboard on uvicorn (the ``dashboard`` extra).

It listens on 127.0.0.1 unless told otherwise, and refuses any other address without a
password (``--auth``) or an explicit ``--insecure-no-auth``: a dashboard that can requeue,
cancel and purge must not be open to whoever reaches the port by accident.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import click

from .._errors import ConfigurationError
from ..brokers import redact_url
from ..dashboard._hosts import loopback
from ._load import app_options, open_app

if TYPE_CHECKING:
    import uvicorn


def allowed_hosts(host: str, names: tuple[str, ...], auth: str | None) -> list[str] | None:
    """``allowed_hosts`` for the dashboard: the ``--allowed-host`` names, and the address it
    listens on when that is one address of this machine's (not 0.0.0.0 or ::); None (any
    Host) with a password and no ``--allowed-host``."""
    if auth and not names:
        return None
    own = [] if loopback(host) or host.strip("[]") in ("0.0.0.0", "::", "") else [host]
    return [*names, *own]


def check_auth(auth: str | None) -> None:
    """``--auth`` in the form the command takes (``asgi_app`` says it in Python's)."""
    user, colon, password = (auth or "").partition(":")
    if auth is not None and not (user and colon and password):
        raise click.UsageError(
            '--auth takes USER:PASSWORD, both non-empty, e.g. --auth "admin:$PASSWORD", or '
            "better CONVEYOR_DASHBOARD_AUTH=admin:... (which ps does not show)"
        )


def check_exposure(host: str, auth: str | None, insecure: bool) -> None:
    if auth and insecure:
        raise click.UsageError("--auth and --insecure-no-auth contradict each other: pick one")
    if loopback(host) or auth or insecure:
        return
    raise click.UsageError(
        f"refusing to serve the dashboard on {host} without a password: anyone who reaches "
        "that address could requeue, cancel, delete and purge jobs. Pass --auth USER:PASSWORD "
        "(or set CONVEYOR_DASHBOARD_AUTH), or --insecure-no-auth if something in front of it "
        "(a VPN, an authenticating proxy) already guards it; --read-only takes the actions away"
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="TCP port."
)
@click.option(
    "--auth",
    envvar="CONVEYOR_DASHBOARD_AUTH",
    show_envvar=True,
    metavar="USER:PASSWORD",
    help="Ask every request for this user and password (HTTP Basic).",
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@click.option(
    "--root-path",
    default="",
    metavar="PREFIX",
    help="The path a reverse proxy serves it under, e.g. /conveyor (the proxy strips it).",
)
@click.option(
    "--allowed-host",
    "allowed_host",
    multiple=True,
    metavar="NAME",
    help="Answer requests for this Host name too (a reverse proxy's); repeatable.",
)
@click.option(
    "--insecure-no-auth",
    "insecure",
    is_flag=True,
    help="Listen on a non-loopback address without a password (something else guards it).",
)
@app_options
def dashboard(
    *,
    host: str,
    port: int,
    auth: str | None,
    read_only: bool,
    root_path: str,
    allowed_host: tuple[str, ...],
    insecure: bool,
    app_spec: str | None,
    url: str | None,
) -> None:
    """Serve the web dashboard: queues, workers, throughput, jobs, schedules, live.

    \b
    conveyor dashboard -A myapp.tasks                  http://127.0.0.1:8765/
    conveyor dashboard --host 0.0.0.0 --auth admin:$PASSWORD --read-only

    Needs the extra: pip install 'conveyor[dashboard]'. Pass -A so the dashboard decodes
    your jobs with your app's codec and knows its schedules.
    """
    check_auth(auth)
    check_exposure(host, auth, insecure)
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise click.UsageError(f"--root-path takes a path like /conveyor, not {root_path!r}")
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra ({exc}): pip install 'conveyor[dashboard]'"
        ) from exc
    from ..dashboard import asgi_app

    app = open_app(app_spec, url)
    hosts = allowed_hosts(host, allowed_host, auth)
    web = asgi_app(app, auth=auth, read_only=read_only, allowed_hosts=hosts)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address as a URL writes it: uvicorn takes it bare
    shown = f"[{host}]" if ":" in host else host
    listener = _listen(host, port, shown)  # before saying where: --port 0 takes a free one
    port = listener.getsockname()[1]
    notes = [f"broker {redact_url(app.url)}"]
    notes += ["read-only"] if read_only else []
    notes += ["with a password"] if auth else []
    notes += [f"links under {root_path}/"] if root_path else []
    line = f"conveyor dashboard on http://{shown}:{port}/ ({', '.join(notes)}); Ctrl-C stops it"
    click.echo(line, err=True)
    config = uvicorn.Config(
        web,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        lifespan="on",
        root_path=root_path,
        timeout_graceful_shutdown=2,  # live pages hold a stream open: do not wait for them
    )
    _stopping(uvicorn.Server, web.state.close_streams)(config).run(sockets=[listener])


def _listen(host: str, port: int, shown: str) -> socket.socket:
    """The dashboard's listening socket, bound here so that a port in use is one line that
    says what to do (uvicorn logs it and exits 3)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve the dashboard on {shown}: {exc}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise ConfigurationError(
            f"cannot serve the dashboard on {shown}:{port} ({exc.strerror or exc}): another "
            "process may listen there; choose another --port (0: any free one)"
        ) from None
    return listener


def _stopping(server: type[uvicorn.Server], close: Callable[[], None]) -> type[uvicorn.Server]:
    """uvicorn's server, but one that ends the live pages' streams when it stops (else it
    waits for them, then cancels them with a traceback), and exits 0 on SIGTERM or Ctrl-C
    as ``conveyor worker`` does (uvicorn raises the signal again once stopped: exit 143)."""

    class Server(server):  # type: ignore[misc,valid-type]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            close()
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server
