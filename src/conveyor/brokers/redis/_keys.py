"""Every Redis key Conveyor uses, built here and nowhere else. This docstring is the schema.

``P`` is the prefix (``conveyor`` by default); ``{P}`` is a Redis Cluster hash tag, so every
broker key lives in ONE slot. ``<q>`` is a validated queue name, ``<id>`` a validated job id,
``<p>`` a priority 0..9, ``<w>`` a worker id.

Broker keys (all under the ``{P}`` tag)::

    {P}:queues              SET     names of every queue ever written to (stats, requeue --all)
    {P}:keys                HASH    unique key (Envelope.key) -> id of the pending job holding it
    {P}:paused              SET     names of the paused queues (pause): fetch reads it once per
                                    call (SISMEMBER, or SMISMEMBER for several queues) and
                                    hands out none of their jobs
    {P}:resumed             STREAM  look-again signal, entries ``queue <q>``, capped at one
                                    (only its last id matters; no group, so nothing is ever
                                    pending in it): a fetch with nothing to hand out blocks on
                                    it too, from the last id the script saw, so a resume, or
                                    a job scheduled to come due within a second
                                    (common.lua due_soon), wakes it at once
    {P}:job:<id>            HASH    the job: status token deliveries payload queue priority sid
                                    consumer cancel key result reason progress note
                                    eta updated_at expires_at (times in ms, see "Times" below);
                                    payload: absent while the job's stream entry carries it
                                    (a job due at enqueue: the hash stays a few short fields,
                                    which Redis stores compactly); written here when the job
                                    is scheduled, retried or promoted, and moved here from the
                                    entry when the entry goes and the job lives on (handed
                                    back, reclaimed) or ends other than succeeded;
                                    deps '1' once a job waits for this one (depends_on);
                                    after: the ids it waits for, joined by ',' (purge and
                                    cancel take it out of their {P}:deps sets);
                                    waiting: how many of its own dependencies have not ended
                                    (status scheduled, eta 'waiting', scored +inf: promote
                                    and the eta sweep leave it; its last dependency ending
                                    queues it);
                                    waited '1' once somebody waits for the job (watch.lua);
                                    token consumer cancel are the lease's: read only while
                                    status is running, so a job that is not keeps its last
                                    ones, and an ended job its last sid (its entry is gone;
                                    readers take its payload from the hash only): no script
                                    writes a field nobody reads, each one costs the server
                                    time; the lease's expiry is the job's score in the
                                    running index;
                                    a field not written yet reads as empty (enqueue leaves
                                    out token cancel expires_at result reason, and sid and
                                    eta as they do not apply; for a job due at once also
                                    deliveries, read as 0, and key when there is none)
    {P}:deps:<id>           SET     ids of jobs waiting for job <id> (depends_on), written by
                                    their enqueue; the step that makes <id> terminal (finish,
                                    cancel, purge, a cancelled job released or reclaimed)
                                    counts each one down and deletes the set
    {P}:done:<id>           LIST    completion signal: one element pushed when the job ends,
                                    if somebody waits for it (job field waited, set by a
                                    waiter's first read in the same step: watch.lua);
                                    waiters BLMOVE it onto itself (non-destructive, wakes all);
                                    an event loop's waiters BLPOP all theirs at once and
                                    push a popped one back at once (``_async._DoneLists``)
    {P}:wake:<random>       LIST    an event loop's wake-up for that BLPOP (a new list to
                                    wait on), popped by it; expires after 60 s if not
    {P}:q:<q>:s<p>          STREAM  ready jobs of priority <p>: entries ``job <id> payload <p>``
                                    (enqueue) or ``job <id>`` (the payload is in the hash);
                                    consumer group ``conveyor``; pending entries = leased jobs;
                                    entries after the group's last delivered id = queued jobs
                                    (every script that acks an entry deletes it, so nothing
                                    else is there: queued = XLEN - pending; queued.lua)
    {P}:q:<q>:scheduled     ZSET    id -> eta: delayed jobs and retries waiting for their time
    {P}:q:<q>:running       ZSET    id -> lease expiry: leased jobs (reclaimed once expired)
    {P}:q:<q>:succeeded     ZSET    id -> record expiry (also failed, dead, cancelled): finished
    {P}:q:<q>:sweep         STRING  marker (real-time PX) rate-limiting the XAUTOCLAIM sweep
    {P}:q:<q>:reap          STRING  marker (real-time PX) rate-limiting the removal of idle
                                    consumers (nothing pending) from the queue's groups
    {P}:events              STREAM  the event log (docs/observability.md): entries ``e <body>``,
                                    the events of one script call (up to 64 per entry)
                                    framed ``<length>:<bytes>``; an entry's id is the number
                                    of its last event (``<n>-0``), so the XADD of every
                                    16th event trims with ``MINID`` to the newest
                                    ``events_kept`` by count; no
                                    consumer group, no job: readers XREAD from their own
                                    cursor (an event's number) and take nothing out
    {P}:events:n            STRING  how many events were ever appended (INCRBY by the
                                    scripts that publish): numbers them
    {P}:workers             ZSET    worker id -> announcement expiry
    {P}:worker:<w>          STRING  the worker's WorkerInfo (JSON)
    {P}:epoch               STRING  a random token, written by the first heartbeat that
                                    finds none, never expiring: a broker that saw another
                                    one (or none) knows Redis lost its data in between
                                    (restart without persistence, a flushed database,
                                    eviction); see _health.py
    {P}:oom                 (none)  never written: a script that must run on a full Redis
                                    deletes it first (common.lua ``allow_oom``)
    {P}:moving              (none)  never written, never read: on a cluster, declared last in
                                    the KEYS of the scripts that touch keys they compute, so
                                    that while the slot is being migrated Redis refuses the
                                    call before it runs (a missing key: ASK or TRYAGAIN) rather
                                    than the script failing half-way on a moved job hash
                                    (``_cluster.py``)
    {P}:shards              STRING  a sharded prefix's layout (``?shards=S``, ``_sharded.py``):
                                    JSON ``{"shards": S, "tags": [...]}``, written once (SET
                                    NX) by its first use, read by every broker that opens the
                                    prefix: a plain one refuses a sharded prefix, a sharded
                                    one another S. Shard ``i`` keeps every key above but the
                                    workers', epoch's and the store's under the tag
                                    ``{<tags[i]>}`` (``P~i``, or ``P~i.n`` where the n-th
                                    name was the first whose slot the wanted master serves);
                                    ``{P}`` itself keeps workers, events of ``publish``, the
                                    layout

Key-value store keys (``store.py``): one tag per key, so they spread over a
cluster. Values and locks live in separate namespaces (the ``kv`` and ``lock`` segments right
after the prefix, inside the tag), so no store key, whatever its characters, can name a lock
or a fencing counter; a lock and its fencing counter share their tag::

    {P:kv:<key>}            HASH    v = value, x = expiry (ms)
    {P:lock:<name>}         HASH    the lock: v = owner token, x = expiry (ms)
    {P:lock:<name>}:fence   STRING  fencing counter, INCRed in the same script as the grant

A store key ``lock:x`` is ``{P:kv:lock:x}``: a value like any other, unrelated to lock ``x``.
The prefix has no ``:`` (it is validated like a queue name), so ``{P:kv:`` and ``{P:lock:``
can come from one prefix only.

Why one tag for the broker and not one per queue: a job is addressed by its id alone
(``app.job(id)`` does not know the queue), a unique key is unique across queues, a worker on
several queues takes the highest priority across all of them, and finish must ack the stream
entry, store the result and signal waiters in one atomic step. All four need the job hash and
the queue keys in one slot, and only a queue-independent tag gives that without a second,
non-atomic locator write. The price: on Redis Cluster a Conveyor prefix lives on one shard
(correct, atomic, but not spread); run hot queues under their own prefix to spread them
(docs/cluster.md).

Times stored in hashes and sorted sets are milliseconds since the epoch. With the real
clock (``SystemClock``) they are the Redis server's ``TIME``, read inside each script (ARGV
``now`` is ''), so clients whose clocks disagree still agree on leases, etas and expiry; with
an injected fake clock (tests) the client passes its ``now``. Real Redis TTLs (``PEXPIRE``)
are set a little longer than the logical expiry, as garbage collection only.

Scripts compute job keys inside Lua from the ``{P}:job:`` prefix passed as an argument (the
ids come out of stream entries, so they cannot be declared up front); the shared tag keeps
them in the slot of the declared keys. Likewise ``{P}:deps:<id>`` and, when a job's end
makes a dependent due, the dependent's queue keys (``{P}:q:<q>:...``, ``common.lua``
``release_dependent``): a dependent may sit in a queue the finishing script never named.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..._message import MAX_PRIORITY, MIN_PRIORITY

GROUP = "conveyor"
PRIORITIES = range(MIN_PRIORITY, MAX_PRIORITY + 1)
# Order of a queue's keys in a script's KEYS; the Lua side (common.lua ``qkeys``) mirrors it.
QUEUE_KEY_SUFFIXES = (
    *(f"s{p}" for p in PRIORITIES),
    "scheduled",
    "running",
    "succeeded",
    "failed",
    "dead",
    "cancelled",
    "sweep",
    "reap",
)
TERMINAL_INDEXES = ("succeeded", "failed", "dead", "cancelled")


class Keys:
    """Builds broker keys for one prefix. Names are validated before they get here."""

    def __init__(self, prefix: str, tag: str | None = None) -> None:
        self.prefix = prefix
        # A shard of a sharded prefix has a tag of its own (``_sharded``), else the prefix.
        self.tag = "{" + (tag or prefix) + "}"
        self._queue_keys: dict[str, tuple[str, ...]] = {}

    @property
    def queues(self) -> str:
        return f"{self.tag}:queues"

    @property
    def unique(self) -> str:
        return f"{self.tag}:keys"

    @property
    def paused(self) -> str:
        return f"{self.tag}:paused"

    @property
    def resumed(self) -> str:
        return f"{self.tag}:resumed"

    @property
    def moving(self) -> str:
        return f"{self.tag}:moving"

    @property
    def job_prefix(self) -> str:
        return f"{self.tag}:job:"

    @property
    def done_prefix(self) -> str:
        return f"{self.tag}:done:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def done(self, job_id: str) -> str:
        return self.done_prefix + job_id

    def queue(self, queue: str, suffix: str) -> str:
        return f"{self.tag}:q:{queue}:{suffix}"

    def stream(self, queue: str, priority: int) -> str:
        return self.queue(queue, f"s{priority}")

    def streams(self, queue: str) -> list[str]:
        return [self.stream(queue, p) for p in PRIORITIES]

    def queue_keys(self, queue: str) -> tuple[str, ...]:
        """A queue's keys in the fixed order scripts expect (built once per queue: every
        enqueue and fetch declares them)."""
        found = self._queue_keys.get(queue)
        if found is None:
            found = tuple(self.queue(queue, s) for s in QUEUE_KEY_SUFFIXES)
            self._queue_keys[queue] = found
        return found

    def job_keys(self, job_id: str, queues: Sequence[str]) -> list[str]:
        """The common KEYS head of per-job scripts, then each queue's keys."""
        keys = [self.job(job_id), self.done(job_id), self.unique, self.queues]
        for q in queues:
            keys += self.queue_keys(q)
        return keys

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def events_counter(self) -> str:
        return f"{self.tag}:events:n"

    @property
    def workers(self) -> str:
        return f"{self.tag}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.tag}:worker:{worker_id}"

    @property
    def epoch(self) -> str:
        return f"{self.tag}:epoch"

    @property
    def shards(self) -> str:
        return f"{self.tag}:shards"


def kv_key(prefix: str, key: str) -> str:
    return "{" + f"{prefix}:kv:{key}" + "}"


def lock_key(prefix: str, name: str) -> str:
    # Its own segment: kv_key always starts "{P:kv:", so no store key can produce this.
    return "{" + f"{prefix}:lock:{name}" + "}"


def fence_key(prefix: str, name: str) -> str:
    # Shares the lock's tag (everything up to the first "}"), so one script can touch both.
    return lock_key(prefix, name) + ":fence"
