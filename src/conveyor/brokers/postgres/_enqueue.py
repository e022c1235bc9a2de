"""The one statement that writes a batch of jobs (``{s}.enqueue``), shared by the broker's
own ``enqueue`` and the enqueue through a caller's connection (``_transactional``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def check_keys(envelopes: Sequence[Envelope], check: Callable[[str, str], object]) -> None:
    """Each unique key through ``check(key, "unique key")``, which raises for one the
    database cannot store (ids and queue names are ASCII: every encoding holds them)."""
    for e in envelopes:
        if e.key is not None:
            check(e.key, "unique key")


def enqueued(row: tuple[Any, ...] | None) -> list[str]:
    """The ids ``{s}.enqueue`` answered; raises ``DependencyNotFound`` if it refused an
    unknown dependency (it wrote nothing). A caller's connection whose client encoding is
    SQL_ASCII reads text as bytes (psycopg decodes nothing there): ids are ASCII."""
    assert row is not None
    ids, missing_job, missing_dep = row
    if missing_job is not None:
        raise unknown_dependency(_str(missing_job), _str(missing_dep))
    return [_str(i) for i in ids] if ids and isinstance(ids[0], bytes) else list(ids)


def _str(text: str | bytes) -> str:
    return text.decode() if isinstance(text, bytes) else text


def enqueue_one_params(
    envelope: Envelope, event: bytes | None, kept: int, now: float | None, client_now: float
) -> tuple[Any, ...]:
    """The ``ENQUEUE_ONE`` arguments of one job."""
    e = envelope
    depends_on = ",".join(e.depends_on)
    return (e.id, e.queue, e.payload, e.priority, e.eta, e.key, depends_on, event, kept,
            client_now, now)  # fmt: skip
