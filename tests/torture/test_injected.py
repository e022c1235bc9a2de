"""Forged payloads written straight into a running worker's queue, on Redis and on SQLite.

Someone who can write to the broker (a compromised producer, a mistyped ``redis-cli``, a
script poking the SQLite file) queues jobs without going through Conveyor: on Redis a job
hash and its ``job <id>`` stream entry exactly as ``brokers/redis/_keys.py`` describes them
(written by one script, so the worker never sees half a job); on SQLite a row INSERTed into
``jobs`` (``brokers/sqlite/_schema.py``). The payloads:

* undecodable bytes; a JSON message without its required ``task``;
* an unknown task; ``os.system`` and ``os:system`` with ``["touch <marker>"]``;
* a pickle gadget (unpickling it runs ``os.system("touch <marker>")``): raw, framed as an
  unsigned pickle body, and framed as a signed pickle with a key that is not the app's.

Each runs against a ``conveyor worker`` subprocess whose app has NO secret (JSON) and one
whose app HAS a secret (pickle, signed): every forged job is dead-lettered with a reason
that says why, its raw bytes kept; no marker file ever appears; the worker keeps running and
still runs a good job queued after them; the runs log shows only the good jobs ran.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from brokers import Target, by_name, params
from conveyor import JobDead
from conveyor._message import JobStatus
from conveyor.brokers.redis._keys import GROUP, Keys
from redis_cluster import RedisClusterServers
from redis_server import RedisServer

from .workers import Cluster, send, wait_for

pytestmark = pytest.mark.slow

SECRET = "the-apps-own-secret"
WRONG = b"a-key-the-forger-made-up"

Inject = Callable[[str, bytes], None]


class Gadget:
    """Unpickling this runs ``os.system("touch <path>")``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (f"touch {self.path}",)


# -- writing into the brokers --------------------------------------------------------------

# The broker's own job format (enqueue.lua, a job due now), in one atomic step.
_REDIS_INJECT = """
local job, stream, queues = KEYS[1], KEYS[2], KEYS[3]
local id, payload, group = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local sid = redis.call('XADD', stream, '*', 'job', id, 'payload', payload)
redis.call('HSET', job, 'status', 'queued', 'sid', sid, 'queue', 'default', 'priority', 0,
  'deliveries', 0, 'updated_at', now, 'key', '')
redis.call('SADD', queues, 'default')
return sid
"""


def redis_injector(request: pytest.FixtureRequest, target: Target) -> Inject:
    server: RedisServer = request.getfixturevalue("fresh_redis_server")  # the target's
    return _redis_inject(target, server.client)


def redis_cluster_injector(request: pytest.FixtureRequest, target: Target) -> Inject:
    servers: RedisClusterServers = request.getfixturevalue("redis_cluster")  # the target's
    return _redis_inject(target, lambda: servers.master_of(target.prefix).client())


def sharded_injector(
    connect: Callable[[pytest.FixtureRequest, Target, str], redis.Redis],
) -> Callable[[pytest.FixtureRequest, Target], Inject]:
    """Into the shard a sharded prefix's broker routes the job id to, under its tag (the
    prefix's layout, made by opening it)."""

    def injector(request: pytest.FixtureRequest, target: Target) -> Inject:
        broker = target.open()
        try:
            broker.stats()  # the layout is written at the first use
            home = connect(request, target, target.prefix)
            layout = json.loads(home.get(Keys(target.prefix).shards) or b"{}")
            home.close()

            def shard(job_id: str) -> tuple[Keys, redis.Redis]:
                tag = layout["tags"][broker.shard_of(job_id)]
                return Keys(target.prefix, tag), connect(request, target, tag)

            return lambda job_id, payload: _inject(*shard(job_id), job_id, payload)
        finally:
            broker.close()

    return injector


def _on_server(request: pytest.FixtureRequest, target: Target, tag: str) -> redis.Redis:
    server: RedisServer = request.getfixturevalue("fresh_redis_server")  # the target's
    return server.client()


def _on_cluster(request: pytest.FixtureRequest, target: Target, tag: str) -> redis.Redis:
    servers: RedisClusterServers = request.getfixturevalue("redis_cluster")  # the target's
    return servers.master_of(tag).client()


def _redis_inject(target: Target, connect: Callable[[], redis.Redis]) -> Inject:
    """Writes a job as enqueue would, on the server ``connect`` reaches."""
    keys = Keys(target.prefix)
    return lambda job_id, payload: _inject(keys, connect(), job_id, payload)


def _inject(keys: Keys, client: redis.Redis, job_id: str, payload: bytes) -> None:
    try:
        sid = client.eval(
            _REDIS_INJECT,
            3,
            keys.job(job_id),
            keys.stream("default", 0),
            keys.queues,
            job_id,
            payload,
            GROUP,
        )
    finally:
        client.close()
    assert b"-" in sid, sid  # a stream entry id


def sqlite_injector(request: pytest.FixtureRequest, target: Target) -> Inject:
    db = target.url.removeprefix("sqlite:///")

    def inject(job_id: str, payload: bytes) -> None:
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            (seq,) = conn.execute(
                "UPDATE meta SET value = value + 1 WHERE name = 'seq' RETURNING value"
            ).fetchone()
            conn.execute(
                "INSERT INTO jobs(id, queue, payload, priority, status, seq, updated_at) "
                "VALUES (?, 'default', ?, 0, 'queued', ?, ?)",
                (job_id, payload, seq, time.time()),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()

    return inject


def postgres_injector(request: pytest.FixtureRequest, target: Target) -> Inject:
    import psycopg

    from conveyor.brokers.postgres._url import parse_postgres_url

    found = parse_postgres_url(target.url)
    s = f'"{found.schema}"'

    def inject(job_id: str, payload: bytes) -> None:
        target.open().close()  # the schema is made (the workers may not have made it yet)
        with psycopg.connect(found.conninfo, autocommit=True) as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO {s}.jobs(id, queue, payload, status, seq, updated_at) VALUES "
                f"(%s, 'default', %s, 'queued', nextval('{s}.seq'), extract(epoch FROM now()))",
                (job_id, payload),
            )
            conn.execute(f"SELECT {s}.notify('q', ARRAY['default'])")  # wake the fetches

    return inject


# How a payload is written straight into each broker that worker processes share (a new
# broker adds its own here).
INJECTORS: dict[str, Callable[[pytest.FixtureRequest, Target], Inject]] = {
    "redis": redis_injector,
    "redis-cluster": redis_cluster_injector,
    "redis-sharded": sharded_injector(_on_server),
    "redis-cluster-sharded": sharded_injector(_on_cluster),
    "sqlite": sqlite_injector,
    "postgres": postgres_injector,
    # Into the record store, with no ticket: the workers' sweep finds it.
    "rabbitmq-redis": lambda request, target: redis_injector(
        request, Target(target.store or "", target.prefix)
    ),
}


# -- the forged payloads -------------------------------------------------------------------


def _json(job_id: str, **fields: object) -> bytes:
    return json.dumps({"id": job_id, **fields}).encode()


def _signed_with(key: bytes, body: bytes) -> bytes:
    """The codec's signed framing of a job (``_codec.py``):
    b"CV2" + HMAC-SHA256(key, b"msg\\0" + body) + body."""
    return b"CV2" + hmac.digest(key, b"msg\0" + body, hashlib.sha256) + body


def forgeries(markers: Path) -> dict[str, bytes]:
    """Forged payloads by name; each names its own marker file, which must never appear."""

    def gadget(name: str) -> bytes:
        message = {
            "id": f"forged-{name}",
            "task": "torture_app:sleepy",
            "args": [Gadget(markers / name), 0.0],
        }
        return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)

    return {
        "garbage": b"\xff\xfe\x00\x80 not a message at all",
        "no-task": _json("forged-no-task", args=[1, 2]),
        "unknown": _json("forged-unknown", task="torture_app:no_such_task"),
        "os-dot-system": _json(
            "forged-os-dot-system", task="os.system", args=[f"touch {markers / 'os-dot-system'}"]
        ),
        "os-system": _json(
            "forged-os-system", task="os:system", args=[f"touch {markers / 'os-system'}"]
        ),
        "pickle-raw": gadget("pickle-raw"),
        "pickle-body": b"P" + gadget("pickle-body"),
        "pickle-wrong-key": _signed_with(WRONG, b"P" + gadget("pickle-wrong-key")),
    }


# Why each is refused: by an app without a secret, and by one with a secret (which refuses
# anything not signed with it before looking any further).
_UNDECODABLE = "undecodable payload: "
_UNSIGNED = _UNDECODABLE + "payload is not signed; refusing to decode it"
EXPECTED: dict[str, tuple[str, str]] = {
    "garbage": (_UNDECODABLE, _UNSIGNED),
    "no-task": (
        _UNDECODABLE + "cannot decode payload: Object missing required field `task`",
        _UNSIGNED,
    ),
    "unknown": ("unknown task 'torture_app:no_such_task'", _UNSIGNED),
    "os-dot-system": ("unknown task 'os.system'", _UNSIGNED),
    "os-system": ("untrusted callable 'os:system'", _UNSIGNED),
    "pickle-raw": (_UNDECODABLE, _UNSIGNED),
    "pickle-body": (_UNDECODABLE, _UNSIGNED),
    "pickle-wrong-key": (
        _UNDECODABLE + "signed payload but this app has no secret configured",
        _UNDECODABLE + "payload signature does not match",
    ),
}

# -- the scenario --------------------------------------------------------------------------


@pytest.fixture(params=[None, SECRET], ids=["no-secret", "secret"])
def secret(request: pytest.FixtureRequest) -> str | None:
    value: str | None = request.param
    return value


@pytest.fixture(params=params(shared=True))
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, secret: str | None
) -> Iterator[tuple[Cluster, Inject]]:
    name = request.param.name
    target = by_name(name).target(request, tmp_path / "app", "fresh")
    cluster = Cluster(
        tmp_path / "app", target.url, target.prefix, secret=secret, store=target.store
    )
    inject = INJECTORS[name](request, target)
    try:
        yield cluster, inject
    finally:
        cluster.cleanup()


def test_the_gadget_is_live(tmp_path: Path) -> None:
    """Unpickled anywhere else, the gadget does create its file: so a marker that never
    appears below means it was never unpickled, not that it was harmless."""
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Gadget(probe)))  # the point of the test
    assert probe.exists()


@pytest.mark.timeout(120)
def test_forged_payloads_are_dead_lettered_and_never_run(
    rig: tuple[Cluster, Inject], secret: str | None, tmp_path: Path
) -> None:
    cluster, inject = rig
    markers = tmp_path / "markers"
    markers.mkdir()
    app = cluster.app()
    worker = cluster.worker("W", "--lease", "5")
    before = send(app, "sleepy", "before", 0.0)
    assert before.result(timeout=30) == "W"  # tables, stream and group exist now

    forged = forgeries(markers)
    for name, payload in forged.items():
        inject(f"forged-{name}", payload)
    after = send(app, "sleepy", "after", 0.0)  # queued behind every forged job

    assert after.result(timeout=30) == "W", worker.output()
    reasons = {}
    for name in forged:
        with pytest.raises(JobDead) as info:
            app.job(f"forged-{name}").result(timeout=30)
        reasons[name] = info.value.reason
    which = 0 if secret is None else 1
    for name, reason in reasons.items():
        assert reason.startswith(EXPECTED[name][which]), (name, reason)

    dead = {e.id: e for e in app.broker.entries(JobStatus.DEAD, "default", 100)}
    for name, payload in forged.items():
        assert dead[f"forged-{name}"].payload == payload  # kept raw, for inspection

    assert sorted(p.name for p in markers.iterdir()) == []  # nothing was executed
    assert cluster.executed() == ["before", "after"]  # only the good jobs ran
    wait_for(lambda: "forged-pickle-wrong-key" in worker.output(), 10, worker.output)
    assert worker.alive(), worker.output()
    assert "Traceback" not in worker.output()
    again = send(app, "sleepy", "again", 0.0)  # and it goes on
    assert again.result(timeout=30) == "W"
    app.close()
