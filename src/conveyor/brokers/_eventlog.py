"""How the SQLite and Redis adapters store events: several to a record, numbered by event.

An event costs a broker little when the events of one call share a record (a row, a stream
entry) instead of a write each: each event is framed ``<length>:<bytes>`` and up to
``PER_RECORD`` of them are stored together, the record keyed by the number of its last
event (a counter kept beside the log numbers every event ever appended). So the cap is a
count however the events are grouped: a trim drops the records whose last event is older
than the newest ``events_kept``, keeping at most ``PER_RECORD - 1`` more, and an event's
cursor is its number.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

PER_RECORD = 64  # events per record at most (Redis: common.lua's EVENTS_PER_ENTRY)


def frame(event: bytes) -> bytes:
    # (A concatenation, not b"%d:%b": a third of the time, and this runs twice per job.)
    return b"%d:" % len(event) + event


def unframe(body: bytes) -> list[bytes]:
    """The events of one record. One that is not framed so (written by hand) reads as one
    empty event, which no reader takes for an event."""
    out, at = [], 0
    try:
        while at < len(body):
            colon = body.index(b":", at)
            end = colon + 1 + int(body[at:colon])
            if end > len(body):
                return [b""]
            out.append(body[colon + 1 : end])
            at = end
    except ValueError:
        return [b""]
    return out


def bodies(events: Sequence[bytes]) -> list[bytes]:
    """``events`` as the bodies of their records: framed, ``PER_RECORD`` to a body but the
    last, which has the rest."""
    return [
        b"".join([b"%d:" % len(e) + e for e in events[at : at + PER_RECORD]])  # frame, inlined
        for at in range(0, len(events), PER_RECORD)
    ]


def records(events: Sequence[bytes], last: int) -> Iterator[tuple[int, bytes]]:
    """``events``, numbered up to ``last``, as records: (number of its last event, body)."""
    first = last - len(events)
    for at, body in zip(range(0, len(events), PER_RECORD), bodies(events), strict=True):
        yield first + min(at + PER_RECORD, len(events)), body


def numbered(found: Iterable[tuple[int, bytes]], after: int, limit: int) -> list[tuple[str, bytes]]:
    """(cursor, event) pairs of the records read after cursor ``after``, at most ``limit``:
    a record's events are numbered up to its key, those up to ``after`` left out."""
    out: list[tuple[str, bytes]] = []
    for last, body in found:
        events = unframe(body)
        for number, event in enumerate(events, last - len(events) + 1):
            if number > after:
                out.append((str(number), event))
                if len(out) == limit:
                    return out
    return out
