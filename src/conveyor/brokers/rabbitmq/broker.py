"""``RabbitBroker``: RabbitMQ delivers, a record store (Redis, PostgreSQL or SQLite)
keeps; see the package docstring."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Self

from ..._clock import Clock
from ..._message import Delivery, Envelope, JobEntry, JobRecord, JobStatus, QueueStats, WorkerInfo
from ...stores._port import KeyValue
from .. import open_broker, record_store
from .._admin import Events
from .._base import EVENTS_KEPT, PARKED, BrokerOptions, ErrorBoundary, Watch
from .._port import Broker, Claimed, Finish, LeaseState
from .._url import redact_url
from ._core import Fetching, Guarded, due_tickets, queued_tickets
from ._errors import TRANSLATE
from ._link import TICKETS, Link
from ._url import parse_amqp_url
from ._waits import Waits

RESUME_TICKETS = 1000  # tickets a resume publishes at most (the sweep finds the rest)


class RabbitBroker(Broker):
    """Jobs delivered through RabbitMQ, recorded in ``store`` (a broker of another kind,
    which this one owns and closes)."""

    _errors = TRANSLATE

    def __init__(
        self,
        url: str,
        store: Broker,
        *,
        prefix: str = "conveyor",
        clock: Clock | None = None,
        events_kept: int = EVENTS_KEPT,
    ) -> None:
        parsed = parse_amqp_url(url)
        record_store(url, store.url)  # Redis, PostgreSQL or SQLite: refused otherwise
        super().__init__(url, clock=clock, events_kept=events_kept)
        self._store = store
        self._sweep = parsed.sweep
        with TRANSLATE:
            self._link = Link(parsed, prefix)
        self._waits = Waits(store, parsed.queues or prefix)

    @classmethod
    def from_url(cls, url: str, options: BrokerOptions) -> Self:
        store_url = record_store(url, options.store)
        assert store_url is not None  # record_store raised otherwise

        store = open_broker(
            store_url,
            clock=options.clock,
            prefix=options.prefix,
            create=options.create,
            events_kept=options.events_kept,
        )
        try:
            return cls(
                url,
                store,
                # the store's prefix when none is given (a Redis store's URL may name one)
                prefix=options.prefix or getattr(store, "prefix", None) or "conveyor",
                clock=options.clock,
                events_kept=options.events_kept,
            )
        except BaseException:
            store.close()
            raise

    def __repr__(self) -> str:
        return f"<RabbitBroker {redact_url(self.url)} store={redact_url(self._store.url)}>"

    @property
    def _s(self) -> ErrorBoundary:
        return self._store._errors

    @property
    def kv(self) -> KeyValue:
        return self._store.kv

    def _events_kept_changed(self) -> None:
        self._store.events_kept = self.events_kept

    async def _aclose(self) -> None:
        await self._store._aclose()  # the record store's connections of this loop

    def _close(self) -> None:
        try:
            self._link.close()
        finally:
            self._store.close()

    # -- what publishes tickets ------------------------------------------------------------

    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        # A job parked for promote gets no ticket; one with dependencies gets it if they
        # had all ended (else its last dependency's end publishes it, _waits); a scheduled
        # one does, so an idle worker learns when it comes due. The tickets are sent while
        # the records are written (a worker keeps a ticket whose record it cannot see yet,
        # Fetching), and the enqueue returns once both are done. Not a big batch's: its
        # write may take longer than a worker keeps an unseen ticket (``UNSEEN``).
        plain = [
            (env.queue, env.id) for env in envelopes if not env.depends_on and env.eta != PARKED
        ]
        early = len(envelopes) <= TICKETS
        sending = self._link.send(plain if early else [])
        waiting = [env for env in envelopes if env.depends_on]
        with self._s:
            self._waits.note(waiting)  # before the records: a release in between finds them
            ids = self._store._enqueue(envelopes, events)
        # A unique key's duplicate is the existing job's id: its ticket is that one's.
        tickets = [
            (env.queue, job_id)
            for env, job_id in zip(envelopes, ids, strict=True)
            if job_id != env.id and not env.depends_on and env.eta != PARKED
        ]
        if waiting:
            due = [job_id for env, job_id in zip(envelopes, ids, strict=True) if env.depends_on]
            released = queued_tickets(self._store, due)
            tickets += released
            # Queued at once (their dependencies had ended), or not written (a unique key's
            # duplicate): their notes are stale now, not left to fill the index.
            queued = {job_id for _, job_id in released}
            settled = [
                env
                for env, job_id in zip(envelopes, ids, strict=True)
                if env.depends_on and (job_id in queued or job_id != env.id)
            ]
            if settled:
                with self._s:
                    self._waits.forget(settled)
        if not early:
            tickets = plain + tickets
        more = self._link.send(tickets)
        sending.confirmed()
        more.confirmed()
        return ids

    def _enqueue_in(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        # Not committed yet: a ticket now could come before the record. The sweep finds it
        # (or, for a job with dependencies still running, the end of the last one).
        with self._s:
            self._waits.note([env for env in envelopes if env.depends_on])
            return self._store._enqueue_in(connection, envelopes, events)

    async def _enqueue_in_async(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        # The store's own: the base's would hand the asyncio connection to the blocking one.
        if waiting := [env for env in envelopes if env.depends_on]:
            await asyncio.to_thread(self._note, waiting)  # blocking calls: off the caller's loop
        async with self._s:
            return await self._store._enqueue_in_async(connection, envelopes, events)

    def _note(self, waiting: list[Envelope]) -> None:
        with self._s:
            self._waits.note(waiting)

    def _fetch(self, queues: list[str], consumer: str, count: int, lease: float) -> Watch[Claimed]:
        return Fetching(
            self._store,
            self._link,
            sweep=self._sweep,
            queues=queues,
            count=count,
            lease=lease,
            consumer=consumer,
        )

    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]:
        with self._s:
            done = self._store._finish(outcomes, events)
            tickets = [
                (f.retry.queue, f.retry.id)
                for f, ok in zip(outcomes, done, strict=True)
                if ok and f.retry is not None
            ]
            ended = {
                f.delivery.id for f, ok in zip(outcomes, done, strict=True) if ok and not f.retry
            }
            if ended:
                tickets += self._waits.wake(ended, ended=True)
        self._link.publish(tickets)
        return done

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        with self._s:
            done = self._store._release(deliveries)
            released = [d for d, ok in zip(deliveries, done, strict=True) if ok]
            # a cancelled job ends on its release: its dependents are released with it
            woken = self._waits.wake({d.id for d in released}, ended=False)
        self._link.publish([(d.queue, d.id) for d in released] + woken)
        return done

    def _promote(self, job_id: str, payload: bytes) -> bool:
        with self._s:
            done = self._store._promote(job_id, payload)
        if done:
            self._link.publish(due_tickets(self._store, [job_id]))
        return done

    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
        with self._s:
            ids = self._store._requeue(items)
        self._link.publish(due_tickets(self._store, ids))
        return ids

    def _resume(self, queue: str) -> None:
        with self._s:
            self._store._resume(queue)
            waiting = self._store._entries(JobStatus.QUEUED, queue, RESUME_TICKETS, 0)
        self._link.publish([(queue, e.id) for e in waiting])

    # -- the store's alone -----------------------------------------------------------------

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        with self._s:
            return self._store._renew(deliveries, lease)

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        with self._s:
            return self._store._progress(delivery, value, note)

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        with self._s:
            return self._store._get(job_ids)

    def _wait(self, job_id: str) -> Watch[JobRecord | None]:
        with self._s:
            return Guarded(self._store._wait(job_id), self._s)

    def _payload(self, job_id: str) -> bytes | None:
        with self._s:
            return self._store._payload(job_id)

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        with self._s:
            status = self._store._cancel(job_id, event)
            woken = self._waits.wake({job_id}, ended=False) if status is not None else []
        self._link.publish(woken)
        return status

    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        with self._s:
            self._store._heartbeat(info, ttl)

    def _forget_worker(self, worker_id: str) -> None:
        with self._s:
            self._store._forget_worker(worker_id)

    def _publish(self, events: Sequence[bytes]) -> None:
        with self._s:
            self._store._publish(events)

    def _stats(self) -> list[QueueStats]:
        with self._s:
            return self._store._stats()

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        with self._s:
            return self._store._entries(status, queue, limit, offset)

    def _pause(self, queue: str) -> None:
        with self._s:
            self._store._pause(queue)

    def _purge(self, queue: str) -> int:
        with self._s:
            purged = self._store._purge(queue)
            woken = self._waits.wake(None, ended=False) if purged else []
        self._link.publish(woken)
        return purged

    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        # a deleted job's ticket, if one is still queued, finds no record and is acked
        with self._s:
            gone = self._store._delete(job_ids)
            deleted = {i for i, status in zip(job_ids, gone, strict=True) if status is not None}
            woken = self._waits.wake(deleted, ended=True) if deleted else []
        self._link.publish(woken)
        return gone

    def _workers(self) -> list[WorkerInfo]:
        with self._s:
            return self._store._workers()

    def _read_events(self, start: int, limit: int) -> Watch[Events]:
        with self._s:
            return Guarded(self._store._read_events(start, limit), self._s)

    def _events_tail(self) -> int:
        with self._s:
            return self._store._events_tail()

    def _warnings(self) -> list[str]:
        with self._s:
            return self._store._warnings()
