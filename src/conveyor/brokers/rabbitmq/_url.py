"""``amqp://`` URLs: RabbitMQ's address and virtual host, and Conveyor's options.

Pure: nothing here imports aio-pika, so a bad URL is refused where the app is made even
where the ``conveyor[rabbitmq]`` extra is not installed.

``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS, port 5671 by default). The
virtual host is the path, percent-encoded (``/`` is ``%2F``); none, the default ``/``.
Conveyor's options (docs/rabbitmq.md):

``prefetch``
    The most tickets a worker's consumer holds unacknowledged (default: the room of the
    worker's first fetch, its run slots and its buffer, like the Redis worker's buffer).
``sweep``
    Seconds between two looks at the record store of an idle worker that no ticket woke
    (default 2): what finds a job whose ticket was never published (a producer that died
    between the record and the publish, RabbitMQ away) or was dropped.
``queues``
    What the queues' names start with (default: the app's ``prefix``): ``NAME.default``.
``confirm_timeout``
    Seconds an enqueue waits for RabbitMQ's publisher confirms (default 5); past it, the
    job is in the store, and the sweep finds it.
``connection_timeout``
    Seconds one attempt to connect waits for RabbitMQ to answer (default 10); opening the
    broker makes three attempts (``_link``).
``queue_type``
    ``quorum`` (the default: replicated, a ticket is delivered once a majority has it on
    disk) or ``classic`` (opt-in, for latency: tickets are transient, delivered and
    confirmed without a disk write, lost on a restart of RabbitMQ, and live on one node;
    docs/rabbitmq.md says what that gives up).

The client's own options (``CLIENT_OPTIONS``) are passed to it, two of them checked first
(the client reads a value it cannot parse as 0): ``reconnect_interval``, seconds above 0
(1 unless given; 0 reconnects without a pause, thousands of times a second), and
``heartbeat``, whole seconds from 0 (none) to ``HEARTBEAT_MAX`` (0 turns heartbeats off).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import unquote

from ..._errors import InvalidURL
from .._url import _host_port, _split, redact_url

SCHEMES = ("amqp", "amqps")
EXAMPLE = "amqp://user:password@host:5672/vhost"
DEFAULT_SWEEP = 2.0
DEFAULT_CONFIRM_TIMEOUT = 5.0
DEFAULT_CONNECTION_TIMEOUT = 10.0
_PORTS = {"amqp": 5672, "amqps": 5671}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
QUEUE_TYPES = ("quorum", "classic")
CONVEYOR_OPTIONS = (
    "prefetch",
    "sweep",
    "queues",
    "confirm_timeout",
    "connection_timeout",
    "queue_type",
)
_SECONDS = ("sweep", "confirm_timeout", "connection_timeout")
CLIENT_OPTIONS = ("heartbeat", "name", "reconnect_interval")
_CHECKED = ("heartbeat", "reconnect_interval")  # the client's, given once each too
HEARTBEAT_MAX = 65534  # the client reads 65535 as 0, like any value it cannot parse
RECONNECT_INTERVAL = "reconnect_interval=1"  # seconds between reconnections (the client's: 5)
_ENCODE = "percent-encode / ? # @ in a password as %2F %3F %23 %40, and / in a vhost as %2F"


@dataclass(frozen=True, repr=False)
class RabbitURL:
    """A checked ``amqp://`` URL: ``connect`` is what the client gets (the URL without
    Conveyor's options; it holds the password), ``shown`` the redacted URL."""

    connect: str
    shown: str
    vhost: str = "/"
    prefetch: int | None = None
    sweep: float = DEFAULT_SWEEP
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT
    queues: str | None = None  # the queues' name prefix; None: the app's prefix
    queue_type: str = "quorum"

    def __repr__(self) -> str:
        return f"RabbitURL({self.shown!r})"


def _bad(shown: str, what: str, fix: str = f"write {EXAMPLE}") -> InvalidURL:
    return InvalidURL(f"bad RabbitMQ URL {shown!r}: {what}; {fix}")


def _positive(shown: str, name: str, text: str, whole: bool) -> float:
    try:
        value = float(int(text)) if whole else float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:  # NaN fails too
        kind = "a whole number above 0" if whole else "seconds, above 0"
        raise _bad(shown, f"bad value {text[:40]!r} for option {name!r}", f"it takes {kind}")
    return value


def _client_option(shown: str, item: str) -> str:
    """The client's option ``item`` (``name=value``) as the client gets it: checked where
    the client would read a bad value as 0, and the seconds written out in full (it reads
    a value without a dot as a whole number, ``1e3`` as 0)."""
    name, _, value = item.partition("=")
    text = unquote(value)
    if name == "reconnect_interval":
        seconds = _positive(shown, name, text, whole=False)
        return f"{name}={format(Decimal(repr(seconds)), 'f')}"
    if name == "heartbeat":
        beat = int(text) if re.fullmatch("[0-9]{1,5}", text) else -1
        if not 0 <= beat <= HEARTBEAT_MAX:
            raise _bad(
                shown,
                f"bad value {text[:40]!r} for option {name!r}",
                f"it takes whole seconds from 0 (no heartbeats) to {HEARTBEAT_MAX}",
            )
        return f"{name}={beat}"
    return item


def parse_amqp_url(url: str) -> RabbitURL:
    """Check an ``amqp://`` or ``amqps://`` URL and read Conveyor's options out of it;
    ``InvalidURL`` says what is wrong and what to write, without the password."""
    shown = redact_url(url)
    p = _split(url)
    scheme = (p.scheme or "").lower()
    if scheme not in SCHEMES:
        raise _bad(shown, "not an amqp:// or amqps:// URL")
    if p.ambiguous or p.fragment is not None:
        raise _bad(shown, "an '@' or '#' after the host", _ENCODE)
    if not p.hosts or "," in p.hosts:
        raise _bad(shown, "one host is needed")
    host, port = _host_port(p.hosts)
    if not host or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise _bad(shown, "a bad host or port", "e.g. amqp://guest:guest@127.0.0.1:5672/")
    path = p.path[1:] if p.path.startswith("/") else p.path
    if "/" in path:
        raise _bad(shown, "a '/' inside the virtual host", _ENCODE)
    vhost = unquote(path) if path else "/"
    options: dict[str, float] = {}
    queues: str | None = None
    queue_type = "quorum"
    kept: list[str] = []
    given: set[str] = set()
    for item in (p.query or "").split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        if name in CONVEYOR_OPTIONS or name in _CHECKED:
            if name in given:  # else the last would win, unsaid
                raise _bad(shown, f"option {name!r} is given twice", "give it once")
            given.add(name)
        if name == "prefetch" or name in _SECONDS:
            options[name] = _positive(shown, name, unquote(value), whole=name == "prefetch")
        elif name == "queues":
            queues = unquote(value)
            if not _NAME.fullmatch(queues):
                raise _bad(
                    shown, f"bad queues name prefix {queues[:40]!r}", "use letters, digits, _ . -"
                )
        elif name == "queue_type":
            queue_type = unquote(value)
            if queue_type not in QUEUE_TYPES:
                raise _bad(
                    shown, f"bad queue_type {queue_type[:40]!r}", "use quorum (default) or classic"
                )
        elif name in CLIENT_OPTIONS:
            kept.append(_client_option(shown, item))
        else:
            raise _bad(
                shown,
                f"unknown option {name[:40]!r}",
                "Conveyor takes " + ", ".join(CONVEYOR_OPTIONS) + "; "
                "the client " + ", ".join(CLIENT_OPTIONS),
            )
    base = f"{p.scheme}://{p.userinfo + '@' if p.userinfo is not None else ''}{p.hosts}"
    if port is None:
        base += f":{_PORTS[scheme]}"
    if "reconnect_interval" not in given:
        kept.append(RECONNECT_INTERVAL)
    connect = base + "/" + path + "?" + "&".join(kept)
    prefetch = options.get("prefetch")
    return RabbitURL(
        connect=connect,
        shown=shown,
        vhost=vhost,
        prefetch=None if prefetch is None else int(prefetch),
        sweep=options.get("sweep", DEFAULT_SWEEP),
        confirm_timeout=options.get("confirm_timeout", DEFAULT_CONFIRM_TIMEOUT),
        connection_timeout=options.get("connection_timeout", DEFAULT_CONNECTION_TIMEOUT),
        queues=queues,
        queue_type=queue_type,
    )
