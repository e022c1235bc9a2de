"""Every error Conveyor raises, in one tree:

    ConveyorError                   anything Conveyor raises on purpose
    ├── ConfigurationError          a bad URL, option or setting; fix the call
    │   ├── InvalidURL
    │   └── InvalidOption           (also a ValidationError) an option of the wrong type or
    │                               range: names it, the value and what to write; nothing
    │                               was written
    ├── ValidationError             bad input at enqueue; nothing was written
    │   ├── InvalidName             queue name, job id or key
    │   ├── SerializationError      an argument or result the codec cannot encode
    │   │   └── ResultTooLarge      (worker side) a task's encoded result is over the cap
    │   └── PayloadTooLarge         the encoded job is over the size cap
    ├── BrokerError                 the broker failed; redis.* and sqlite3.* never leak
    │   ├── BrokerUnavailable       cannot reach the broker (after retries)
    │   ├── BrokerAuthError         the broker refused the login or an ACL permission;
    │   │                           retrying cannot help (a worker stops on it)
    │   └── BrokerGone              the SQLite database file was deleted or replaced under
    │                               the process; retrying cannot help (a worker stops on it)
    ├── JobNotFound                 no job with that id (or its record expired)
    │   └── DependencyNotFound      (also a ValidationError) depends_on= names no job;
    │                               nothing was written
    ├── JobNotEnded                 requeue of a job that is not failed, dead or cancelled;
    │                               a job delete left to its worker's live lease
    ├── TaskFailed                  the task raised; carries the remote type, message, traceback
    │   └── DependencyFailed        a job it depends on failed, was dead-lettered or cancelled
    ├── JobCancelled                the job was cancelled before it finished
    ├── JobDead                     the job was dead-lettered; carries the reason
    ├── LockError
    │   ├── LockTimeout             could not acquire within timeout
    │   └── LockLost                released or extended after the TTL ran out
    ├── TransactionConflict         store.update kept conflicting; retries exhausted
    ├── UntrustedTask               (worker side) a payload named code the worker does not trust
    ├── SoftTimeLimit               raised inside a task that ran past its timeout
    └── DrainIncomplete             (conveyor.testing.drain) a bound stopped the drain with
                                    jobs left; says which bound and what is left

``TimeoutError`` (the builtin, which ``concurrent.futures.TimeoutError`` aliases) is what
``Job.result(timeout=...)`` raises when the job is still running: the standard future contract.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""


class ConfigurationError(ConveyorError):
    """A bad URL, option or setting."""


class InvalidURL(ConfigurationError):
    """The broker URL cannot be used."""


class ValidationError(ConveyorError):
    """Bad input at enqueue; nothing was written."""


class InvalidName(ValidationError):
    """A queue name, job id or key that is not allowed."""


class SerializationError(ValidationError):
    """A value the codec cannot encode or decode."""


class InvalidOption(ConfigurationError, ValidationError):
    """An option of a task, a call or a worker with a value of the wrong type or out of
    range (``backoff=nan``, ``retries=True``, ``delay=-5``); the message names the option,
    the value and what to write instead. Raised where the option is given, so nothing was
    written."""


class ResultTooLarge(SerializationError):
    """A task's encoded result is over ``Conveyor(max_result=...)``: the job fails with it
    (the caller sees ``TaskFailed`` naming this type) and nothing is stored."""


class PayloadTooLarge(ValidationError):
    """The encoded job is larger than the configured cap."""


class BrokerError(ConveyorError):
    """The broker failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached."""


class BrokerAuthError(BrokerError):
    """The broker refused the credentials (a wrong password, none given, a disabled ACL
    user) or a permission the ACL user lacks. Retrying cannot help: fix the URL or the
    user's rights. The message says which, and never holds the password."""


class BrokerGone(BrokerError):
    """The broker's storage was deleted or replaced while the process had it open: an SQLite
    database file (or its -wal or -shm) removed, or another file moved over it. The process
    still holds the old file, which nobody else sees, so it refuses every further call
    rather than write into it. Retrying cannot help: restart the process. The message names
    the path and what happened."""


class JobNotFound(ConveyorError):
    """No job has this id, or its record has expired."""


class JobNotEnded(ConveyorError):
    """``app.requeue`` names a job that has not ended (queued, scheduled, running) or that
    succeeded: only a failed, dead or cancelled job goes back on its queue; or
    a running job that ``app.delete`` left to its worker's live lease (``action="delete"``).
    ``job_id`` and ``status`` say which and how it stands."""

    def __init__(self, job_id: str, status: str, action: str = "requeue") -> None:
        self.job_id = job_id
        self.status = status
        if action == "delete":
            super().__init__(
                f"job {job_id} is {status} under its worker's live lease, so it was not "
                "deleted: cancel it (its worker stops it at its next lease renewal) and "
                "delete it once it ended; if its worker is gone, delete it once its lease "
                "expired"
            )
            return
        if status == "succeeded":
            what = "to run it again, enqueue the task anew"
        else:
            what = "it has not ended yet: cancel it first, or wait for it to end"
        super().__init__(
            f"job {job_id} is {status}: only a failed, dead or cancelled job can be "
            f"requeued ({what}); nothing was requeued"
        )


class TaskFailed(ConveyorError):
    """The task raised an exception in the worker.

    ``remote_type`` is the qualified name of the exception type in the worker,
    ``remote_message`` its message and ``remote_traceback`` the formatted traceback.
    The remote exception is never re-created from its name: that would let a payload
    choose code to run.
    """

    def __init__(
        self, remote_type: str, remote_message: str, remote_traceback: str = "", job_id: str = ""
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.job_id = job_id
        super().__init__(f"{remote_type}: {remote_message}")


class DependencyNotFound(JobNotFound, ValidationError):
    """``depends_on=`` names a job the broker does not know (never enqueued, or its record
    expired after its result TTL); nothing was enqueued."""


class DependencyFailed(TaskFailed):
    """The job did not run: a job it depends on did not succeed (failed, dead-lettered or
    cancelled). ``remote_message`` names that job and how it ended."""


class JobCancelled(ConveyorError):
    """The job was cancelled before it finished."""


class JobDead(ConveyorError):
    """The job was moved to the dead-letter queue; ``reason`` says why."""

    def __init__(self, reason: str, job_id: str = "") -> None:
        self.reason = reason
        self.job_id = job_id
        super().__init__(
            f"job {job_id} was dead-lettered: {reason}. "
            "Inspect it with `conveyor jobs dead`, fix the cause, then `conveyor requeue ID`."
        )


class LockError(ConveyorError):
    """A distributed lock operation failed."""


class LockTimeout(LockError):
    """The lock could not be acquired within the timeout."""


class LockLost(LockError):
    """The lock is no longer held by this holder (its TTL ran out and someone may hold it)."""


class TransactionConflict(ConveyorError):
    """An optimistic transaction kept conflicting with concurrent writers."""


class UntrustedTask(ConveyorError):
    """A payload named a task or callable the worker does not trust."""


class SoftTimeLimit(ConveyorError):
    """Raised inside a task that ran past its time limit."""


class DrainIncomplete(ConveyorError):
    """``conveyor.testing.drain`` stopped at one of its bounds with jobs left to run."""
