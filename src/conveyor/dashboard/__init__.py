"""Conveyor's web dashboard (docs/dashboard.md): ``conveyor dashboard`` serves it, and
``asgi_app(app)`` is the same ASGI application, to mount in a Starlette, FastAPI or Django
project. It needs the ``dashboard`` extra: ``pip install 'conveyor[dashboard]'``.

It reads through the broker port and the app's admin API only (``stats``, ``entries``,
``get``, ``payload``, ``workers``, the event log; ``requeue``, ``cancel``, ``pause``,
``resume``, ``purge``), so it works on every broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._checks import flag, seconds
from .._errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._app import Conveyor

__all__ = ["asgi_app"]


def asgi_app(
    app: Conveyor,
    *,
    auth: str | tuple[str, str] | None = None,
    read_only: bool = False,
    refresh: float = 1.0,
    allowed_hosts: Iterable[str] | None = None,
) -> Starlette:
    """The dashboard of ``app``'s broker as an ASGI application.

    ``auth``: ``"user:password"`` (or a tuple); every page and API call then needs it (HTTP
    Basic, 401 otherwise). Without it, guard the dashboard some other way (a private
    network, an authenticating proxy, your framework's own middleware). ``read_only``: no
    action at all (requeue, cancel, pause, resume, purge), refused by the server, not only
    hidden. ``refresh``: seconds between two reads of the queues' counts (what the live
    pages lag behind at most, plus half a second); 0 reads them on every request.
    ``allowed_hosts``: the host names (no port) requests may name in their ``Host`` besides
    ``localhost``, 127.x.x.x and ``[::1]``, e.g. the name a reverse proxy passes on; ``"*"``
    for any. Without ``auth`` only those are answered (403 otherwise: a site whose name
    resolves to 127.0.0.1 cannot reach the dashboard through a browser); with ``auth`` and
    no ``allowed_hosts``, any.
    """
    from ._hosts import allowed_names

    try:
        from ._guard import credentials
        from ._views import Dashboard
        from ._web import build
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra ({exc}): pip install 'conveyor[dashboard]'"
        ) from exc

    pair = credentials(auth)
    read_only = flag("read_only", read_only)
    refresh = seconds("refresh", refresh, example="refresh=1.0")
    hosts = None if allowed_hosts is None else allowed_names(allowed_hosts)
    if hosts is None and pair is None:
        hosts = frozenset()  # this machine's own names only
    return build(Dashboard(app, read_only=read_only, refresh=refresh), pair, hosts)
