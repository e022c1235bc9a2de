"""Workflows: ``chain``, ``group`` and ``chord``; each ``.delay()`` returns a ``Job`` future.

::

    chain(a.s(1), b.s(), c.s()).delay()      # b gets a's result as its first argument, ...
    group(a.s(i) for i in range(9)).delay()  # Job[list]: the results in order
    chord(group(...), total.s()).delay()     # total gets the group's list first

Pieces nest: a chain or group may be a step of a chain, a member of a group, or a callback.
Guarantees and limits: ``docs/workflows.md``.

How it runs: ``delay`` writes every step in one ``broker.enqueue`` batch with ids chosen up
front, the later steps *parked*. Each step's ``Message.workflow`` says what follows it (and,
as ``after``, which steps it follows: the dashboard draws the workflow from it), and the
encoded messages of the steps it starts wait in the key-value store (written before the batch).
When a step ends, the worker calls ``advance``, which *promotes* what follows: due now, with
the result prepended to the arguments, or marked to fail with the step's error.

Worker hooks (plain data in; nothing kept between calls)::

    short_circuit(app, message) -> Outcome | None
        After decoding a delivery, before resolving, trusting or rate-limiting its task. If
        not None, do not run the task: record this outcome (succeeded if ``outcome.error``
        is None, else failed, with no retry) and call ``advance`` as for any finished job.
        It covers steps whose upstream failed, ``group``'s built-in collector, and jobs
        whose ``depends_on`` did not all succeed (``_depends.check``: one broker read).

    advance(app, message, status, result) -> None
        Once a job's terminal outcome is known (succeeded; failed with no retry left;
        cancelled while running; dead with a decoded message), BEFORE recording it: ``status``
        is that ``JobStatus``, ``result`` the encoded ``Outcome`` about to be recorded. A
        no-op outside workflows; idempotent, so a redelivered job may call it again. Raises
        only ``BrokerError``: then record nothing, and retry it or release the job.

App hook::

    cancelled(app, job_id) -> None
        After ``Job.cancel()`` cancelled a queued or scheduled job (no worker will ever
        see it): reads its payload and calls ``advance`` as a worker would have, so the
        rest of its chain fails and its chord's callback runs with the error.

Key-value keys (no TTL; deleted once used)::

    conveyor:wf:next:<job id>      packed messages of the steps that job promotes
    conveyor:wf:chord:<chord id>   packed messages of the chord callback's first steps
    conveyor:wf:chord:<id>:n       members finished (incr)
    conveyor:wf:chord:<id>:r:<i>   member i's outcome: b"S" + Outcome or b"F" + Outcome
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from . import _depends
from ._errors import (
    BrokerError,
    ConfigurationError,
    ConveyorError,
    JobCancelled,
    JobDead,
    TaskFailed,
    ValidationError,
)
from ._job import Job
from ._message import Envelope, JobStatus, Message, Outcome, RemoteError, new_job_id
from ._task import Signature
from .brokers._port import PARKED

if TYPE_CHECKING:
    from ._app import Conveyor
    from ._hooks import Sending

__all__ = ["COLLECT", "Chain", "Chord", "Group", "Workflow"]
__all__ += [
    "advance",
    "cancelled",
    "chain",
    "chord",
    "following",
    "group",
    "preceding",
    "waits_for_inputs",
]
__all__ += ["short_circuit"]

R = TypeVar("R")
log = logging.getLogger("conveyor.workflows")
COLLECT = "conveyor.workflows:collect"
_NEXT = "conveyor:wf:next:"
_CHORD = "conveyor:wf:chord:"
_TRACEBACK_CAP = 20_000  # a failure travels down the workflow; keep its payloads small
_LEN = struct.Struct(">I")
AFTER_KEPT = 24  # ids of the steps before a step its link keeps (for the dashboard's graph)


def _collect(results: list[Any]) -> list[Any]:
    """The last job of a ``group``: its result is the members' results, in order."""
    return results


# -- building --------------------------------------------------------------------------------


class Workflow(Generic[R]):
    """A composition of task calls, sent as one batch by ``delay``."""

    _app: Conveyor | None = None  # None only for an empty group made without app=

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            raise ConfigurationError("an empty group does not know its app: group([], app=app)")
        return self._app

    def delay(self) -> Job[R]:
        """Write every step (one broker round trip, plus one key-value write per link) and
        return the future of the last one."""
        with self.app._sending() as sending:  # every step goes through the middleware
            builder = _Builder(self.app, sending)
            node = self._compile(builder, parked=False)
            envelopes, links = builder.build()
            kv, written = self.app.broker.kv, []
            try:
                for key, value in links.items():  # first: a step may finish when it is sent
                    kv.set(key, value)
                    written.append(key)
                ids = self.app.broker.enqueue(envelopes, builder.announce(envelopes))
            except BaseException:
                with contextlib.suppress(ConveyorError):
                    for key in written:
                        kv.delete(key)
                raise
            if ids != [e.id for e in envelopes]:  # fresh ids, no keys: cannot be deduplicated
                raise BrokerError("the broker did not write every workflow step as given")
        return Job(self.app, node.exit.message.id, steps=tuple(ids))

    async def delay_async(self) -> Job[R]:
        """``delay`` for asyncio code (in a thread): it does not block the event loop."""
        return await asyncio.to_thread(self.delay)

    def _compile(self, b: _Builder, parked: bool) -> _Node:
        raise NotImplementedError


Step = Signature[Any] | Workflow[Any]


class Chain(Workflow[Any]):
    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps = _check_steps(steps, "chain")
        self._app = _app_of(self.steps)

    def _compile(self, b: _Builder, parked: bool) -> _Node:
        first = prev = b.compile(self.steps[0], parked)
        for step in self.steps[1:]:
            node = b.compile(step, parked=True)
            b.link_next(prev.exit, node.entries)
            prev = node
        return _Node(first.entries, prev.exit)

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.steps))})"


class Group(Workflow[list[Any]]):
    def __init__(self, members: Iterable[Step], app: Conveyor | None = None) -> None:
        self.members = _check_steps(members, "group", allow_empty=True)
        self._app = app if app is not None or not self.members else _app_of(self.members)

    def _compile(self, b: _Builder, parked: bool) -> _Node:
        return b.chord(self.members, None, parked)

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.members))})"


class Chord(Workflow[R]):
    def __init__(self, header: Group | Iterable[Step], callback: Signature[R] | Workflow[R]):
        if isinstance(header, Signature | Workflow) and not isinstance(header, Group):
            raise ConfigurationError(
                f"chord takes a group (or a list of steps) and a callback, got {header!r} "
                "first: write chord([step, ...], callback) or chord(group(...), callback)"
            )
        self.header = header if isinstance(header, Group) else Group(_iterable(header, "chord"))
        self.callback = _check_steps([callback], "chord callback")[0]
        self._app = _app_of([self.header, callback])

    def _compile(self, b: _Builder, parked: bool) -> _Node:
        return b.chord(self.header.members, self.callback, parked)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.callback!r})"


def chain(*steps: Step) -> Chain:
    """Run steps one after another; each result becomes the next step's first argument."""
    return Chain(steps)


def group(*members: Step | Iterable[Step], app: Conveyor | None = None) -> Group:
    """Run steps in parallel; ``delay()`` returns ``Job[list]``, the results in order.
    Takes the steps as arguments or as one iterable: ``group(a.s(i) for i in range(9))``.
    An empty group is allowed first in a workflow (it yields ``[]``); ``app`` is needed only
    to ``delay()`` an empty group on its own."""
    if len(members) == 1 and not isinstance(members[0], Signature | Workflow):
        return Group(_iterable(members[0], "group"), app)
    return Group(members, app)  # type: ignore[arg-type]  # checked in _check_steps


def chord(header: Group | Iterable[Step], callback: Signature[R] | Workflow[R]) -> Chord[R]:
    """Run a group, then ``callback`` with the list of its results as first argument."""
    return Chord(header, callback)


def _check_steps(steps: Iterable[Any], what: str, allow_empty: bool = False) -> tuple[Step, ...]:
    found = tuple(steps)
    for s in found:
        if not isinstance(s, Signature | Workflow):
            hint = " (use task.s(...) for a step)" if callable(s) else ""
            raise ConfigurationError(f"{what} takes signatures and workflows, got {s!r}{hint}")
    if not found and not allow_empty:
        raise ConfigurationError(f"{what} needs at least one step")
    return found


def _iterable(steps: object, what: str) -> Iterable[Any]:
    """``steps`` when it is an iterable; a task or another object given instead of the
    list of steps is refused saying how to write it."""
    if isinstance(steps, Iterable) and not isinstance(steps, str | bytes):
        return steps
    hint = " (use task.s(...) for a step)" if callable(steps) else ""
    raise ConfigurationError(
        f"{what} takes steps (signatures and workflows) or one iterable of them, got "
        f"{steps!r}{hint}"
    )


def _app_of(steps: Iterable[Step]) -> Conveyor:
    found = [s._app if isinstance(s, Workflow) else s.app for s in steps]
    apps = {id(a): a for a in found if a is not None}
    if not apps:  # only empty groups, none told its app
        raise ConfigurationError(
            "a workflow of empty groups only does not know its app: write "
            "group([], app=app) for one of them"
        )
    if len(apps) != 1:
        raise ConfigurationError("the steps of a workflow must all belong to one app")
    return next(iter(apps.values()))


class _Job:
    __slots__ = ("envelope", "message", "parked")

    def __init__(self, message: Message, envelope: Envelope, parked: bool) -> None:
        self.message = message
        self.envelope = envelope
        self.parked = parked


class _Node:
    __slots__ = ("entries", "exit")

    def __init__(self, entries: list[_Job], exit: _Job) -> None:
        self.entries = entries  # what the previous step's result is given to
        self.exit = exit  # whose result is this node's result


class _Builder:
    def __init__(self, app: Conveyor, sending: Sending) -> None:
        self.app = app
        self.sending = sending
        self.jobs: list[_Job] = []
        self.links: dict[str, list[_Job]] = {}

    def compile(self, step: Step, parked: bool) -> _Node:
        if isinstance(step, Workflow):
            return step._compile(self, parked)
        job = self.job(step, parked)
        return _Node([job], job)

    def job(self, sig: Signature[Any], parked: bool) -> _Job:
        if sig.app is not self.app:
            raise ConfigurationError(f"step {sig!r} belongs to another app")
        o = sig.opts
        if o.key is not None or o.job_id is not None:
            raise ConfigurationError(
                f"step {sig!r}: key= and job_id= cannot be used inside a workflow "
                "(its job ids are chosen up front)"
            )
        if o.connection is not None:
            raise ConfigurationError(
                f"step {sig!r}: connection= sends a job on its own (delay, enqueue, "
                "enqueue_many); a workflow's steps are written by the broker itself"
            )
        if parked and (o.delay or o.eta is not None or o.depends_on):
            raise ConfigurationError(
                f"step {sig!r}: delay=, eta= and depends_on= work on the first steps of a "
                "workflow only; a later step starts when the step before it ends"
            )
        envelope = self.sending.envelope(sig)  # validates, encodes, picks the job id
        job = _Job(self.app.codec.decode_message(envelope.payload), envelope, parked)
        self.jobs.append(job)
        return job

    def chord(self, members: tuple[Step, ...], callback: Step | None, parked: bool) -> _Node:
        if not members:
            if parked:
                raise ConfigurationError(
                    "an empty group cannot follow another step (nothing would start what "
                    "comes after it); leave it out, or start the workflow with it"
                )
            node = self.compile(callback or self.collector("default", 0), parked=False)
            for job in node.entries:
                job.message.args.insert(0, [])
            return node
        nodes = [self.compile(m, parked) for m in members]
        if callback is None:
            last = nodes[0].exit.message
            callback = self.collector(last.queue, last.priority)
        done = self.compile(callback, parked=True)
        chord_id = new_job_id()
        for i, node in enumerate(nodes):
            _set_link(node.exit, {"chord": {"id": chord_id, "i": i, "n": len(nodes)}})
        _set_after(done.entries, [n.exit for n in nodes])
        self.links[_CHORD + chord_id] = done.entries
        return _Node([j for n in nodes for j in n.entries], done.exit)

    def collector(self, queue: str, priority: int) -> Signature[list[Any]]:
        if COLLECT not in self.app.registry:
            self.app._register(_collect, COLLECT, self.app.defaults)
        opts = self.app.defaults.merge(queue=queue, priority=priority)
        return Signature(self.app, COLLECT, (), {}, opts)

    def link_next(self, exit: _Job, following: list[_Job]) -> None:
        _set_link(exit, {"next": [j.message.id for j in following]})
        _set_after(following, [exit])
        self.links[_NEXT + exit.message.id] = following

    def announce(self, envelopes: Sequence[Envelope]) -> list[bytes]:
        """The steps' ``job.enqueued`` events (``build``'s envelopes, in its order)."""
        return self.app._announce(envelopes, [job.message.task for job in self.jobs])

    def build(self) -> tuple[list[Envelope], dict[str, bytes]]:
        payloads: dict[str, bytes] = {}
        envelopes: list[Envelope] = []
        for job in self.jobs:
            env = job.envelope
            payload = self.app.codec.encode_message(job.message)
            payloads[env.id] = payload
            eta = PARKED if job.parked else env.eta
            envelopes.append(msgspec.structs.replace(env, payload=payload, eta=eta))
        links = {k: _pack([payloads[j.message.id] for j in js]) for k, js in self.links.items()}
        return envelopes, links


def _set_link(job: _Job, link: dict[str, Any]) -> None:
    # Every node has one exit and every exit one successor context: a clash is a bug here.
    held = job.message.workflow or {}
    assert "next" not in held and "chord" not in held, "a workflow step was linked twice"
    job.message.workflow = {**held, **link}


def _set_after(jobs: list[_Job], before: list[_Job]) -> None:
    """Each of ``jobs`` starts when ``before`` ended (the step before it in its chain, or
    its chord's members): their ids, the first ``AFTER_KEPT`` of them, ride in its link as
    ``after`` (with ``after_n``, how many there are, when that is more), so the dashboard
    can draw a workflow from any of its steps. Nothing runs on it."""
    ids = [j.message.id for j in before]
    after: dict[str, Any] = {"after": ids[:AFTER_KEPT]}
    if len(ids) > AFTER_KEPT:
        after["after_n"] = len(ids)
    for job in jobs:
        job.message.workflow = {**(job.message.workflow or {}), **after}


def _pack(payloads: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(p)) + p for p in payloads)


def _unpack(blob: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(blob):
        (n,) = _LEN.unpack_from(blob, i)
        out.append(blob[i + _LEN.size : i + _LEN.size + n])
        i += _LEN.size + n
    return out


def preceding(message: Message) -> list[str]:
    """The ids of the steps a workflow step started after (the step before it in its
    chain, or the first ``AFTER_KEPT`` members of its chord), as its link keeps them. Empty
    outside workflows and for a first step. For the dashboard's graph."""
    return [str(i) for i in (message.workflow or {}).get("after", ())]


def waits_for_inputs(message: Message) -> bool:
    """Whether a workflow step still waits for what the steps before it hand on: it follows
    some (``after``) and neither got their results nor their failure. Such a step ended
    (cancelled with its workflow, or purged) before them; put back on its queue, it would
    run without them."""
    link = message.workflow or {}
    return "after" in link and "promoted" not in link and "upstream_failed" not in link


def following(app: Conveyor, message: Message) -> list[str]:
    """The ids of the jobs a workflow step starts when it ends: the next steps of its chain,
    or its chord's callback while the chord still waits for members (the link is deleted
    once the callback is started). Empty outside workflows. For the dashboard's graph."""
    link = message.workflow or {}
    if "next" in link:
        return [str(i) for i in link["next"]]
    if "chord" not in link:
        return []
    blob = app.broker.kv.get(_CHORD + str(link["chord"]["id"]))
    if blob is None:
        return []
    return [app.codec.decode_message(p).id for p in _unpack(blob)]


# -- the worker's hooks ------------------------------------------------------------------------


def short_circuit(app: Conveyor, message: Message) -> Outcome | None:
    """The outcome of a step that must not run (see the module docstring), or None.

    ``app`` gives access to the ports, for checks that must read the broker."""
    failed = (message.workflow or {}).get("upstream_failed")
    if failed is not None:
        try:
            return Outcome(error=msgspec.convert(failed, RemoteError))
        except msgspec.ValidationError:
            return Outcome(error=RemoteError(_qualified(TaskFailed), "an earlier step failed"))
    if message.task == COLLECT:
        return Outcome(value=message.args[0] if message.args else [])
    if message.depends_on:
        return _depends.check(app, message)
    return None


def cancelled(app: Conveyor, job_id: str) -> None:
    """A queued or scheduled job was cancelled: end what follows it (module docstring)."""
    ended_unrun(app, app.broker.payload(job_id), "cancelled before it ran")


def ended_unrun(app: Conveyor, payload: bytes | None, reason: str) -> None:
    """A job (its payload) ended cancelled without a worker finishing it (cancelled before
    it ran, or deleted after its worker was gone): end what follows it."""
    if payload is None:
        return
    try:
        message = app.codec.decode_message(payload)
    except ConveyorError:
        return  # not a message Conveyor wrote: no workflow to end
    if message.workflow:
        result = app.codec.encode_outcome(Outcome(reason=reason))
        advance(app, message, JobStatus.CANCELLED, result)


def advance(app: Conveyor, message: Message, status: JobStatus, result: bytes | None) -> None:
    """Start what follows a finished workflow step (see the module docstring)."""
    link = message.workflow
    if not link or not status.terminal or ("next" not in link and "chord" not in link):
        return
    value, failure = _read(app, message, status, result)
    try:
        if "next" in link:
            _promote_all(app, _NEXT + message.id, value, failure, forget=True)
        else:
            _member_done(app, link["chord"], value, failure)
    except ValidationError:  # stored links that do not decode: retrying cannot help
        log.exception("workflow step %s: cannot start the steps after it", message.id)


def _read(
    app: Conveyor, message: Message, status: JobStatus, result: bytes | None
) -> tuple[Any, RemoteError | None]:
    outcome: Outcome | None = None
    if result is not None:
        try:
            outcome = app.codec.decode_outcome(result)
        except ValidationError as exc:
            return None, RemoteError(_qualified(type(exc)), f"undecodable result: {exc}")
    if status is JobStatus.SUCCEEDED:
        return (outcome.value if outcome else None), None
    if outcome is not None and outcome.error is not None:
        if "upstream_failed" in (message.workflow or {}):
            return None, outcome.error  # passing an earlier failure on, unchanged
        where = f"in workflow step {message.id} ({message.task}):\n"
        tb = (where + outcome.error.traceback)[:_TRACEBACK_CAP]
        return None, msgspec.structs.replace(outcome.error, traceback=tb)
    kind = {JobStatus.DEAD: JobDead, JobStatus.CANCELLED: JobCancelled}.get(status, TaskFailed)
    reason = (outcome.reason if outcome else None) or "no reason recorded"
    text = f"workflow step {message.id} ({message.task}) ended {status}: {reason}"
    return None, RemoteError(_qualified(kind), text)


def _member_done(
    app: Conveyor, chord: dict[str, Any], value: Any, failure: RemoteError | None
) -> None:
    kv, codec = app.broker.kv, app.codec
    base, n = _CHORD + str(chord["id"]), int(chord["n"])
    if failure is None:
        record = b"S" + codec.encode_outcome(Outcome(value=value))
    else:
        record = b"F" + codec.encode_outcome(Outcome(error=failure))
    kv.set(f"{base}:r:{int(chord['i'])}", record)
    if failure is not None:
        _promote_all(app, base, None, failure, forget=False)  # fail the callback right away
    # Whoever counts last has seen every member's record written (each writes, then counts);
    # a redelivered member may count twice, so also check the records are all there.
    if kv.incr(f"{base}:n") < n:
        return
    values: list[Any] = []
    first_failure: RemoteError | None = None
    for i in range(n):
        raw = kv.get(f"{base}:r:{i}")
        if raw is None:
            return  # counted early by a redelivery; the member still missing will gather
        outcome = codec.decode_outcome(raw[1:])
        if raw[:1] == b"F" and first_failure is None:
            first_failure = outcome.error
        values.append(outcome.value)
    _promote_all(app, base, None if first_failure else values, first_failure, forget=True)
    for key in [*(f"{base}:r:{i}" for i in range(n)), f"{base}:n"]:
        kv.delete(key)


def _promote_all(
    app: Conveyor, key: str, value: Any, failure: RemoteError | None, forget: bool
) -> None:
    blob = app.broker.kv.get(key)
    if blob is None:
        return  # already done: the links are deleted only after every promote
    for payload in _unpack(blob):
        _promote(app, payload, value, failure)
    if forget:
        app.broker.kv.delete(key)


def _promote(app: Conveyor, payload: bytes, value: Any, failure: RemoteError | None) -> None:
    codec = app.codec
    message = codec.decode_message(payload)
    if failure is None:
        message.args = [value, *message.args]
        # Marked: it holds its inputs now (a requeue may put it back, see waits_for_inputs).
        message.workflow = {**(message.workflow or {}), "promoted": 1}
        try:
            app.broker.promote(message.id, codec.encode_message(message))
            return
        except ValidationError as exc:  # the result is too large or cannot be encoded
            text = f"the previous step's result cannot be passed on: {exc}"
            failure = RemoteError(_qualified(type(exc)), text)
            message = codec.decode_message(payload)
    app.broker.promote(message.id, _mark_failed(app, message, failure))


def _mark_failed(app: Conveyor, message: Message, failure: RemoteError) -> bytes:
    """The step's message marked to fail with ``failure``, shedding what does not fit."""
    link = dict(message.workflow or {})
    lean = msgspec.structs.replace(failure, traceback="", message=failure.message[:1000])
    for f in (failure, lean):
        message.workflow = {**link, "upstream_failed": msgspec.to_builtins(f)}
        with contextlib.suppress(ValidationError):
            return app.codec.encode_message(message)
    message.args, message.kwargs = [], {}  # it never runs: its arguments are not needed
    return app.codec.encode_message(message)


def _qualified(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"
