"""The keeper thread: renews every held lease in one call, and announces the worker.

Leases are renewed each third of the lease, and at least once a second (``CANCEL_CHECK``):
a renewal's answer is how the worker hears of a cancel.

It runs apart from the jobs, so a task that hogs its thread, blocks the event loop or
spins in C cannot make its own lease lapse; only a dead or frozen worker process can.
Renewal answers per delivery: ``lost`` (another worker has the job now; whatever we write
will be refused by the fence) or ``cancelled`` (stop the job). A broker whose storage is
gone (``BrokerGone``: the SQLite file was deleted or replaced) is reported to ``gone``, which
stops the worker: a busy worker that fetches nothing still notices within a heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .._errors import BrokerError, BrokerGone
from .._message import WorkerInfo
from ..brokers._port import Broker, LeaseState
from ._attempt import CANCEL, RUNNING, Attempt
from ._inflight import Inflight
from ._joblog import log_job

log = logging.getLogger("conveyor.worker")

HEARTBEAT_EVERY = 5.0
_RETRY_AFTER_ERROR = 1.0
# A renewal is also how a worker hears that a job it holds was cancelled, so leases are
# renewed at least this often (seconds), whatever the lease: with the default 30 s lease a
# renewal each third of it (10 s) let a cancelled job run on, and end succeeded, for up to
# 10 s. One call a second for all held jobs is a small cost to the broker: PostgreSQL and
# SQLite write a lease only once a third of it is gone (the calls between only read).
CANCEL_CHECK = 1.0


class Keeper:
    def __init__(
        self,
        broker: Broker,
        inflight: Inflight,
        lease: float,
        *,
        interrupt: Callable[[Attempt, str], None],
        info: Callable[[], WorkerInfo],
        gone: Callable[[BrokerGone], None] = lambda exc: None,
        heartbeat_every: float = HEARTBEAT_EVERY,
        beat: Callable[[WorkerInfo], None] | None = None,
    ) -> None:
        self._broker = broker
        self._inflight = inflight
        self._lease = lease
        self._interrupt = interrupt
        self._info = info
        self._gone = gone
        self._every = heartbeat_every
        self._beat = beat  # told of each heartbeat sent (the worker's heartbeat event)
        self._stop = threading.Event()
        self._failing = False  # the last renewal failed: its warning was said, once
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="conveyor-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        interval = min(self._lease / 3, CANCEL_CHECK)
        next_renew = time.monotonic() + interval
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + (self._every if self.heartbeat() else _RETRY_AFTER_ERROR)
            if now >= next_renew:
                ok = self.renew()
                next_renew = now + (interval if ok else min(interval, _RETRY_AFTER_ERROR))
            if self._stop.wait(max(min(next_renew, next_beat) - time.monotonic(), 0.0)):
                return

    def renew(self) -> bool:
        held = self._inflight.holding()
        if not held:
            return True
        try:
            states = self._broker.renew([a.delivery for a in held], self._lease)
        except BrokerGone as exc:
            self._gone(exc)
            return False
        except BrokerError as exc:
            # Retried each second while the leases last: said once per outage, not each time.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "cannot renew %d lease(s), retrying: %s", len(held), exc)
            self._failing = True
            return False
        except Exception:
            log.exception("renewing %d lease(s) failed unexpectedly", len(held))
            return False
        if self._failing:
            self._failing = False
            log.info("renewing leases again")
        for attempt, state in zip(held, states, strict=True):
            if state is LeaseState.CANCELLED:
                if attempt.stop is not None or attempt.state != RUNNING:
                    continue
                log_job(logging.INFO, attempt, "job %s (%s) was cancelled; stopping it",
                        attempt.job_id, attempt.name)  # fmt: skip
                self._interrupt(attempt, CANCEL)
            elif state is LeaseState.LOST and attempt.state == RUNNING:
                attempt.lost = True
                log_job(
                    logging.WARNING,
                    attempt,
                    "job %s (%s): its lease was lost (the worker stalled past the lease, or "
                    "the job was handed to another worker); its result will be refused",
                    attempt.job_id,
                    attempt.name,
                )
        return True

    def heartbeat(self) -> bool:
        info = self._info()
        try:
            self._broker.heartbeat(info, self._every * 3)
        except BrokerGone as exc:
            self._gone(exc)
            return False
        except Exception as exc:  # the heartbeat is advisory; the loop reports broker trouble
            log.debug("heartbeat failed: %s", exc)
            return False
        if self._beat is not None:
            self._beat(info)
        return True
