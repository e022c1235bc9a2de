"""The embedded SQLite broker: the default (``sqlite:///./conveyor.db``), for several worker
processes and threads on one machine.

One module per part: ``_schema`` (the tables and migrations), ``_database`` (connections,
transactions, errors), ``_file`` (the file's modes; a file deleted or replaced under the
process), ``_notify`` (wake-ups), ``_sql`` (the broker's statements), ``_core`` (what the
rest shares), ``broker`` (the hot path), ``_admin`` (the operations), ``_url``. How it
works:

* **Atomic steps.** Every multi-step operation is one ``BEGIN IMMEDIATE`` transaction:
  fetch (promote due scheduled jobs + reclaim expired leases + claim a batch with one
  ``UPDATE ... WHERE id IN (SELECT ... ORDER BY priority DESC, seq LIMIT n) RETURNING``),
  finish, release, requeue, cancel, enqueue. Nothing is checked in Python in one
  transaction and acted on in another.
* **Fencing.** renew, finish, release and progress match ``id``, ``status = 'running'`` and
  the delivery's ``token`` in the same ``UPDATE`` that changes the row.
* **Waking without polling.** SQLite cannot notify another process, so we do it beside the
  file: in ``<db>.notify/`` every blocked ``fetch`` binds a unix datagram socket named
  ``f.<random>`` and every ``wait(job_id)`` one named ``j.<hash of id>.<random>``. After a
  commit that makes work available (enqueue, retry, release, requeue, promote) the writer
  sends one byte to every ``f.*`` socket; after a job ends, to that job's ``j.*`` sockets
  only (after a purge, to every ``j.*``). A socket whose process died refuses the datagram
  and is removed. A waiter binds *before* its last look at the table, so a commit cannot
  slip between the look and the sleep. It still looks again every ``_SAFETY_NET`` s (a lost
  datagram, a full buffer) and when a scheduled job or a lease comes due, which the table
  tells it. Measured: a blocked fetch in another process returns with the job about 1 ms
  after the enqueue commits (worst of 20: 5 ms).
  Alternatives were worse: polling the file's mtime or ``PRAGMA data_version`` is a sleep
  loop; inotify is Linux-only and not in the standard library; FIFOs behave the same but
  need the O_RDWR trick to avoid EOF spins.
* **Events** (the ``events`` table, see ``_schema``) are inserted in the transaction of
  the change they describe, so a written job and its ``job.enqueued`` commit together;
  those of one transaction share rows (``brokers._eventlog``): an insert per 64 events,
  not one per event (a finish of 100 jobs with two events each cost 12 µs per job more
  than without events with a row per event, 2-4 µs more so). Readers poll the table
  (every ``_EVENT_POLL`` s while they block): a writer does nothing for them, however many.
* **Connections** (``_database.Database``): one per thread, and one write transaction
  at a time per process behind a mutex. Measured with 8 threads enqueue+fetch+finish on one
  broker: with the mutex every thread progresses (276-337 cycles each, worst wait 0.1 s);
  without it SQLite's sleeping busy handler starved one thread to a single cycle in 2 s.
"""

from ._url import sqlite_path
from .broker import SQLiteBroker

__all__ = ["SQLiteBroker", "sqlite_path"]
