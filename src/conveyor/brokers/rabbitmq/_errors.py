"""The one boundary where aio-pika's and aiormq's errors become Conveyor's: ``TRANSLATE``,
the RabbitMQ broker's ``_errors``. The record store's errors are translated by the store's
own boundary, which the broker runs each store call in.

Most AMQP failures never reach it: a ticket that could not be published or consumed is
logged, and the job waits in the store for a sweep. What does reach it is opening the
broker: a refused login or virtual host (``BrokerAuthError``: retrying cannot help), a
server that cannot be reached (``BrokerUnavailable``), or one that does not answer the
handshake in time (``HandshakeTimeout``, the link's, which says where and how long).
"""

from __future__ import annotations

import traceback
from types import TracebackType

import aiormq.exceptions
from pamqp.commands import Connection

from ..._errors import BrokerAuthError, BrokerError, BrokerUnavailable, ConveyorError

_REFUSED = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ChannelAccessRefused,
)
# The server's answer to opening a virtual host that is missing (530 NOT_ALLOWED) or not
# the user's (530, or 403 ACCESS_REFUSED).
_REFUSED_AT_OPEN = (403, 530)
_UNAVAILABLE = (aiormq.exceptions.AMQPConnectionError, ConnectionError, TimeoutError, OSError)


class HandshakeTimeout(TimeoutError):
    """Every attempt to connect ran out of time (``_link``); the text says where, how long
    and whether the server took the TCP connection, which a bare ``TimeoutError`` (empty,
    as ``asyncio.wait_for`` raises it) does not."""


def reason(exc: BaseException) -> str:
    """``Type: text`` of a client error; a text it lacks (a bare ``TimeoutError``) is said."""
    text = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "no reason given")
    return f"{type(exc).__name__}: {text}"


def translate(exc: BaseException) -> ConveyorError | None:
    """Conveyor's error for a client error (None: not one of the client's)."""
    if isinstance(exc, ConveyorError):
        return None
    if isinstance(exc, _REFUSED):
        return _refused(type(exc).__name__)
    closed = _closed_at_open(exc)
    if closed is not None and closed.reply_code in _REFUSED_AT_OPEN:
        return _refused(f"{closed.reply_code} {closed.reply_text}")
    if isinstance(exc, HandshakeTimeout):
        return BrokerUnavailable(str(exc))
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailable(
            f"cannot reach RabbitMQ ({reason(exc)}): check that it runs and "
            "that the amqp:// URL names its host and port"
        )
    if isinstance(exc, aiormq.exceptions.AMQPError):
        return BrokerError(f"RabbitMQ refused an operation ({reason(exc)})")
    return None


def _refused(why: str) -> BrokerAuthError:
    return BrokerAuthError(
        f"RabbitMQ refused the login or the virtual host ({why}): check "
        "the user and password in the amqp:// URL (percent-encode @ : / ? #), that the "
        "virtual host exists (rabbitmqctl add_vhost NAME) and that the user may use it "
        '(rabbitmqctl set_permissions -p NAME USER ".*" ".*" ".*")'
    )


def _closed_at_open(exc: BaseException) -> Connection.Close | None:
    """The Connection.Close the server answered an open with: aiormq raises an
    ``InvalidFrameError`` that names it only in its text (no reply code), so the frame is
    read where aiormq held it, in its own code's frames of the traceback."""
    if not isinstance(exc, aiormq.exceptions.InvalidFrameError):
        return None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if not str(frame.f_globals.get("__name__", "")).startswith("aiormq."):
            continue  # the client's frames alone, all ended by now: never a running one's
        for value in frame.f_locals.values():
            if isinstance(value, Connection.Close):
                return value
    return None


class Translate:
    """``with`` and ``async with``: client errors out as Conveyor's."""

    def __enter__(self) -> Translate:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        found = None if exc is None else translate(exc)
        if found is not None:
            raise found from None
        return None

    async def __aenter__(self) -> Translate:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self.__exit__(kind, exc, tb)


TRANSLATE = Translate()
