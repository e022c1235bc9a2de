"""The RabbitMQ link's acknowledgements after a reconnection and its connection attempts
(no sockets: aio-pika messages over mocked channels, stand-in connections)."""

from __future__ import annotations

import asyncio
import types
from collections import OrderedDict
from unittest import mock

import pytest
from aio_pika.message import IncomingMessage

from conveyor.brokers.rabbitmq import _link
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


class _Attempt:
    """A robust connection whose handshake hangs (the first) or works (the rest)."""

    made: list[_Attempt] = []

    def __init__(self, url: object) -> None:
        self.hangs = not _Attempt.made
        self.closed = False
        _Attempt.made.append(self)

    async def connect(self, timeout: float) -> None:
        if self.hangs:
            await asyncio.sleep(3600)

    async def channel(self, publisher_confirms: bool) -> str:
        return "channel"

    async def close(self) -> None:
        self.closed = True


def test_a_connection_attempt_given_up_is_closed_and_the_next_one_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt whose handshake hangs is given up and closed (a robust connection left
    open would connect later and reconnect forever beside the link's); the next is the
    link's."""
    monkeypatch.setattr(_link, "HANDSHAKE_TIMEOUT", 0.05)
    monkeypatch.setattr(_link.aio_pika, "RobustConnection", _Attempt)
    _Attempt.made = []
    link = types.SimpleNamespace(_url=types.SimpleNamespace(connect="amqp://127.0.0.1/"))
    connection, channel = asyncio.run(Link._open(link))  # type: ignore[arg-type]
    hung, kept = _Attempt.made
    assert (hung.closed, kept.closed) == (True, False)
    assert connection is kept and channel == "channel"


def test_every_attempt_given_up_is_closed_and_the_last_error_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_link, "HANDSHAKE_TIMEOUT", 0.02)
    monkeypatch.setattr(_link.aio_pika, "RobustConnection", _Attempt)
    monkeypatch.setattr(_Attempt, "__init__", _hanging_init)
    _Attempt.made = []
    link = types.SimpleNamespace(_url=types.SimpleNamespace(connect="amqp://127.0.0.1/"))
    with pytest.raises(TimeoutError):
        asyncio.run(Link._open(link))  # type: ignore[arg-type]
    assert len(_Attempt.made) == _link.CONNECT_ATTEMPTS
    assert all(a.closed for a in _Attempt.made)


def _hanging_init(self: _Attempt, url: object) -> None:
    self.hangs, self.closed = True, False
    _Attempt.made.append(self)
