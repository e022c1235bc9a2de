"""The broker's SQL statements, and the helpers that run the small ones (the tables they
read and write: ``_schema``)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..._message import JobRecord, JobStatus
from .._base import CANCELLED_TTL, CANCELLED_WORKER_STOPPED

LIVE = "(expires_at IS NULL OR expires_at > ?)"
RECORD = "id, status, queue, result, progress, progress_note, updated_at, deliveries, reason"
CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
# Deletions of a backlog go a bounded batch per statement: one unbounded DELETE of a
# million expired jobs (and their six indexes' entries) held the write lock for seconds,
# and a producer's enqueue gave up waiting for it. A batch of SWEEP_ROWS jobs takes
# 10-30 ms; an events row has no index but its primary key, hence the larger TRIM_ROWS.
SWEEP_ROWS = 1000
TRIM_ROWS = 10_000
SWEEP = """DELETE FROM {table} WHERE rowid IN
    (SELECT rowid FROM {table} WHERE expires_at <= ? LIMIT ?)"""
TRIM_EVENTS = """DELETE FROM events WHERE id IN
    (SELECT id FROM events WHERE id <= ? ORDER BY id LIMIT ?)"""

INSERT = """
INSERT INTO jobs(id, queue, payload, priority, status, seq, eta, key, updated_at, waiting,
    depends_on)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# Jobs that ended take their dependents along (one primary-key lookup per job, one
# statement per finished batch); each is counted down, and the last count makes it due.
TAKE_DEPENDENTS = "DELETE FROM dependents WHERE parent IN ({marks}) RETURNING child"
COUNT_DOWN = """
UPDATE jobs SET waiting = waiting - 1,
    status = CASE WHEN waiting = 1 THEN 'queued' ELSE status END,
    seq = CASE WHEN waiting = 1 THEN ? ELSE seq END
WHERE id = ? AND status = 'scheduled' AND waiting > 0
RETURNING waiting
"""
# Due scheduled jobs, then expired leases, go to the back of their queue in that order.
PROMOTE = """
UPDATE jobs SET status = 'queued', seq = ? + due.n
FROM (SELECT id, row_number() OVER (ORDER BY eta, seq) AS n
      FROM jobs WHERE status = 'scheduled' AND eta <= ?) AS due
WHERE jobs.id = due.id
"""
# A job cancelled while it ran is not run again once its worker is gone: it ends cancelled.
ABANDONED = f"""
    status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    expires_at = CASE WHEN cancel_requested THEN ? + {CANCELLED_TTL} END,
    updated_at = CASE WHEN cancel_requested THEN ? ELSE updated_at END,
    result = CASE WHEN cancel_requested THEN NULL ELSE result END,
    reason = CASE WHEN cancel_requested THEN '{CANCELLED_WORKER_STOPPED}' ELSE reason END,
    token = '', lease_until = NULL, cancel_requested = 0
"""
RECLAIM = f"""
UPDATE jobs SET {ABANDONED}, seq = ? + due.n
FROM (SELECT id, row_number() OVER (ORDER BY rowid) AS n
      FROM jobs WHERE status = 'running' AND lease_until <= ?) AS due
WHERE jobs.id = due.id
RETURNING id, status
"""
# Each queue's head comes from its index in order; merging a few heads beats sorting
# every queued job of several queues.
HEAD = """SELECT * FROM (SELECT id, priority, seq FROM jobs WHERE status = 'queued'
    AND queue = ? ORDER BY priority DESC, seq LIMIT ?)"""
CLAIM = """
UPDATE jobs SET status = 'running', token = lower(hex(randomblob(8))),
    deliveries = deliveries + 1, lease_until = ?, updated_at = ?
WHERE id IN (SELECT id FROM ({heads}) ORDER BY priority DESC, seq LIMIT ?)
RETURNING id, queue, payload, token, deliveries, priority, seq
"""
PROBE = """
SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND queue IN ({queues})
        AND queue NOT IN (SELECT queue FROM paused)),
       (SELECT min(eta) FROM jobs WHERE status = 'scheduled'),
       (SELECT min(lease_until) FROM jobs WHERE status = 'running')
"""
PROMOTE_PARKED = f"""
UPDATE jobs SET status = 'queued', payload = ?, eta = NULL, seq = ?
WHERE id = ? AND status = 'scheduled' AND eta = ? AND {LIVE}
"""
OWNED = "id = ? AND status = 'running' AND token = ?"
# Finish and release keep the delivery's token on the row (fencing looks at running jobs
# only), so a repeat of the same call is recognised as already settled (SETTLED).
FINISH = f"""
UPDATE jobs SET status = ?, result = ?, reason = ?, expires_at = ?,
    lease_until = NULL, cancel_requested = 0, updated_at = ?
WHERE {OWNED}
"""
SETTLED = f"SELECT 1 FROM jobs WHERE id = ? AND token = ? AND status != 'running' AND {LIVE}"
# A retry keeps the row's uniqueness key: the job is still pending under it.
RETRY = f"""
UPDATE jobs SET status = ?, queue = ?, payload = ?, priority = ?, eta = ?, seq = ?,
    result = ?, deliveries = 0, lease_until = NULL, cancel_requested = 0,
    updated_at = ?
WHERE {OWNED}
"""
RELEASE = f"""
UPDATE jobs SET {ABANDONED}, seq = ?, deliveries = max(deliveries - 1, 0), token = ?
WHERE {OWNED}
RETURNING status
"""
# A failed, dead or cancelled job back as a fresh one (its key and dependencies: _requeue_one).
REQUEUE = """
UPDATE jobs SET status = ?, payload = ?, seq = ?, waiting = ?, eta = NULL, token = '',
    lease_until = NULL, expires_at = NULL, result = NULL, reason = '', deliveries = 0,
    progress = NULL, progress_note = NULL, cancel_requested = 0, updated_at = ?
WHERE id = ?
"""
PENDING_KEY = """SELECT id FROM jobs WHERE key = ? AND id != ?
    AND status IN ('queued', 'scheduled', 'running') LIMIT 1"""
# The order of each status in ``entries`` (see the port's contract).
ENTRY_ORDER = {
    JobStatus.QUEUED: "priority DESC, seq",
    JobStatus.SCHEDULED: "coalesce(eta, 9e999), id",  # a waiting job's eta is NULL: last
}
NEWEST_FIRST = "updated_at DESC, id DESC"


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


def take_seq(conn: sqlite3.Connection, n: int) -> int:
    """Reserve ``n`` queue positions; returns the one before the first."""
    row = conn.execute(
        "UPDATE meta SET value = value + ? WHERE name = 'seq' RETURNING value - ?", (n, n)
    ).fetchone()
    return int(row[0])


def job_record(row: tuple[Any, ...]) -> JobRecord:
    job_id, status, queue, result, progress, note, updated_at, deliveries, reason = row
    state = JobStatus(status)
    return JobRecord(
        id=str(job_id),
        status=state,
        queue=str(queue),
        result=bytes(result) if state.terminal and isinstance(result, bytes) else None,
        progress=None if progress is None else float(progress),
        progress_note=None if note is None else str(note),
        updated_at=float(updated_at),
        deliveries=int(deliveries),
        reason=str(reason),
    )
