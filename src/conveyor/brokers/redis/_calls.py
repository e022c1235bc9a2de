"""How a batch becomes script calls: the arguments of enqueue and finish, a call per chunk.

A script call blocks Redis while it runs, so a large batch goes in chunks (each call atomic
on its own; an enqueue batch of several goes in MULTI/EXEC). Each call names the queues its
items use once, and its items refer to them by place (see ``batch_calls``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..._message import Envelope
from .._base import EVENTS_KEPT, PARKED, unknown_dependency
from .._eventlog import bodies, frame
from .._port import Finish
from ._core import text, to_ms
from ._keys import Keys

FINISH_CHUNK = 200  # outcomes per finish script call (a call blocks Redis while it runs)
ENQUEUE_CHUNK = 200  # jobs per enqueue script call (likewise)
T = TypeVar("T")


def enqueue_args(env: Envelope, now_ms: int) -> list[Any]:
    """An envelope (checked by the port) as the enqueue script's own arguments (after the
    common head).

    An eta goes as the time left until it on the sender's clock (``now_ms``), ``+<ms>``, and
    the script adds it to its own now (common.lua ``eta_at``): a producer or worker whose
    clock is off still delays a job by what it asked, on the clock leases and expiry use.
    """
    eta = ""
    if env.eta == PARKED:
        eta = "parked"
    elif env.eta is not None and (left := to_ms(env.eta) - now_ms) > 0:
        eta = f"+{left}"
    return [env.id, env.queue, env.payload, env.priority, eta, env.key or ""]


Call = tuple[list[str], list[Any]]
# Arguments a call carrying events ends with, after them (see common.lua ``carried``), and
# an enqueue call carrying them joined into entry bodies (enqueue.lua).
_CARRIED = "!e"
_JOINED = "!j"


def batch_calls(
    head: list[Any],
    items: Sequence[T],
    chunk: int,
    encode: Callable[[T, Callable[[str], int]], Sequence[Any]],
    declare: Callable[[list[str]], list[str]],
    *,
    tail: Callable[[int, int], Sequence[Any]] | None = None,
) -> list[Call]:
    """Script calls for a batch, one per ``chunk`` items, each naming the queues its items
    use once: ARGV is ``head``, the number of queues, their names, then each item's values
    as ``encode(item, place)`` gives them (``place(queue)``: the queue's 1-based place in
    that list), then ``tail(start, end)`` for the items ``items[start:end]`` (the events
    the call carries); KEYS are ``declare(queues)``."""
    calls = []
    for at in range(0, len(items), chunk):
        queues: dict[str, int] = {}

        def place(queue: str, queues: dict[str, int] = queues) -> int:
            return queues.setdefault(queue, len(queues) + 1)

        own: list[Any] = []
        for item in items[at : at + chunk]:
            own += encode(item, place)
        if tail is not None:
            own += tail(at, min(at + chunk, len(items)))
        calls.append((declare(list(queues)), [*head, len(queues), *queues, *own]))
    return calls


def with_events(values: list[Any], cap: int) -> list[Any]:
    """A call's arguments that carry events (common.lua ``carried``): the cap, then a
    marker no other argument can be (job ids and numbers never start with ``!``)."""
    return [*values, cap, _CARRIED]


def enqueue_calls(
    keys: Keys,
    head: list[Any],
    envelopes: Sequence[Envelope],
    now_ms: int,
    *,
    events: Sequence[bytes] = (),
    cap: int = EVENTS_KEPT,
) -> list[Call]:
    """The enqueue script calls for a batch: one per ``ENQUEUE_CHUNK`` envelopes. A
    batch with dependencies is one call whatever its size: the script checks them all
    before writing anything. Two keys per call (the script computes each queue's own, in
    the same slot): a lone job costs little to send and to unpack. ``events`` (one per
    envelope) go after a call's jobs; without them the call is what it always was. A batch of
    jobs due now without unique key or dependencies sends 4 values per job, not 7
    (enqueue.lua): each value, even an empty one, costs the server time."""
    chunk = len(envelopes) if any(env.depends_on for env in envelopes) else ENQUEUE_CHUNK
    declared = [keys.unique, keys.queues]

    def values(env: Envelope, place: Callable[[str], int]) -> tuple[Any, ...]:
        job_id, queue, payload, priority, eta, key = enqueue_args(env, now_ms)
        deps = ",".join(env.depends_on)
        return job_id, place(queue), payload, priority, eta, key, deps

    def due(env: Envelope, place: Callable[[str], int]) -> tuple[Any, ...]:
        return env.id, place(env.queue), env.payload, env.priority

    def carried(start: int, end: int) -> list[Any]:
        own = events[start:end]
        if all(own):  # joined into entry bodies as they are stored (no empty one)
            joined = bodies(own)
            return [*joined, len(joined), cap, _JOINED]
        return with_events([frame(e) for e in own], cap)

    plain = all(map(_due_plainly, envelopes))
    return batch_calls(
        [*head, 4 if plain else 7],
        envelopes,
        chunk,
        due if plain else values,
        lambda _: declared,
        tail=carried if events else None,
    )


def _due_plainly(env: Envelope) -> bool:
    """Due now, without unique key or dependencies: a job that enqueue_one.lua takes alone,
    and whose batch sends enqueue.lua 4 values per job."""
    return env.eta is None and env.key is None and not env.depends_on


def alone(envelopes: Sequence[Envelope]) -> Envelope | None:
    """The one job of a batch that enqueue_one.lua takes (a plain ``task.delay()``), else
    None."""
    if len(envelopes) != 1 or not _due_plainly(envelopes[0]):
        return None
    return envelopes[0]


def enqueue_one_args(
    now: int | str, env: Envelope, events: Sequence[bytes], cap: int, load: bool
) -> list[Any]:
    """enqueue_one.lua's arguments, its own (not the common head): ``now`` as the head's
    first, ``load``, whether it answers the stream's length."""
    args = [now, env.queue, env.id, env.payload, env.priority, "1" if load else "0"]
    if events:
        args += (cap, frame(events[0]))
    return args


def enqueue_reply(replies: Sequence[Any]) -> tuple[list[str], int]:
    """The ids the enqueue calls answered, and the length of the stream the last call's
    last job due now went into (-1: none), which each call answers after its ids
    (enqueue.lua); raises ``DependencyNotFound`` if the script refused an unknown
    dependency (it wrote nothing)."""
    first = replies[0] if replies else []
    if first and text(first[0]) == "!missing":
        raise unknown_dependency(text(first[1]), text(first[2]))
    ids = [text(i) for reply in replies for i in reply[:-1]]
    return ids, int(replies[-1][-1]) if replies else -1


def finish_values(f: Finish, place: Callable[[str], int], now_ms: int) -> list[Any]:
    """An outcome as finish.lua's values: job id, token, shape, result, then the reason
    unless it is empty, then a retry's. The shape (status, result TTL in ms, the delivery
    queue's place, what follows: 0 nothing, 1 the reason, 2 the reason and the retry) is
    the same for most outcomes of a call, so the script reads it once per call, and the
    usual outcome (a success) sends 4 values, not 8: each costs the server time."""
    d, retry = f.delivery, f.retry
    shape = f"{f.status.value} {max(to_ms(f.result_ttl), 1)} {place(d.queue)}"
    if retry is not None:
        own = enqueue_args(retry, now_ms)
        return [d.id, d.token, shape + " 2", f.result or b"", f.reason, *own[2:],
                place(retry.queue)]  # fmt: skip
    if f.reason:
        return [d.id, d.token, shape + " 1", f.result or b"", f.reason]
    return [d.id, d.token, shape + " 0", f.result or b""]
