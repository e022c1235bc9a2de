"""The graph on a job's page: the jobs linked to it, near ones first, at most ``MOST``.

Two kinds of link, each an edge from the job that comes first to the one that waits for it:

* ``workflow``: a step and the steps it starts (``Message.workflow``: ``next``, a chord's
  callback, read by ``workflows.following``) or that it started after (``after``:
  ``workflows.preceding``);
* ``depends``: a job and those of its ``depends_on``, and, the other way, the jobs enqueued
  with ``depends_on`` naming it, as long as their ``job.enqueued`` is in the event log (the
  monitor indexes them: a job's payload names what it waits for, not what waits for it).

The graph is walked breadth first from the job, both ways along every link (so a chain is
drawn whole from any of its steps, and a group with its members), reading each job's
payload once, until ``MOST`` jobs are found; ``more`` then says some were left out. Each
job gets a column (``level``): the longest path of links that leads to it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .. import workflows
from .._errors import ConveyorError
from .._inspect import decode
from .._message import Message

if TYPE_CHECKING:
    from .._app import Conveyor
    from ._monitor import Monitor

MOST = 40  # jobs a graph shows at most
Edge = tuple[str, str, str]  # (from, to, kind)


def graph(app: Conveyor, monitor: Monitor, job_id: str, message: Message | None) -> dict[str, Any]:
    """The document of a job's graph (see the module docstring)."""
    found: dict[str, Message | None] = {job_id: message}
    edges: set[Edge] = set()
    more = False
    layer = [job_id]
    while layer:
        following: list[str] = []
        for node in layer:
            for edge in _links(app, monitor, node, found[node]):
                other = edge[1] if edge[0] == node else edge[0]
                if other not in found:
                    if len(found) >= MOST:
                        more = True
                        continue
                    found[other] = None
                    following.append(other)
                edges.add(edge)
        for node in following:
            found[node] = decode(app, app.broker.payload(node)).message
        # A chord's callback keeps the first AFTER_KEPT of its members' ids only.
        more = more or any(_after_left_out(found[n]) for n in layer)
        layer = following
    records = app.broker.get(list(found))
    levels = _levels(list(found), edges)
    nodes = [
        {
            "id": node,
            "task": (msg.task if msg is not None else None) or monitor.task_of(node),
            "status": record.status.value if record is not None else None,
            "level": levels[node],
        }
        for (node, msg), record in zip(found.items(), records, strict=True)
    ]
    ordered = sorted(edges, key=lambda e: (levels[e[0]], e))
    chord = ((message.workflow or {}).get("chord") if message is not None else None) or None
    return {
        "nodes": nodes,
        "edges": [{"from": a, "to": b, "kind": kind} for a, b, kind in ordered],
        "more": more,
        "upstream": [_brief(nodes, a) for a, b, _ in ordered if b == job_id],
        "downstream": [_brief(nodes, b) for a, b, _ in ordered if a == job_id],
        "chord": {"i": chord["i"], "n": chord["n"]} if chord else None,
    }


def _links(app: Conveyor, monitor: Monitor, job_id: str, message: Message | None) -> list[Edge]:
    """The job's links, each way."""
    edges = [(job_id, child, "depends") for child in monitor.dependents(job_id)]
    if message is None:  # unknown, expired, or a payload this app cannot read
        return edges
    edges += [(dep, job_id, "depends") for dep in message.depends_on]
    edges += [(step, job_id, "workflow") for step in workflows.preceding(message)]
    with contextlib.suppress(ConveyorError):  # links that do not decode: not drawn
        edges += [(job_id, step, "workflow") for step in workflows.following(app, message)]
    return edges


def _after_left_out(message: Message | None) -> bool:
    """A chord's callback whose link kept the ids of some of its members only."""
    if message is None:
        return False
    return int((message.workflow or {}).get("after_n", 0)) > len(workflows.preceding(message))


def _levels(nodes: list[str], edges: set[Edge]) -> dict[str, int]:
    """Each job's column: the longest path of links that leads to it (links form no
    cycle: a job waits only for jobs written before it)."""
    before: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b, _ in edges:
        before[b].append(a)
    levels: dict[str, int] = {}

    def level(node: str, seen: frozenset[str]) -> int:
        if node not in levels:
            waits = [p for p in before[node] if p not in seen]  # a cycle is cut, not followed
            levels[node] = 1 + max((level(p, seen | {node}) for p in waits), default=-1)
        return levels[node]

    for node in nodes:
        level(node, frozenset())
    return levels


def _brief(nodes: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    node = next(n for n in nodes if n["id"] == job_id)
    return {"id": node["id"], "status": node["status"], "task": node["task"]}
