"""``depends_on=``: the worker-side check that a job's dependencies succeeded.

The broker holds a job with dependencies parked until every one of them has ended (see
``brokers/_port.py``), atomically with their finish, so nothing here waits or polls. When
the job is finally delivered, ``workflows.short_circuit`` calls ``check``: one ``get`` of the
dependencies' records. If one did not succeed, the job does not run; it ends failed with
``DependencyFailed``, which its own dependents and its workflow (chain, chord) then see as
any other failure, unless ``allow_failed_dependencies=True`` was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import DependencyFailed, ValidationError
from ._message import JobRecord, JobStatus, Message, Outcome, RemoteError

if TYPE_CHECKING:
    from ._app import Conveyor

DEPENDENCY_FAILED = f"{DependencyFailed.__module__}.{DependencyFailed.__qualname__}"
_HINT = "pass allow_failed_dependencies=True to run a job whatever its dependencies ended as"


def check(app: Conveyor, message: Message) -> Outcome | None:
    """A failed outcome if a dependency of ``message`` did not succeed, else None (run it)."""
    ids = message.depends_on
    for dep, record in zip(ids, app.broker.get(ids), strict=True):
        if record is not None and record.status is JobStatus.SUCCEEDED:
            continue
        if record is not None and not record.status.terminal:
            # Brokers release a job only after all of its dependencies ended; this one
            # cannot tell (e.g. its broker does not support depends_on): never run early.
            problem = f"dependency {dep} is still {record.status}: the job was released early"
        elif message.allow_failed_dependencies:
            continue
        elif record is None:
            problem = (
                f"dependency {dep} has no record any more (it expired after its result TTL, "
                "or it was purged or deleted), so whether it succeeded is unknown; keep "
                "dependencies' results longer (result_ttl=) and delete them only once their "
                f"dependents ran, or {_HINT}"
            )
        else:
            problem = f"dependency {dep} ended {record.status}{_why(app, record)}; {_HINT}"
        return Outcome(error=RemoteError(DEPENDENCY_FAILED, problem))
    return None


def _why(app: Conveyor, record: JobRecord) -> str:
    if not record.result:
        return ""
    try:
        outcome = app.codec.decode_outcome(record.result)
    except ValidationError:
        return ""
    if outcome.error is not None:
        text = outcome.error.message.removesuffix("; " + _HINT)  # said once is enough
        return f" ({outcome.error.type}: {text[:500]})"
    return f" ({outcome.reason})" if outcome.reason else ""
