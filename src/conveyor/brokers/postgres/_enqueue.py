"""The one statement that writes a batch of jobs (``{s}.enqueue``), shared by the broker's
own ``enqueue`` and the enqueue through a caller's connection (``_transactional``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._message import Envelope
from .._base import unknown_dependency

ENQUEUE = (
    "SELECT ids, missing_job, missing_dep FROM {s}.enqueue(%s::text[], %s::text[], "
    "%s::bytea[], %s::int[], %s::float8[], %s::text[], %s::text[], %s::bytea[], %s::int, "
    "%s::float8, %s::float8)"
)

# One job (``delay()``): the same call, with arrays the server builds from single values,
# which psycopg sends without dumping a list for each: a producer's CPU per delay() 0.7x.
ENQUEUE_ONE = (
    "SELECT ids, missing_job, missing_dep FROM {s}.enqueue(ARRAY[%b::text], ARRAY[%b::text], "
    "ARRAY[%b::bytea], ARRAY[%b::int], ARRAY[%b::float8], ARRAY[%b::text], ARRAY[%b::text], "
    "ARRAY[%b::bytea], %b::int, %b::float8, %b::float8)"
)


def enqueue_params(
    envelopes: Sequence[Envelope], events: Sequence[bytes], kept: int, now: float | None,
    client_now: float,
) -> tuple[Any, ...]:  # fmt: skip
    """The ``{s}.enqueue`` arguments of a batch (checked by the port before)."""
    return (
        [e.id for e in envelopes],
        [e.queue for e in envelopes],
        [e.payload for e in envelopes],
        [e.priority for e in envelopes],
        [e.eta for e in envelopes],
        [e.key for e in envelopes],
        [",".join(e.depends_on) for e in envelopes],
        list(events),
        kept,
        client_now,
        now,
    )


def enqueued(row: tuple[Any, ...] | None) -> list[str]:
    """The ids ``{s}.enqueue`` answered; raises ``DependencyNotFound`` if it refused an
    unknown dependency (it wrote nothing)."""
    assert row is not None
    ids, missing_job, missing_dep = row
    if missing_job is not None:
        raise unknown_dependency(missing_job, missing_dep)
    return list(ids)


def enqueue_one_params(
    envelope: Envelope, event: bytes | None, kept: int, now: float | None, client_now: float
) -> tuple[Any, ...]:
    """The ``ENQUEUE_ONE`` arguments of one job."""
    e = envelope
    depends_on = ",".join(e.depends_on)
    return (e.id, e.queue, e.payload, e.priority, e.eta, e.key, depends_on, event, kept,
            client_now, now)  # fmt: skip
