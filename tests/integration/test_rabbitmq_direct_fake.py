"""The direct publisher (``_direct``) against a fake server on a local socket (no RabbitMQ):
what it makes of a confirm, a negative one, and a server that closes the connection."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pamqp import commands, frame
from pamqp.base import Frame

from conveyor.brokers.rabbitmq import _direct
from conveyor.brokers.rabbitmq._direct import Direct
from conveyor.brokers.rabbitmq._url import parse_amqp_url

Reply = Callable[[int], list[Frame]]  # the publish's delivery tag → the frames answered


class FakeServer:
    """Just enough of RabbitMQ: the handshake, then ``reply`` to each publish."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                conn, _ = self._listener.accept()
                self.connections += 1
                threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        buffer = b""

        def read() -> Frame:
            nonlocal buffer
            while True:
                if len(buffer) >= 8:
                    size = int.from_bytes(buffer[3:7], "big")
                    if buffer.startswith(b"AMQP") or len(buffer) >= size + 8:
                        used, _, value = frame.unmarshal(buffer)
                        buffer = buffer[used:]
                        return value  # type: ignore[return-value]
                data = conn.recv(65536)
                if not data:
                    raise EOFError
                buffer += data

        def send(value: Frame, channel: int = 0) -> None:
            conn.sendall(frame.marshal(value, channel))

        with conn:
            read()  # the protocol header
            send(commands.Connection.Start(mechanisms="PLAIN", locales="en_US"))
            read()
            send(commands.Connection.Tune(2047, 131072, 60))
            read(), read()  # TuneOk, Open
            send(commands.Connection.OpenOk())
            read()
            send(commands.Channel.OpenOk(), 1)
            read()
            send(commands.Confirm.SelectOk(), 1)
            tag = 0
            try:
                while True:
                    value = read()
                    if isinstance(value, commands.Basic.Publish):
                        read(), read()  # its header and body
                        tag += 1
                        for answer in self._reply(tag):
                            send(answer, 0 if answer.name.startswith("Connection") else 1)
            except (EOFError, OSError):
                pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def direct() -> Iterator[Callable[[Reply], Direct]]:
    made: list[tuple[FakeServer, Direct]] = []

    def make(reply: Reply) -> Direct:
        server = FakeServer(reply)
        url = parse_amqp_url(f"amqp://guest:guest@127.0.0.1:{server.port}/")
        made.append((server, Direct(url, 2)))
        return made[-1][1]

    yield make
    for server, client in made:
        client.close()
        server.close()


def test_a_confirm_settles_the_publish(direct: Callable[[Reply], Direct]) -> None:
    client = direct(lambda tag: [commands.Basic.Ack(tag)])
    confirms = client.send([("q", b"a"), ("q", b"b")])
    assert confirms is not None and client.wait(confirms, 5)


def test_a_multiple_confirm_settles_every_publish_up_to_it(
    direct: Callable[[Reply], Direct],
) -> None:
    client = direct(lambda tag: [commands.Basic.Ack(tag, multiple=True)] if tag == 3 else [])
    first = client.send([("q", b"a"), ("q", b"b")])
    second = client.send([("q", b"c")])
    assert first is not None and second is not None
    assert client.wait(second, 5) and client.wait(first, 5)


def test_a_negative_confirm_fails_the_publish(direct: Callable[[Reply], Direct]) -> None:
    client = direct(lambda tag: [commands.Basic.Nack(tag)])
    confirms = client.send([("q", b"a")])
    assert confirms is not None and not client.wait(confirms, 5)


def test_a_server_that_closes_fails_what_waits_and_drops_the_connection(
    direct: Callable[[Reply], Direct],
) -> None:
    client = direct(lambda tag: [commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)])
    confirms = client.send([("q", b"a")])
    assert confirms is not None and not client.wait(confirms, 5)
    assert client._sock is None  # the next publish connects again (or goes through aio-pika)


def test_a_missing_confirm_drops_the_connection(direct: Callable[[Reply], Direct]) -> None:
    # A connection that no longer answers (a peer gone without a word, a server that stopped
    # reading) would make every later publish wait its whole timeout.
    client = direct(lambda tag: [])
    confirms = client.send([("q", b"a")])
    assert confirms is not None and not client.wait(confirms, 0.2)
    assert confirms.failed and client._sock is None and not client._waiting


def test_no_connection_after_close(
    direct: Callable[[Reply], Direct], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A publish after the broker's close goes the way aio-pika's would (nowhere, the job is
    # left to the sweep), not on a new connection that nothing would ever close.
    monkeypatch.setattr(_direct, "RETRY", 0.0)
    client = direct(lambda tag: [commands.Basic.Ack(tag)])
    confirms = client.send([("q", b"a")])
    assert confirms is not None and client.wait(confirms, 5)
    client.close()
    assert client.send([("q", b"b")]) is None
    assert client._sock is None


def test_a_dropped_connection_wakes_the_thread_reading_it(
    direct: Callable[[Reply], Direct],
) -> None:
    # The broker's close (or another thread's failure) drops the connection while a thread
    # waits for its confirms in a read of the socket: it learns at once, not at its timeout.
    client = direct(lambda tag: [])
    confirms = client.send([("q", b"a")])
    assert confirms is not None
    done = threading.Event()

    def read() -> None:
        client.wait(confirms, 30)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not client._reading:  # in its read
        time.sleep(0.01)
    client.close()
    assert done.wait(10)
    reader.join()


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="Linux's keepalive options")
def test_an_idle_connection_is_probed_within_a_minute(direct: Callable[[Reply], Direct]) -> None:
    # No heartbeats on it: the kernel's keepalive, after its default two idle hours, would
    # neither keep a NAT's or firewall's entry (dropped after a few idle minutes) nor find
    # a peer gone before the next publish waited its whole timeout on it.
    client = direct(lambda tag: [commands.Basic.Ack(tag)])
    confirms = client.send([("q", b"a")])
    assert confirms is not None and client.wait(confirms, 5) and client._sock is not None
    assert client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) <= 60
