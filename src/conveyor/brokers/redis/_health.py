"""What the Redis broker tells about the server under it: settings that lose jobs, a full
server, and a server that lost its data while workers ran. Workers announce themselves here.

* ``warnings()``: a replica (it refuses every write: the URL should name the master), an
  evicting ``maxmemory-policy`` (Redis drops keys when full, jobs among them, without a
  word), a server that is full now, a policy it cannot read. The role and the policy are
  read from ``INFO``, never ``CONFIG GET``: managed services rename or refuse ``CONFIG``,
  the least-privilege user may not run it, and INFO has the same values.
* Lost data: ``{P}:epoch`` holds a random token, written by the first heartbeat that finds
  none (``heartbeat.lua``), never expiring. Each broker remembers the token it last saw; a
  different one means Redis lost everything in between (a restart without persistence, a
  flush of the database), and the broker says so once, at ERROR, with how many jobs its
  worker's queues held at the look before. It looks at every heartbeat (one script call,
  a few seconds apart) and after a refused renewal or outcome (what a loss causes first),
  never on the hot path. New jobs go on as usual: enqueue makes streams and consumer
  groups afresh.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from typing import Any

import msgspec
import redis

from ..._message import WorkerInfo
from .._url import redact_url
from ._core import RedisCore, text, to_ms
from ._errors import refusal, replica

log = logging.getLogger("conveyor.redis")

_GC_GRACE = 60  # seconds a worker's record outlives its announcement (garbage collection)
_RECHECK_EVERY = 1.0  # seconds between looks at the epoch after refusals
_KEEPS = "noeviction"
_DOCS = "docs/redis.md"


class _Look:
    """What the broker last saw of the epoch marker, and the jobs its heartbeat counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch: str | None = None
        self.run_id: str | None = None  # the server's at the first look (None: unreadable)
        self.at = 0.0  # monotonic time of the last look
        self.jobs: int | None = None  # in the heartbeat's queues, at counted_at
        self.queues: list[str] = []
        self.counted_at = 0.0
        self.rechecked_at = -math.inf


class HealthMixin(RedisCore):
    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._look = _Look()

    # -- settings --------------------------------------------------------------------------

    def _warnings(self) -> list[str]:
        """One line per setting of the server that loses jobs or refuses them, saying what
        to do; raises ``BrokerError`` when Redis cannot be reached."""
        found = self._replica()
        memory = self._info("memory")
        policy = text(memory.get("maxmemory_policy") or "")
        if not policy:
            why = memory.get("refused", "it names no maxmemory_policy")
            return [
                *found,
                f"cannot read Redis's maxmemory-policy (INFO memory: {why}); make sure it is "
                f"{_KEEPS}, and grant the broker's user +info so it is checked, see {_DOCS}",
            ]
        limit = int(memory.get("maxmemory") or 0)
        if policy != _KEEPS:
            found.append(_evicting(policy, text(memory.get("maxmemory_human") or "?"), limit))
        used = int(memory.get("used_memory") or 0) - int(
            memory.get("mem_not_counted_for_evict") or 0
        )
        if policy == _KEEPS and 0 < limit <= used:
            found.append(
                f"Redis is full ({memory.get('used_memory_human')} used, maxmemory "
                f"{memory.get('maxmemory_human')}): it refuses new jobs (enqueue raises "
                "BrokerError) until workers finish enough of those it holds; give it more "
                f"memory or keep results for less time (result_ttl=), see {_DOCS}"
            )
        return found

    def _info(self, section: str) -> dict[str, Any]:
        """A section of INFO; ``{"refused": why}`` for an ACL user without +info."""
        try:
            return dict(self._client.info(section))
        except redis.RedisError as exc:  # Redis's words say which permission is missing
            if refusal(exc) is None:
                raise
            return {"refused": str(exc)}

    def _replica(self) -> list[str]:
        """A line when the server is a replica: every enqueue and fetch would be refused
        (a writable one takes them, and loses them at its next sync with its master)."""
        replication = self._info("replication")
        if text(replication.get("role") or "") != "slave":  # Redis's word, even in 7
            return []
        master = f"{text(replication.get('master_host') or '?')}:{replication.get('master_port')}"
        if str(replication.get("slave_read_only", 1)) != "0":
            return [replica(master)]
        return [
            f"this Redis is a writable replica of {master} (replica-read-only no): what it "
            "is given is lost when it next syncs with its master; point the URL at the "
            f"master, or use redis+sentinel://, see {_DOCS}"
        ]

    # -- the epoch: did Redis lose its data? -------------------------------------------------

    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        now = self._now()
        info.seen_at = now / 1000
        keys = [self._keys.worker(info.id), self._keys.workers, self._keys.epoch]
        for q in info.queues:
            *streams, scheduled = self._keys.queue_keys(q)[:11]
            keys += [*streams, scheduled]
        head = [now, *self._head()[1:]]  # the time info.seen_at gives, not a second read
        own = [
            info.id,
            msgspec.json.encode(info),
            to_ms(ttl),
            to_ms(int(ttl) + _GC_GRACE),
            secrets.token_hex(8),
        ]
        epoch, jobs = self._eval("heartbeat", keys, [*head, *own])
        self._saw(text(epoch), int(jobs), list(info.queues))

    def _look_at_epoch(self) -> None:
        """A look at the epoch marker, as a heartbeat's (a sharded prefix's shards: the
        heartbeat itself goes to the prefix's home)."""
        epoch = self._eval("epoch", [self._keys.epoch], [*self._head(), secrets.token_hex(8)])
        self._saw(text(epoch), None, [])

    def _recheck(self) -> None:
        """A look at the epoch after a refused renewal or outcome (at most once a second):
        a loss shows there first. Never raises: the caller's own result stands."""
        look = self._look
        with look.lock:
            if look.epoch is None or time.monotonic() - look.rechecked_at < _RECHECK_EVERY:
                return
            look.rechecked_at = time.monotonic()
        try:
            epoch = self._eval("epoch", [self._keys.epoch], [*self._head(), secrets.token_hex(8)])
        except Exception as exc:  # the refusal is reported by the caller; this is extra
            log.debug("cannot read the epoch marker: %s", exc)
            return
        self._saw(text(epoch), None, [])

    def _saw(self, epoch: str, jobs: int | None, queues: list[str]) -> None:
        look = self._look
        now = time.monotonic()
        with look.lock:
            first = look.epoch is None
            lost = not first and epoch != look.epoch
            before = (look.jobs, look.queues, now - look.counted_at)
            look.epoch, look.at = epoch, now
            if jobs is not None:
                look.jobs, look.queues, look.counted_at = jobs, queues, now
        if first or lost:
            run_id, look.run_id = look.run_id, self._run_id()
            if lost:
                self._report_loss(_what_happened(run_id, look.run_id), *before)

    def _run_id(self) -> str | None:
        """The server's run id (a new one at each start), or None where INFO is refused."""
        try:
            return text(self._client.info("server")["run_id"])
        except (redis.RedisError, KeyError):
            return None

    def _report_loss(
        self, what: str, jobs: int | None, queues: list[str], counted_ago: float
    ) -> None:
        held = "the jobs it held are gone"
        if jobs is not None:
            held = (
                f"{jobs} job(s) were queued, scheduled or running in {', '.join(queues)} "
                f"at the last look ({counted_ago:.0f} s before): they are gone, as are other "
                "queues' jobs"
            )
        log.error(
            "the Redis at %s %s: %s, with job records, results, paused queues and consumer "
            "groups; jobs running now will fail to finish (their leases are gone: each is "
            "reported as lost). New jobs run as usual. To keep jobs across a restart, run "
            "Redis with persistence (appendonly yes) and maxmemory-policy noeviction, see %s",
            redact_url(self.url),
            what,
            held,
            _DOCS,
        )


def _what_happened(before: str | None, now: str | None) -> str:
    """A restart (a new run id) or an emptying in place, as far as INFO tells."""
    if before is None or now is None:
        return "lost its data (a restart without persistence, or the database was flushed)"
    if before != now:
        return "restarted empty (without persistence)"
    return "was emptied (the database was flushed, or its keys were deleted or evicted)"


def _evicting(policy: str, limit_text: str, limit: int) -> str:
    if policy.startswith("volatile-"):
        what = (
            "keys with a TTL: finished jobs' records and results before their time, locks "
            "and cached values"
        )
    else:
        what = "any key: queued jobs, running jobs' records, results, locks"
    when = f"maxmemory {limit_text}" if limit else "once a maxmemory is set"
    return (
        f"Redis evicts keys when it is full (maxmemory-policy {policy}, {when}): it drops "
        f"{what}, without a word. Set maxmemory-policy {_KEEPS} (CONFIG SET and redis.conf, "
        f"or your provider's setting): a full Redis then refuses new jobs while workers "
        f"drain it, see {_DOCS}"
    )
