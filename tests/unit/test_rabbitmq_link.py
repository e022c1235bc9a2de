"""The RabbitMQ link's acknowledgements after a reconnection (no sockets: aio-pika
messages over mocked channels)."""

from __future__ import annotations

import asyncio
import types
from collections import OrderedDict
from unittest import mock

from aio_pika.message import IncomingMessage

from conveyor.brokers.rabbitmq._link import Link


def _message(channel: mock.MagicMock, tag: int) -> IncomingMessage:
    delivered = mock.MagicMock()
    delivered.channel, delivered.delivery_tag, delivered.body = channel, tag, b"job"
    delivered.header.properties.expiration = None
    delivered.header.properties.timestamp = None
    return IncomingMessage(delivered)


def test_an_ack_after_a_reconnection_settles_the_new_channels_tickets() -> None:
    """A ticket of the channel that closed (its message raises on ``.channel`` then) is
    taken for none of the new channel's: the held deliveries of the new one are acked."""
    old, new = mock.MagicMock(is_closed=False), mock.MagicMock(is_closed=False)
    stale = _message(old, 7)
    old.is_closed = True  # the connection dropped: the old channel is closed
    fresh = _message(new, 1)
    link = types.SimpleNamespace(_held_on=new, _held=OrderedDict({1: fresh}))
    asyncio.run(Link._ack(link, [stale, fresh]))  # type: ignore[arg-type]
    assert list(link._held) == []
