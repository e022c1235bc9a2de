"""The AMQP side: one connection on an event loop thread of its own (aio-pika), tickets
published with publisher confirms (from the publishing thread, on a connection of their
own, ``_direct``, once their queue is declared), and consumed into buffers the fetch
watches read.

Topology (the one place it is defined): a Conveyor queue ``q`` of prefix ``p`` is the
durable quorum queue ``p.q`` of the URL's virtual host, reached through the default
exchange (a durable classic queue with ``?queue_type=classic``). Its arguments never change
(RabbitMQ refuses a queue declared again with other arguments): ``x-queue-type: quorum``
and ``x-delivery-limit: DELIVERY_LIMIT``, a safety net only (a ticket dropped past it
loses nothing: the record is in the store, and the sweep finds it).

A message is a *ticket*: its body is job ids of one queue (separated by spaces, which no
id holds), persistent (transient on a classic queue); an enqueue sends it while the jobs'
records are written (``send``, then the records, then the wait for the confirms), so it
can come before its records (a worker's look keeps such a ticket a while,
``_core.Fetching``); every other publish comes after the records. A worker acknowledges a
ticket once the records say none of its jobs is queued any more (claimed, ended,
scheduled, gone). A publish of up to ``TICKETS`` jobs to a queue makes a ticket per job; a
bigger batch shares ``TICKETS`` tickets out (a drain of a bulk enqueue then costs RabbitMQ
and the worker one delivery and acknowledgement per few jobs, and still wakes up to
``TICKETS`` idle workers). A ticket held longer than ``HOLD`` seconds by a consumer that
does not look (a busy worker, a paused queue) is handed back (``nack`` with requeue) for
another worker.

A connection lost is the client's to make again (every ``reconnect_interval`` s); the link
says so once, with the reason (``_lost``), and once more when it is back (``_back``): the
client's own lines about it (a traceback, then a line or two a second) are what
``conveyor``'s logging keeps to ``--log-level debug`` (``_logging.quiet_clients``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import shlex
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url

from ..._errors import BrokerAuthError
from ._direct import Confirms, Direct, usable
from ._errors import HandshakeTimeout, reason, translate
from ._url import RabbitURL

log = logging.getLogger("conveyor")

T = TypeVar("T")

DELIVERY_LIMIT = 20  # RabbitMQ's own bound on a ticket's redeliveries (a safety net)
TICKETS = 64  # tickets a publish to one queue makes at most (more jobs share them)
HOLD = 60.0  # seconds a consumer keeps a ticket it has not settled before handing it back
CONNECT_ATTEMPTS = 3  # each waits the URL's connection_timeout (10 s) for the server
OPEN_SLACK = 5.0  # seconds an open gets beyond its attempts (its channel, the diagnosis)
PROBE = 1.0  # seconds the look at whether a server that never answered takes a connection
CONNECT_TIMEOUT = 35.0  # seconds to declare and start consuming, to close
_SWEEPS = "jobs are in the record store and workers find them on their sweeps (every %g s)"
_UNTIL_BACK = _SWEEPS + " until RabbitMQ is back"


_DRAIN_TIMEOUT = 2.0  # seconds the loop's last tasks get to end when the link closes


def advice(exc: BaseException | None, url: RabbitURL, prefix: str) -> str:
    """What a publish or a consume that failed with ``exc`` leaves, and what to do: a
    refusal that waiting does not mend (the user's rights, a queue declared with other
    arguments) says how to mend it; anything else (the connection lost, no confirm in
    time) mends itself once RabbitMQ is back."""
    sweeps = _SWEEPS % url.sweep
    vhost = shlex.quote(url.vhost)
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        user = shlex.quote(unquote(urlsplit(url.connect).username or "guest"))
        return (
            f"the user may not use the queues of the virtual host: give it the rights "
            f"(rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'); until then, " + sweeps
        )
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return (
            "the queue was declared with other arguments (another queue_type): every "
            "producer and worker of a virtual host and prefix must use the same queue_type; "
            "to switch, stop them and delete the queues (rabbitmqctl delete_queue -p "
            f"{vhost} {prefix}.QUEUE), or use another queues= prefix; until then, " + sweeps
        )
    return _UNTIL_BACK % url.sweep


async def _cancel_the_rest() -> None:
    """Cancel every task of the running loop but this one, and wait for them to end."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


async def _probe(host: str | None, port: int | None) -> BaseException | None:
    """None if ``host:port`` takes a TCP connection within ``PROBE`` seconds (closed at
    once), else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE)
    except (OSError, TimeoutError) as exc:
        return exc
    writer.close()
    return None


def _channel_of(message: AbstractIncomingMessage) -> object | None:
    """The channel ``message`` came on; None once that channel has closed (aio-pika
    raises then), so a delivery of a channel gone since is never taken for one held now."""
    try:
        return message.channel
    except Exception:
        return None


@dataclass(frozen=True)
class Ticket:
    """Job ids RabbitMQ delivered, waiting for a look to settle them (those of them still
    queued, once a look has seen some go)."""

    job_ids: tuple[str, ...]
    queue: str
    message: AbstractIncomingMessage
    arrived: float  # time.monotonic()


def bodies(tickets: Sequence[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """The messages of ``(queue, job id)`` tickets: ``(queue, body)``, at most ``TICKETS``
    per queue, the jobs shared out in order."""
    by_queue: dict[str, list[str]] = {}
    for queue, job_id in tickets:
        by_queue.setdefault(queue, []).append(job_id)
    out: list[tuple[str, bytes]] = []
    for queue, ids in by_queue.items():
        each = -(-len(ids) // TICKETS)
        out += [(queue, " ".join(ids[i : i + each]).encode()) for i in range(0, len(ids), each)]
    return out


class Sending:
    """Tickets on their way to RabbitMQ (``Link.send``): through the direct client (the
    caller's thread wrote them) or through aio-pika (the loop thread publishes them)."""

    def __init__(
        self,
        link: Link,
        future: concurrent.futures.Future[None] | None,
        tickets: Sequence[tuple[str, str]],
        direct: Confirms | None = None,
    ) -> None:
        self._link, self._future, self._tickets, self._direct = link, future, tickets, direct

    def confirmed(self, timeout: float | None = None) -> bool:
        """Wait for RabbitMQ's confirms; False (the failure logged) if they did not all
        come within ``timeout`` (``confirm_timeout``): the records are written, the sweep
        finds the jobs. The direct client's failure publishes the tickets again through
        aio-pika, within what is left of the timeout (an enqueue waits ``confirm_timeout``
        at most; none left, as after no confirm in time, they are left to the sweep)."""
        link = self._link
        if self._direct is not None:
            assert link._direct is not None
            deadline = time.monotonic() + link.confirm_timeout
            if link._direct.wait(self._direct, link.confirm_timeout):
                return True
            left = deadline - time.monotonic()
            if left > 0:
                return link._send_on_loop(self._tickets).confirmed(left)
            link._warn(f"{len(self._tickets)} ticket(s) not confirmed by RabbitMQ in time")
            return False
        if self._future is None:
            return not self._tickets
        try:
            self._future.result(link.confirm_timeout if timeout is None else timeout)
        except Exception as exc:
            self._future.cancel()
            link._warn(
                f"publishing {len(self._tickets)} ticket(s) to RabbitMQ failed ({exc!r})", exc
            )
            return False
        return True


class Link:
    """The broker's connection to RabbitMQ (see the module docstring). Every call is made
    from the broker's threads; the client runs on the link's own loop thread."""

    def __init__(self, url: RabbitURL, prefix: str) -> None:
        self._url = url
        self._prefix = url.queues or prefix
        self.confirm_timeout = url.confirm_timeout
        self._arguments: dict[str, Any] = (
            {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
            if url.queue_type == "quorum"
            else {"x-queue-type": "classic"}  # no delivery limit there (quorum queues only)
        )
        # A classic queue's tickets are transient: RabbitMQ does not write them to its disk
        # (nor fsync them before its confirm), and a restart of RabbitMQ loses them; their
        # jobs are in the store, where the sweep finds them. A quorum queue keeps every
        # message on disk whatever its mode.
        self._mode = (
            aio_pika.DeliveryMode.PERSISTENT
            if url.queue_type == "quorum"
            else aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        self._cond = threading.Condition()
        self._warned = 0.0
        # Queues declared (by this process, on any channel): their tickets may go through
        # the direct client, which declares nothing.
        self._ready: set[str] = set()
        self._direct = Direct(url, int(self._mode)) if usable(url) else None
        self._start()

    def _start(self) -> None:
        """A loop thread, a connection and a publishing channel of this process's own."""
        self._pid = os.getpid()
        self._buffers: dict[str, deque[Ticket]] = {}
        self.arrivals = 0  # tickets received so far: a watch's wake-up
        self._declared: dict[str, AbstractQueue] = {}
        self._consumed: set[str] = set()
        self._consumer: AbstractChannel | None = None
        # The consuming channel's deliveries not settled yet, in delivery-tag order (the loop
        # thread's alone): a run of them settled at once is acknowledged with one frame.
        self._held: OrderedDict[int, AbstractIncomingMessage] = OrderedDict()
        self._held_on: object = None  # their channel (a new one after a reconnection)
        # The connection's state as its callbacks tell it (the loop thread's alone): since
        # when it is lost (None: up), and whether a refusal was said in this outage.
        self._down_since: float | None = None
        self._refusal_said = False
        self._closing = False  # by ``close``: the connection's end is no loss
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conveyor-amqp", daemon=True
        )
        self._thread.start()
        opening = CONNECT_ATTEMPTS * self._url.connection_timeout + OPEN_SLACK
        try:
            self._connection, self._publisher = self._run(self._open(), opening)
        except BaseException:
            self._stop()
            raise
        self._ager = asyncio.run_coroutine_threadsafe(self._age(), self._loop)

    def _forked(self) -> None:
        """In a forked child (a process pool's), the parent's loop thread is not there: a
        connection of the child's own, the parent's left alone."""
        if self._pid != os.getpid():
            self._cond = threading.Condition()  # the parent's may have been held at the fork
            self._start()

    async def _open(self) -> tuple[AbstractRobustConnection, AbstractChannel]:
        # A connection the server never answers (seen on a loaded RabbitMQ 3.10: the
        # handshake waits until the socket closes) is given up and made again. An attempt
        # that does not end in the link's connection (given up, its channel refused, the
        # open cancelled) is closed: a robust connection goes on with a task of its own,
        # which would connect later and then reconnect, beside the link's, for as long as
        # the process lives. Every attempt given up: ``HandshakeTimeout`` says where and how
        # long (``asyncio.wait_for``'s own TimeoutError has no text).
        timeout = self._url.connection_timeout
        for attempt in range(CONNECT_ATTEMPTS):
            connection = aio_pika.RobustConnection(make_url(self._url.connect))
            try:
                await asyncio.wait_for(connection.connect(timeout=timeout), timeout)
                channel = await connection.channel(publisher_confirms=True)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await connection.close()
                if not isinstance(exc, TimeoutError):
                    raise
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise await self._unanswered() from exc
            else:
                connection.close_callbacks.add(self._lost)
                connection.reconnect_callbacks.add(self._back)
                return connection, channel
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _unanswered(self) -> HandshakeTimeout:
        """What every attempt running out of time means: the server's address, the time
        waited, and whether the server takes a TCP connection at all (a look of ``PROBE``
        seconds): a port that is not RabbitMQ's, or a server too loaded to answer, does;
        a wrong host, or a firewall that drops the packets, does not."""
        parts = urlsplit(self._url.connect)
        where = parts.netloc.rpartition("@")[2]
        waited = f"within {self._url.connection_timeout:g} s ({CONNECT_ATTEMPTS} tries)"
        refused = await _probe(parts.hostname, parts.port)
        if refused is not None:
            return HandshakeTimeout(
                f"RabbitMQ at {where} did not answer {waited}, and does not take a connection "
                f"now ({reason(refused)}): check the host and port in the amqp:// URL, that "
                "the server runs, and that no firewall drops the packets on the way"
            )
        handshake = "TLS and AMQP handshake" if parts.scheme == "amqps" else "AMQP handshake"
        return HandshakeTimeout(
            f"RabbitMQ at {where} accepted the connection but did not answer the {handshake} "
            f"{waited}: check that the port is RabbitMQ's and that the server is not "
            "overloaded (connection_timeout= in the URL sets how long an attempt waits)"
        )

    def _lost(self, connection: object, exc: BaseException | None = None) -> None:
        """The connection's close callback (on the loop thread): called when it is lost,
        then at each attempt to make it again that fails. The loss is said once, a refusal
        of the login or the virtual host once more (retrying cannot help), the rest is
        debug."""
        if self._closing or isinstance(exc, asyncio.CancelledError):
            return
        why = reason(exc) if exc is not None else "closed by the server"
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._refusal_said = False
            every = getattr(connection, "reconnect_interval", None)
            log.warning(
                "lost the connection to RabbitMQ (%s), reconnecting%s: " + _UNTIL_BACK,
                why,
                f" every {every:g} s" if isinstance(every, int | float) else "",
                self._url.sweep,
            )
            return
        refused = translate(exc) if exc is not None else None
        if isinstance(refused, BrokerAuthError) and not self._refusal_said:
            self._refusal_said = True
            log.warning("reconnecting to RabbitMQ: %s", refused)
        else:
            log.debug("reconnecting to RabbitMQ failed (%s)", why)

    def _back(self, connection: object) -> None:
        """The connection's reconnect callback (on the loop thread)."""
        if self._down_since is not None:
            log.info("reconnected to RabbitMQ after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None

    def name(self, queue: str) -> str:
        return f"{self._prefix}.{queue}"

    # -- publishing -------------------------------------------------------------------------

    def publish(self, tickets: Sequence[tuple[str, str]]) -> bool:
        """Publish ``(queue, job id)`` tickets and wait for RabbitMQ's confirms; False (the
        failure logged) if they did not all come: the records are written, the sweep finds
        the jobs."""
        return self.send(tickets).confirmed()

    def send(self, tickets: Sequence[tuple[str, str]]) -> Sending:
        """Start publishing ``(queue, job id)`` tickets (written by this thread on the direct
        connection, or handed to the loop thread where a queue is not declared yet or there
        is no direct connection) and return at once: the caller writes the records
        meanwhile, then waits for the confirms (``Sending.confirmed``)."""
        if not tickets:
            return Sending(self, None, ())
        direct = self._direct
        if direct is not None and all(q in self._ready for q, _ in tickets):
            # From this thread: no wait for the loop thread to wake and take the GIL.
            confirms = direct.send([(self.name(q), body) for q, body in bodies(tickets)])
            if confirms is not None:
                return Sending(self, None, tickets, confirms)
        return self._send_on_loop(tickets)

    def _send_on_loop(self, tickets: Sequence[tuple[str, str]]) -> Sending:
        """``send`` through aio-pika, on the loop thread (which declares the queues)."""
        try:
            self._forked()
            future = asyncio.run_coroutine_threadsafe(self._publish(tickets), self._loop)
        except Exception as exc:
            self._warn(f"publishing {len(tickets)} ticket(s) to RabbitMQ failed ({exc!r})", exc)
            return Sending(self, None, tickets)  # not confirmed
        return Sending(self, future, tickets)

    async def _publish(self, tickets: Sequence[tuple[str, str]]) -> None:
        for queue in dict.fromkeys(q for q, _ in tickets):
            await self._declare(self._publisher, queue)
        exchange = self._publisher.default_exchange
        sent = [
            exchange.publish(
                aio_pika.Message(body, delivery_mode=self._mode),
                routing_key=self.name(queue),
            )
            for queue, body in bodies(tickets)
        ]
        await (sent[0] if len(sent) == 1 else asyncio.gather(*sent))

    async def _declare(self, channel: AbstractChannel, queue: str) -> AbstractQueue:
        key = f"{id(channel)}:{queue}"
        found = self._declared.get(key)
        if found is None:
            found = await channel.declare_queue(
                self.name(queue), durable=True, arguments=self._arguments
            )
            self._declared[key] = found
            self._ready.add(queue)
        return found

    # -- consuming --------------------------------------------------------------------------

    def consume(self, queues: Iterable[str], prefetch: int) -> None:
        """Start consuming the queues not consumed yet (the first call fixes the prefetch);
        a failure is logged, and the watch falls back to sweeps until a later call works."""
        self._forked()
        new = [q for q in queues if q not in self._consumed]
        if not new:
            return
        try:
            self._run(self._consume(new, self._url.prefetch or max(prefetch, 1)), CONNECT_TIMEOUT)
        except Exception as exc:
            self._warn(f"consuming from RabbitMQ failed ({exc!r})", exc)

    async def _consume(self, queues: list[str], prefetch: int) -> None:
        if self._consumer is None:
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            self._consumer = channel
        for queue in queues:
            found = await self._declare(self._consumer, queue)
            await found.consume(functools.partial(self._arrived, queue), no_ack=False)
            self._consumed.add(queue)

    async def _arrived(self, queue: str, message: AbstractIncomingMessage) -> None:
        if message.channel is not self._held_on:  # reconnected: its tags start again
            self._held_on, self._held = message.channel, OrderedDict()
        if message.delivery_tag is not None:
            self._held[message.delivery_tag] = message
        ids = tuple(message.body.decode("utf-8", "replace").split())
        ticket = Ticket(ids, queue, message, time.monotonic())
        with self._cond:
            self._buffers.setdefault(queue, deque()).append(ticket)
            self.arrivals += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Sleep until a ticket arrives after the count ``seen`` (or ``timeout`` s pass)."""
        with self._cond:
            self._cond.wait_for(lambda: self.arrivals != seen, timeout)

    def take(self, queues: Iterable[str]) -> list[Ticket]:
        """The buffered tickets of these queues, taken out for a look to settle."""
        taken: list[Ticket] = []
        with self._cond:
            for queue in queues:
                found = self._buffers.get(queue)
                if found:
                    taken.extend(found)
                    found.clear()
        return taken

    def settle(self, done: Sequence[Ticket], kept: Sequence[Ticket]) -> None:
        """Acknowledge ``done``; put ``kept`` back in their buffers (their jobs are queued)."""
        if kept:
            with self._cond:
                for ticket in reversed(kept):
                    self._buffers.setdefault(ticket.queue, deque()).appendleft(ticket)
        if done:
            self._soon(self._ack([t.message for t in done]))

    async def _ack(self, messages: list[AbstractIncomingMessage], requeue: bool = False) -> None:
        """Acknowledge (or hand back) ``messages``; the oldest held deliveries among them,
        up to the first one kept, with one ``multiple`` ack."""
        mine = {m.delivery_tag for m in messages if _channel_of(m) is self._held_on}
        last: AbstractIncomingMessage | None = None
        while not requeue and self._held and next(iter(self._held)) in mine:
            tag, last = self._held.popitem(last=False)
            mine.discard(tag)
        # A ticket of a channel that closed since is redelivered by RabbitMQ anyway.
        if last is not None:
            with contextlib.suppress(Exception):
                await last.ack(multiple=True)
        for message in messages:
            if message.delivery_tag in mine or _channel_of(message) is not self._held_on:
                self._held.pop(message.delivery_tag or 0, None)
                with contextlib.suppress(Exception):
                    await (message.nack(requeue=True) if requeue else message.ack())

    async def _age(self) -> None:
        """Hand back the tickets held past ``HOLD`` (no look settled them)."""
        while True:
            await asyncio.sleep(HOLD / 4)
            old = time.monotonic() - HOLD
            stale: list[AbstractIncomingMessage] = []
            with self._cond:
                for buffer in self._buffers.values():
                    while buffer and buffer[0].arrived < old:
                        stale.append(buffer.popleft().message)
            try:
                await self._ack(stale, requeue=True)
            except Exception:  # the hand-back goes on: RabbitMQ redelivers what it missed
                log.exception("could not hand back %d ticket(s)", len(stale))

    # -- the loop thread --------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _soon(self, coro: Coroutine[Any, Any, None]) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _warn(self, what: str, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._warned > 30:  # once in a while, not once per job
            self._warned = now
            log.warning("%s: %s", what, advice(exc, self._url, self._prefix))

    def close(self) -> None:
        """Close the connection (RabbitMQ requeues the tickets not settled) and stop the
        loop thread; again, nothing (nor in a forked child: the parent's are the parent's;
        the direct connection a child made of its own is closed)."""
        if self._direct is not None:
            self._direct.close()
        if self._loop.is_closed() or self._pid != os.getpid():
            return
        self._ager.cancel()
        self._closing = True
        with contextlib.suppress(Exception):
            self._run(self._connection.close(), CONNECT_TIMEOUT)
        self._stop()

    def _stop(self) -> None:
        # What the client left running on the loop (a closed connection's callbacks) ends
        # first, on the loop: a task left pending would be collected after the loop closed,
        # and say so ("Event loop is closed") from wherever the collector runs.
        with contextlib.suppress(Exception):
            self._run(_cancel_the_rest(), _DRAIN_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONNECT_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()
