"""The worker's lines about one job carry that job's fields (``job_id``, ``task``, ``queue``,
``attempt``), like the lines its task writes: they are written from the worker's own threads,
where no job is running, so they are stamped here rather than by ``JobContext``.

``log_job`` does nothing, not even build the fields, for a level the logger filters out: the
success line of every job goes through it.
"""

from __future__ import annotations

import logging
import sys

from ._attempt import Attempt

log = logging.getLogger("conveyor.worker")


def fields(attempt: Attempt) -> dict[str, object]:
    message = attempt.message  # None when the payload could not be decoded
    return {
        "job_id": attempt.delivery.id,
        "task": message.task if message is not None else None,
        "queue": attempt.delivery.queue,
        "attempt": message.attempt if message is not None else None,
    }


def log_job(
    level: int,
    attempt: Attempt,
    msg: str,
    *args: object,
    traceback: str = "",
    exc_info: bool = False,
) -> None:
    """``log.log(level, msg, *args)`` with the job's fields; ``traceback`` is a failure's
    traceback as text (from a pool thread or process), written where ``exc_info``'s would
    be, so any formatter shows it."""
    if not log.isEnabledFor(level):
        return
    caller = sys._getframe(1)
    record = log.makeRecord(
        log.name,
        level,
        caller.f_code.co_filename,
        caller.f_lineno,
        msg,
        args,
        sys.exc_info() if exc_info else None,
        caller.f_code.co_name,
        fields(attempt),
    )
    if traceback:
        record.exc_text = traceback.rstrip("\n")
    log.handle(record)
