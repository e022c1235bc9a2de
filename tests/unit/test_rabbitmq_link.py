"""The RabbitMQ link's acknowledgements after a reconnection, its connection attempts and
what it says of a connection lost (no sockets: aio-pika messages over mocked channels,
stand-in connections, a stand-in look at the server)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import types
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any
from unittest import mock

import aiormq.exceptions
import pytest
from aio_pika.message import IncomingMessage

from conveyor._errors import BrokerUnavailable
from conveyor.brokers.rabbitmq import _link
from conveyor.brokers.rabbitmq._errors import HandshakeTimeout, translate
from conveyor.brokers.rabbitmq._link import Link
from conveyor.brokers.rabbitmq._url import parse_amqp_url


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
        self.close_callbacks: set[object] = set()
        self.reconnect_callbacks: set[object] = set()
        _Attempt.made.append(self)

    async def connect(self, timeout: float) -> None:
        if self.hangs:
            await asyncio.sleep(3600)

    async def channel(self, publisher_confirms: bool) -> str:
        return "channel"

    async def close(self) -> None:
        self.closed = True


def _opening(url: str) -> Link:
    """A link as far as ``_open`` needs it (no loop thread, no connection)."""
    link = Link.__new__(Link)
    link._url = parse_amqp_url(url)
    return link


def test_a_connection_attempt_given_up_is_closed_and_the_next_one_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt whose handshake hangs is given up (after the URL's connection_timeout)
    and closed (a robust connection left open would connect later and reconnect forever
    beside the link's); the next is the link's, and tells the link of its losses."""
    monkeypatch.setattr(_link.aio_pika, "RobustConnection", _Attempt)
    _Attempt.made = []
    link = _opening("amqp://127.0.0.1/?connection_timeout=0.05")
    connection, channel = asyncio.run(link._open())
    hung, kept = _Attempt.made
    assert (hung.closed, kept.closed) == (True, False)
    assert connection is kept and channel == "channel"
    assert kept.close_callbacks == {link._lost} and kept.reconnect_callbacks == {link._back}


@pytest.mark.parametrize("takes", [True, False], ids=["accepted", "no-connection"])
def test_every_attempt_given_up_is_closed_and_says_where_how_long_and_what_to_check(
    monkeypatch: pytest.MonkeyPatch, takes: bool
) -> None:
    """Not the bare TimeoutError of ``wait_for`` (its text is empty: the CLI said
    "cannot reach RabbitMQ (TimeoutError: )"), but what happened: the server's address,
    the time each attempt waited (the URL's connection_timeout), the number of attempts
    and whether the server takes a TCP connection at all."""

    async def probe(host: str | None, port: int | None) -> BaseException | None:
        assert (host, port) == ("rabbit.example", 5999)
        return None if takes else TimeoutError()

    monkeypatch.setattr(_link.aio_pika, "RobustConnection", _Attempt)
    monkeypatch.setattr(_Attempt, "__init__", _hanging_init)
    monkeypatch.setattr(_link, "_probe", probe)
    _Attempt.made = []
    link = _opening("amqp://guest:s3cret@rabbit.example:5999/jobs?connection_timeout=0.02")
    started = time.monotonic()
    with pytest.raises(HandshakeTimeout) as caught:
        asyncio.run(link._open())
    assert time.monotonic() - started < 2
    assert len(_Attempt.made) == _link.CONNECT_ATTEMPTS
    assert all(a.closed for a in _Attempt.made)
    found = translate(caught.value)
    assert isinstance(found, BrokerUnavailable)
    said = str(found)
    assert said.startswith("RabbitMQ at rabbit.example:5999 ")
    assert "within 0.02 s (3 tries)" in said and "s3cret" not in said
    if takes:
        assert "accepted the connection but did not answer the AMQP handshake" in said
        assert "check that the port is RabbitMQ's and that the server is not overloaded" in said
    else:
        assert "does not take a connection now (TimeoutError: no answer in time)" in said


def _hanging_init(self: _Attempt, url: object) -> None:
    self.hangs, self.closed = True, False
    self.close_callbacks, self.reconnect_callbacks = set(), set()
    _Attempt.made.append(self)


def test_a_bare_client_error_is_translated_with_a_reason_not_an_empty_one() -> None:
    said = str(translate(TimeoutError()))
    assert "(TimeoutError: no answer in time)" in said and "TimeoutError: )" not in said


# -- a connection lost --------------------------------------------------------------------


def _linked() -> Link:
    """A link as far as its connection's callbacks need it."""
    link = Link.__new__(Link)
    link._url = parse_amqp_url("amqp://127.0.0.1/?sweep=2")
    link._down_since, link._refusal_said, link._closing = None, False, False
    return link


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "conveyor"]


def test_a_lost_connection_is_one_warning_and_its_return_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client calls the close callback at the loss and at each failed attempt to
    connect again (a second each): one warning, with the reason; the attempts are debug;
    the reconnection one info line."""
    link, client = _linked(), types.SimpleNamespace(reconnect_interval=1)
    caplog.set_level(logging.DEBUG, logger="conveyor")
    cut = aiormq.exceptions.AMQPConnectionError("Server connection unexpectedly closed")
    link._lost(client, cut)
    for _ in range(5):
        link._lost(client, ConnectionRefusedError(111, "Connect call failed"))
    link._back(client)
    said = _said(caplog)
    warnings = [text for level, text in said if level == logging.WARNING]
    assert warnings == [
        "lost the connection to RabbitMQ (AMQPConnectionError: Server connection unexpectedly "
        "closed), reconnecting every 1 s: jobs are in the record store and workers find them "
        "on their sweeps (every 2 s) until RabbitMQ is back"
    ]
    assert [level for level, _ in said].count(logging.DEBUG) == 5
    assert said[-1][0] == logging.INFO and said[-1][1].startswith("reconnected to RabbitMQ after")
    link._lost(client, cut)  # the next outage is said again
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_a_reconnection_refused_is_said_once_and_a_close_of_the_links_own_not_at_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link, client = _linked(), types.SimpleNamespace()
    caplog.set_level(logging.DEBUG, logger="conveyor")
    link._lost(client, aiormq.exceptions.AMQPConnectionError("closed"))
    for _ in range(3):
        link._lost(client, aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"))
    warnings = [text for level, text in _said(caplog) if level == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[1].startswith("reconnecting to RabbitMQ: RabbitMQ refused the login")
    caplog.clear()
    link._back(client)
    link._closing = True
    link._lost(client, aiormq.exceptions.AMQPConnectionError("closed"))
    link._closing = False
    link._lost(client, asyncio.CancelledError())  # the client's close of a connection
    assert [level for level, _ in _said(caplog)] == [logging.INFO]


# -- a publish or a consume that failed -----------------------------------------------------


def _refusing() -> Link:
    """A link as far as its warnings about a publish or a consume need it."""
    link = Link.__new__(Link)
    link._url = parse_amqp_url("amqp://conveyor:s3cret@127.0.0.1/jobs?sweep=2")
    link._prefix, link._warned, link._pid, link._consumed = "app", 0.0, os.getpid(), set()
    link.confirm_timeout = 5.0
    return link


_ACCESS = aiormq.exceptions.ChannelAccessRefused(
    "ACCESS_REFUSED - access to queue 'app.default' in vhost 'jobs' refused for user 'conveyor'"
)
_MISMATCH = aiormq.exceptions.ChannelPreconditionFailed(
    "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'app.default' in vhost "
    "'jobs': received 'classic' but current is 'quorum'"
)


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (
            _ACCESS,
            "the user may not use the queues of the virtual host: give it the rights "
            "(rabbitmqctl set_permissions -p jobs conveyor '.*' '.*' '.*'); until then, jobs "
            "are in the record store and workers find them on their sweeps (every 2 s)",
        ),
        (
            _MISMATCH,
            "the queue was declared with other arguments (another queue_type): every producer "
            "and worker of a virtual host and prefix must use the same queue_type; to switch, "
            "stop them and delete the queues (rabbitmqctl delete_queue -p jobs app.QUEUE), or "
            "use another queues= prefix; until then, jobs are in the record store and workers "
            "find them on their sweeps (every 2 s)",
        ),
        (
            aiormq.exceptions.ConnectionChannelError("connection closed"),
            "jobs are in the record store and workers find them on their sweeps (every 2 s) "
            "until RabbitMQ is back",
        ),
        (
            None,  # no confirm in time
            "jobs are in the record store and workers find them on their sweeps (every 2 s) "
            "until RabbitMQ is back",
        ),
    ],
    ids=["access-refused", "precondition-failed", "connection", "no-confirm"],
)
def test_a_refusal_says_how_to_mend_it_and_a_lost_connection_to_wait(
    exc: BaseException | None, says: str
) -> None:
    """A user without the rights on the virtual host's queues was told that the jobs wait
    "until RabbitMQ is back", which it was all along: a refusal that waiting does not mend
    says what to do (the commands docs/rabbitmq.md gives), in the vhost's and user's names,
    and never shows the password."""
    link = _refusing()
    said = _link.advice(exc, link._url, link._prefix)
    assert said == says and "s3cret" not in said


def test_a_consume_and_a_publish_refused_say_so_in_their_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = _refusing()
    caplog.set_level(logging.WARNING, logger="conveyor")

    def refuse(coro: Coroutine[Any, Any, object], timeout: float) -> object:
        coro.close()
        raise _ACCESS

    link._run = refuse  # type: ignore[method-assign]
    link.consume(["default"], 1)
    link._warned = 0.0  # once in 30 s: the next one is said too
    refused: concurrent.futures.Future[None] = concurrent.futures.Future()
    refused.set_exception(_MISMATCH)
    assert not _link.Sending(link, refused, [("default", "job1")]).confirmed()
    consume, publish = [text for _, text in _said(caplog)]
    assert consume.startswith("consuming from RabbitMQ failed (<ChannelAccessRefused: ")
    assert "rabbitmqctl set_permissions -p jobs conveyor '.*' '.*' '.*'" in consume
    assert publish.startswith("publishing 1 ticket(s) to RabbitMQ failed (")
    assert "rabbitmqctl delete_queue -p jobs app.QUEUE" in publish
    assert "until RabbitMQ is back" not in consume + publish
