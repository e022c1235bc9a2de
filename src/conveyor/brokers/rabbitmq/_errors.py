"""The one boundary where aio-pika's and aiormq's errors become Conveyor's: ``TRANSLATE``,
the RabbitMQ broker's ``_errors``. The record store's errors are translated by the store's
own boundary, which the broker runs each store call in.

Most AMQP failures never reach it: a ticket that could not be published or consumed is
logged, and the job waits in the store for a sweep. What does reach it is opening the
broker: a refused login or virtual host (``BrokerAuthError``: retrying cannot help), a
server that cannot be reached (``BrokerUnavailable``).
"""

from __future__ import annotations

from types import TracebackType

import aiormq.exceptions

from ..._errors import BrokerAuthError, BrokerError, BrokerUnavailable, ConveyorError

_REFUSED = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ChannelAccessRefused,
)
_UNAVAILABLE = (aiormq.exceptions.AMQPConnectionError, ConnectionError, TimeoutError, OSError)


def translate(exc: BaseException) -> ConveyorError | None:
    """Conveyor's error for a client error (None: not one of the client's)."""
    if isinstance(exc, ConveyorError):
        return None
    if isinstance(exc, _REFUSED):
        return BrokerAuthError(
            f"RabbitMQ refused the login or the virtual host ({type(exc).__name__}): check "
            "the user and password in the amqp:// URL (percent-encode @ : / ? #), that the "
            "virtual host exists (rabbitmqctl add_vhost NAME) and that the user may use it "
            '(rabbitmqctl set_permissions -p NAME USER ".*" ".*" ".*")'
        )
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailable(
            f"cannot reach RabbitMQ ({type(exc).__name__}: {exc}): check that it runs and "
            "that the amqp:// URL names its host and port"
        )
    if isinstance(exc, aiormq.exceptions.AMQPError):
        return BrokerError(f"RabbitMQ refused an operation ({type(exc).__name__}: {exc})")
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
