"""One prefix spread over S shards: ``redis+cluster://...?prefix=P&shards=S``.

``ShardedRedisBroker`` is a broker made of S complete Redis brokers (``RedisBroker``), each
on a hash tag of its own (``{P~i}``, chosen so the shards' slots fall on the masters in
turn, ``_shards.choose_tags``), and a *home* on the prefix's own tag ``{P}`` that keeps the layout
(``{P}:shards``: S and the tags, written once, checked by every broker that opens the
prefix), the workers' heartbeats, the events of ``publish`` and the key-value store. Every
atomic step stays one script on one shard: a job and everything it touches live on its
shard.

* Ids carry their shard: ``new_job_id`` mints ``<id>.s<i>``; ``shard_of`` reads that suffix
  back, and routes any other id (a user's ``job_id=``, a periodic job's) by a stable hash.
* Placement (``new_job_id``): a job with a unique key goes to the key's shard (a hash of the
  key), so uniqueness holds; a job with dependencies to theirs (dependencies on several
  shards are refused); any other to the producer thread's *current shard*, re-picked after
  each enqueue call as the less loaded of two random shards, the load being the stream
  length the enqueue script answers (enqueue.lua), not an extra call. Ids minted between
  two enqueue calls of a thread share a shard, so a batch (``enqueue_many``, a workflow)
  lands on one shard, whole or not at all; a batch that still spans shards is written per
  shard, each part atomic (a retry is safe: enqueue is idempotent on the id).
* The hot path routes by id; a batch is split per shard, the results put back in order.
* ``fetch`` looks at every shard, from a rotating first one, until ``count`` is filled;
  sleeping, it blocks on every shard at once, each with a blocking ``XREAD`` on a
  connection of its own in a thread that persists across fetches (``_shardfetch.Blocker``), and
  claims on the shards that woke.
* Admin operations fan out and merge; event cursors name a place in every log
  (``c_home.c_0...c_S-1``).
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from ..._clock import Clock
from ..._errors import ConfigurationError, ValidationError
from ..._message import (
    Delivery,
    Envelope,
    JobEntry,
    JobRecord,
    JobStatus,
    QueueStats,
    WorkerInfo,
)
from ...stores._port import KeyValue
from .._admin import Events
from .._base import EVENTS_KEPT, AsyncWatch, Watch, check_read, unknown_dependency
from .._port import Broker, Finish, LeaseState
from ._core import to_ms
from ._errors import TRANSLATE
from ._shardfetch import Blocker, Fetching
from ._shards import (
    MAX_SHARDS,
    Layout,
    choose_tags,
    join_cursor,
    key_shard,
    masters_of,
    mint,
    pick,
    round_robin,
    shard_of,
    split_cursor,
)
from .broker import RedisBroker

T = TypeVar("T")
_LOAD_FRESH = 1.0  # seconds a shard's learnt load counts; older, it is taken as unknown (0)
_EVENT_SLICE = 1.0  # seconds a blocking read of the event logs waits at a time


# -- the broker ------------------------------------------------------------------------------------


class ShardedRedisBroker(Broker):
    """``redis+cluster://...?prefix=P&shards=S`` (or ``redis://...?shards=S``, one server:
    no more throughput, the same behaviour): one logical queue over S shards. See the module
    docstring and docs/cluster.md."""

    _errors = TRANSLATE

    def __init__(
        self,
        url: str,
        *,
        shards: int,
        prefix: str | None = None,
        clock: Clock | None = None,
        events_kept: int = EVENTS_KEPT,
        create: bool = True,
    ) -> None:
        super().__init__(url, clock=clock, events_kept=events_kept)
        self._create = create  # False: a tool that only looks writes no layout
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise ConfigurationError(
                f"bad shards {shards!r}: spread a prefix over 1 to {MAX_SHARDS} shards (a "
                "worker's look calls every shard; more shards than masters buy nothing), see "
                "docs/cluster.md"
            )
        self.shards = shards
        self._home = RedisBroker(url, prefix=prefix, clock=clock, events_kept=events_kept)
        self._home._layout_checked = True
        self.prefix = self._home.prefix
        self._subs: list[RedisBroker] | None = None
        self._unwritten = False  # _subs are those of a layout not written (create=False)
        self._open_lock = threading.Lock()
        self._local = threading.local()  # this thread's current shard
        self._loads: list[tuple[int, float]] = [(0, 0.0)] * shards  # (length, when learnt)
        self._turn = itertools.count()
        self._failing: set[int] = set()  # shards whose last fetch call failed (_shardfetch)
        self._waiting: dict[
            tuple[str, tuple[str, ...]], tuple[list[Blocker], threading.Condition]
        ] = {}
        self._waiting_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, url: str, shards: int, **kwargs: Any) -> ShardedRedisBroker:
        return cls(url, shards=shards, **kwargs)

    @property
    def kv(self) -> KeyValue:
        return self._home.kv

    # -- the layout ------------------------------------------------------------------------

    def _parts(self, write: bool = False) -> list[RedisBroker]:
        """The shards' brokers, made at first use once the layout is read (or written).
        A broker opened with ``create=False`` that found no layout reads it again at each
        call until there is one (a producer's ``?shards=`` may differ from its own);
        ``write``: a call that writes shard state (pause, resume) writes the layout first,
        as a producer does."""
        found = self._subs
        if found is not None and not self._unwritten:
            return found
        with self._open_lock:
            if self._subs is None or self._unwritten:
                layout, self._unwritten = self._layout(self._create or write)
                kept = self._subs
                if kept is not None and [s._keys.tag for s in kept] == [
                    "{" + t + "}" for t in layout.tags
                ]:
                    return kept
                for sub in kept or ():  # another broker wrote other tags meanwhile
                    sub.close()
                self._subs = [
                    RedisBroker(
                        self.url,
                        prefix=self.prefix,
                        clock=self._clock,
                        events_kept=self.events_kept,
                        tag=tag,
                        share=self._home,
                    )
                    for tag in layout.tags
                ]
                for sub in self._subs:
                    sub._layout_checked = True
            return self._subs

    def _layout(self, create: bool) -> tuple[Layout, bool]:
        """The prefix's layout, read, else written (``create``) or only made: then True."""
        home = self._home
        key = home._keys.shards
        raw = home._client.get(key)
        if raw is None:
            if home._client.exists(home._keys.queues, home._keys.events_counter):
                raise ConfigurationError(
                    f"the key prefix {self.prefix!r} holds the jobs of an unsharded queue (it "
                    f"was used without ?shards=): open it without ?shards=, or shard a new "
                    f"prefix (?prefix=NEW&shards={self.shards}) and move producers to it, "
                    "then workers once the old one is drained, see docs/cluster.md"
                )
            masters = []
            if home._owner is not None:  # a cluster: the shards' slots go round its masters
                slots = home._client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                masters = masters_of(slots)
            tags = choose_tags(self.prefix, self.shards, masters)
            if not create:  # the shards it would make: empty, and nothing written
                return Layout(self.shards, tags), True
            # With ?wait=N, as an enqueue: a master that fails before a replica has the
            # layout leaves the prefix without one, free to be fixed at another S.
            pipe = home._client.pipeline(transaction=False)
            pipe.set(key, msgspec.json.encode(Layout(self.shards, tags)), nx=True)
            pipe.get(key)
            for command in home._durable:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            replies = pipe.execute()
            if home._durable:
                replies = home._replicated(
                    replies,
                    f"the layout of the sharded prefix {self.prefix!r}",
                    "a later call uses it as written",
                )
            raw = replies[1]
        layout = msgspec.json.decode(raw or b"{}", type=Layout)
        if layout.shards != self.shards:
            raise ConfigurationError(
                f"the key prefix {self.prefix!r} is sharded over {layout.shards} shards (it "
                f"was first used with ?shards={layout.shards}), not {self.shards}: open it "
                f"with ?shards={layout.shards}; the number of shards of a prefix is fixed, "
                "see docs/cluster.md"
            )
        return layout, False

    # -- placement -------------------------------------------------------------------------

    def shard_of(self, job_id: str) -> int:
        return shard_of(job_id, self.shards)

    def new_job_id(
        self, key: str | None = None, depends_on: Sequence[str] = (), fixed: str | None = None
    ) -> str:
        if fixed is not None:  # a shard suffix where its key or dependencies need one
            wanted = self.shard_of(self.new_job_id(key, depends_on)) if key or depends_on else None
            return fixed if wanted in (None, self.shard_of(fixed)) else f"{fixed}.s{wanted}"
        if depends_on:
            found = {self.shard_of(d) for d in depends_on}
            if len(found) > 1:
                raise ValidationError(
                    f"the dependencies {list(depends_on)!r} are on {len(found)} shards of the "
                    f"sharded prefix {self.prefix!r}, and a job waits only for jobs of its own "
                    "shard: enqueue jobs that one job depends on together (in one "
                    "enqueue_many call, or as one workflow), so they share a shard, see "
                    "docs/cluster.md; nothing was enqueued"
                )
            shard = found.pop()
            if key is not None and key_shard(key, self.shards) != shard:
                raise ValidationError(
                    f"the unique key {key!r} is on shard {key_shard(key, self.shards)} of the "
                    f"sharded prefix {self.prefix!r} and the dependencies on shard {shard}: a "
                    "job with both must have them on one shard; leave key= or depends_on= "
                    "out, see docs/cluster.md; nothing was enqueued"
                )
            self._local.current = shard  # what follows in the batch joins them
            return mint(shard)
        if key is not None:
            return mint(key_shard(key, self.shards))
        return mint(self._current())

    def _current(self) -> int:
        found: int | None = getattr(self._local, "current", None)
        if found is None:
            found = self._local.current = self._pick()
        return found

    def _pick(self) -> int:
        now = time.monotonic()
        return pick([n if now - at < _LOAD_FRESH else 0 for n, at in self._loads])

    def _learnt(self, shard: int, length: int) -> None:
        if length >= 0:
            self._loads[shard] = (length, time.monotonic())

    def _placed(self, env: Envelope) -> int:
        """The envelope's shard, checked against its key and dependencies."""
        shard = self.shard_of(env.id)
        wrong = None
        if env.key is not None and key_shard(env.key, self.shards) != shard:
            wrong = f"its unique key {env.key!r} is on shard {key_shard(env.key, self.shards)}"
        elif env.depends_on and (deps := {self.shard_of(d) for d in env.depends_on}) != {shard}:
            wrong = f"its dependencies are on shard(s) {sorted(deps)}"
        if wrong is None:
            return shard
        raise ValidationError(
            f"job id {env.id!r} is on shard {shard} of the sharded prefix {self.prefix!r}, but "
            f"{wrong}: leave job_id= out (the id is then made on the right shard), or end it "
            f"with the shard it must be on (.s<shard>), see docs/cluster.md; nothing was "
            "enqueued"
        )

    def _split(self, ids: Sequence[str]) -> dict[int, list[int]]:
        """Positions of ``ids`` per shard, in order."""
        groups: dict[int, list[int]] = {}
        for at, job_id in enumerate(ids):
            groups.setdefault(self.shard_of(job_id), []).append(at)
        return groups

    def _routed(
        self,
        items: Sequence[T],
        id_of: Callable[[T], str],
        run: Callable[[RedisBroker, list[T]], list[Any]],
    ) -> list[Any]:
        """``run`` on each shard with its items, the answers put back in the items' order.
        A shard that fails does not stop the others: every shard runs, then the first
        failure is raised (a renew or finish of a batch then still reaches the shards that
        answer, so a shard being migrated or failing over does not let the leases of the
        others lapse; the caller's retry repeats what took effect, which changes nothing)."""
        subs = self._parts()
        out: list[Any] = [None] * len(items)
        failed: Exception | None = None
        for shard, places in self._split([id_of(i) for i in items]).items():
            try:
                answers = run(subs[shard], [items[p] for p in places])
            except Exception as e:
                failed = failed or e
                continue
            for at, answer in zip(places, answers, strict=True):
                out[at] = answer
        if failed is not None:
            raise failed
        return out

    def _rotation(self) -> list[int]:
        start = next(self._turn) % self.shards
        return [*range(start, self.shards), *range(start)]

    def _by_id(self, job_id: str) -> RedisBroker:
        return self._parts()[self.shard_of(job_id)]

    # -- producing -------------------------------------------------------------------------

    def _enqueue_parts(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[tuple[int, list[int], list[Envelope], list[bytes]]]:
        """A batch per shard, each checked (``_placed``). A batch over several shards is
        written a part at a time, each atomic: the parts with dependencies first, so that
        an unknown one refuses the batch before anything is written; when more than one
        part has dependencies, those outside the batch are looked up first (a dependency
        that ends and expires between that look and the write is the one case where part
        of such a batch is written)."""
        places: dict[int, list[int]] = {}
        for at, env in enumerate(envelopes):
            places.setdefault(self._placed(env), []).append(at)
        parts = [
            (shard, at, [envelopes[p] for p in at], [events[p] for p in at] if events else [])
            for shard, at in places.items()
        ]
        parts.sort(key=lambda part: not any(env.depends_on for env in part[2]))
        if sum(any(env.depends_on for env in part[2]) for part in parts) > 1:
            self._known(envelopes)
        return parts

    def _known(self, envelopes: Sequence[Envelope]) -> None:
        """Raise ``DependencyNotFound`` for the first dependency that names no live job and
        no earlier job of the batch."""
        earlier: set[str] = set()
        for env in envelopes:
            outside = [d for d in env.depends_on if d not in earlier]
            for dep, record in zip(outside, self._get(outside), strict=True):
                if record is None:
                    raise unknown_dependency(env.id, dep)
            earlier.add(env.id)

    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        parts = self._enqueue_parts(envelopes, events)
        subs = self._parts()
        out = [""] * len(envelopes)
        try:
            for shard, at, envs, evs in parts:
                ids, length = subs[shard]._enqueue_load(envs, evs)
                self._learnt(shard, length)
                for p, i in zip(at, ids, strict=True):
                    out[p] = i
        finally:
            self._local.current = self._pick()
        return out

    async def _enqueue_async(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        parts = self._enqueue_parts(envelopes, events)
        subs = self._parts()
        out = [""] * len(envelopes)
        try:
            for shard, at, envs, evs in parts:
                ids, length = await subs[shard]._enqueue_load_async(envs, evs)
                self._learnt(shard, length)
                for p, i in zip(at, ids, strict=True):
                    out[p] = i
        finally:
            self._local.current = self._pick()
        return out

    # -- consuming -------------------------------------------------------------------------

    def _fetch(self, queues: list[str], consumer: str, count: int, lease: float) -> Fetching:
        return Fetching(self, queues, consumer, count, lease)

    def _blockers(
        self, consumer: str, queues: list[str]
    ) -> tuple[list[Blocker], threading.Condition]:
        """The consumer's blockers on these queues, kept across fetches (one that ended,
        idle or in a forked child, is made again): on a cluster one per shard, on one
        server one for them all (one connection of the shared pool, not S: no CROSSSLOT
        there)."""
        subs = self._parts()
        if self._home._owner is None:
            groups = [list(range(len(subs)))]
        else:
            groups = [[i] for i in range(len(subs))]
        with self._waiting_lock:
            found = self._waiting.get((consumer, tuple(queues)))
            if found is None:
                found = ([], threading.Condition())
                self._waiting[(consumer, tuple(queues))] = found
            blockers, cond = found
            for at, group in enumerate(groups):
                if at == len(blockers) or not blockers[at].alive():
                    name = f"conveyor-shard-{group[0]}-{consumer}"
                    made = Blocker(subs[group[0]], group, cond, name)
                    if at == len(blockers):
                        blockers.append(made)
                    else:
                        blockers[at] = made
            return found

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        return self._routed(deliveries, _id, lambda b, ds: b._renew(ds, lease))

    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]:
        # The call's own events ride with the first shard's outcomes.
        own = list(events)

        def run(b: RedisBroker, part: list[Finish]) -> list[bool]:
            carried, own[:] = own[:], []
            return b._finish(part, carried)

        return self._routed(outcomes, lambda f: f.delivery.id, run)

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self._routed(deliveries, _id, lambda b, ds: b._release(ds))

    def _promote(self, job_id: str, payload: bytes) -> bool:
        return self._by_id(job_id)._promote(job_id, payload)

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        return self._by_id(delivery.id)._progress(delivery, value, note)

    # -- job records -----------------------------------------------------------------------

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        return self._routed(job_ids, str, lambda b, ids: b._get(ids))

    def _wait(self, job_id: str) -> Watch[JobRecord | None]:
        return self._by_id(job_id)._wait(job_id)

    def _wait_async(self, job_id: str) -> AsyncWatch[JobRecord | None] | None:
        return self._by_id(job_id)._wait_async(job_id)

    def _payload(self, job_id: str) -> bytes | None:
        return self._by_id(job_id)._payload(job_id)

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        return self._by_id(job_id)._cancel(job_id, event)

    # -- workers and events ----------------------------------------------------------------

    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        subs = self._parts()  # the layout is written before anything else of the prefix
        self._home._heartbeat(info, ttl)
        for sub in subs:  # each shard's master may lose its data on its own
            sub._look_at_epoch()

    def _forget_worker(self, worker_id: str) -> None:
        self._home._forget_worker(worker_id)
        for sub in self._parts():  # its consumer names in the shards' groups
            sub._forget_worker(worker_id)

    def _publish(self, events: Sequence[bytes]) -> None:
        self._parts()  # the layout is written before anything else of the prefix
        self._home._publish(events)

    def _logs(self) -> list[RedisBroker]:
        return [self._home, *self._parts()]

    def read_events(self, after: str | None, block: float, limit: int) -> Events:
        """As ``Broker.read_events``, over the home's log and every shard's: a cursor names
        a place in each (``c_home.c_0...``); a page takes one event of each log in turn,
        each log's order kept; a blocking read waits on every log at once."""
        check_read(block, limit)
        deadline = time.monotonic() + block
        with self._errors:
            logs = self._logs()  # the layout read at first use: inside the error boundary
            starts = split_cursor(after, len(logs))
            found = self._events_page(logs, starts, limit)
            while not found and (left := deadline - time.monotonic()) > 0:
                self._events_wait(logs, starts, min(left, _EVENT_SLICE))
                found = self._events_page(logs, starts, limit)
            return found

    def _events_page(self, logs: list[RedisBroker], starts: list[int], limit: int) -> Events:
        pages = [
            log._read_page(start, limit, None) for log, start in zip(logs, starts, strict=True)
        ]
        places = list(starts)
        out: Events = []
        for i, (cursor, event) in itertools.islice(round_robin(pages), limit):
            places[i] = int(cursor)
            out.append((join_cursor(places), event))
        return out

    def _events_wait(self, logs: list[RedisBroker], starts: list[int], seconds: float) -> None:
        """Block until any log has an event after its start, or ``seconds`` pass: a read
        per log in threads (a read still blocked when another returned runs out by itself
        within ``seconds``)."""
        with self._open_lock:
            pool = self._pool
            if pool is None:  # first use, or after close (which a broker outlives, reopening)
                pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                    4 * len(logs), thread_name_prefix="conveyor-events"
                )
        wait = max(1, to_ms(seconds))
        reads = [
            pool.submit(log._read_page, start, 1, wait)
            for log, start in zip(logs, starts, strict=True)
        ]
        concurrent.futures.wait(reads, timeout=seconds + 1, return_when="FIRST_COMPLETED")

    def events_tail(self) -> str:
        with self._errors:
            return join_cursor([log._events_tail() for log in self._logs()])

    def _read_events(self, start: int, limit: int) -> Watch[Events]:  # pragma: no cover
        raise AssertionError("read_events is the sharded broker's own")

    def _events_tail(self) -> int:  # pragma: no cover
        raise AssertionError("events_tail is the sharded broker's own")

    def _events_kept_changed(self) -> None:
        for log in (self._home, *(self._subs or ())):
            log.events_kept = self.events_kept

    # -- operations ------------------------------------------------------------------------

    def _stats(self) -> list[QueueStats]:
        merged: dict[str, QueueStats] = {}
        for sub in self._parts():
            for s in sub._stats():
                found = merged.setdefault(s.queue, QueueStats(s.queue))
                for name in ("queued", "scheduled", "running", "failed", "dead", "succeeded",
                             "cancelled"):  # fmt: skip
                    setattr(found, name, getattr(found, name) + getattr(s, name))
                found.paused = found.paused or s.paused
        return list(merged.values())

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        """Each shard's first ``offset + limit`` in its order, merged: queued and scheduled
        jobs one shard after the other in turn (the order fetch roughly hands them out);
        the others newest first by ``at`` (ties: highest id first), as on one shard."""
        pages = [sub._entries(status, queue, offset + limit, 0) for sub in self._parts()]
        if status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
            merged: Iterator[JobEntry] = (e for _, e in round_robin(pages))
        else:
            merged = heapq.merge(*pages, key=lambda e: (e.at, e.id), reverse=True)
        return list(itertools.islice(merged, offset, offset + limit))

    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
        return self._routed(items, lambda i: i[0], lambda b, part: b._requeue(part))

    def _pause(self, queue: str) -> None:
        for sub in self._parts(write=True):
            sub._pause(queue)

    def _resume(self, queue: str) -> None:
        subs = self._parts(write=True)
        for sub in subs:  # first unpaused everywhere, so a fetch a signal wakes finds it so
            sub._client.srem(sub._keys.paused, queue)
        for sub in subs:
            sub._resume(queue)

    def _purge(self, queue: str) -> int:
        return sum(sub._purge(queue) for sub in self._parts())

    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        return self._routed(job_ids, str, lambda b, ids: b._delete(ids))

    def _workers(self) -> list[WorkerInfo]:
        return self._home._workers()

    def _warnings(self) -> list[str]:
        found = self._home._warnings()
        if self._home._owner is not None:  # a cluster: each shard's master too
            for sub in self._parts():
                found += [w for w in sub._warnings() if w not in found]
        return found

    async def _aclose(self) -> None:
        for sub in (*(self._subs or ()), self._home):  # each shard's client of this loop
            await sub._aclose()

    def _close(self) -> None:
        with self._waiting_lock:
            for blockers, _ in self._waiting.values():
                for b in blockers:
                    b.close()
            self._waiting.clear()
        with self._open_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for sub in self._subs or ():
            sub.close()
        self._home.close()


def _id(d: Delivery) -> str:
    return d.id
