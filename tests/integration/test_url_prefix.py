"""``?prefix=NAME`` in the broker URL, as an operator sets it: ``CONVEYOR_URL`` alone puts a
``conveyor`` worker and the ``conveyor`` commands on the prefix, and a producer that gives
the same name as ``Conveyor(url, prefix=...)`` meets them there; an app whose ``prefix=``
names another one is refused. On the session's private Redis (a prefix of the test's own)
and on the private Redis Cluster (``tests/redis_cluster.py``), where the prefix's keys are
on the master of its slot."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from conftest import Project, conveyor
from conveyor import Conveyor
from redis_cluster import RedisClusterServers
from redis_server import RedisServer, unique_prefix

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

TASKS = """
from conveyor import Conveyor

app = Conveyor()  # CONVEYOR_URL, with its ?prefix=, set by the test


@app.task
def shout(word: str) -> str:
    return word.upper()
"""

PINNED = """
from conveyor import Conveyor

app = Conveyor(prefix="elsewhere")
"""


def check_the_url_prefix(
    tmp_path: Path, base: str, holder: Callable[[str], redis.Redis], separator: str = ""
) -> None:
    """A worker and the commands on ``base + separator + ?prefix=P`` only; ``holder(P)``:
    the server that must hold the prefix's keys."""
    prefix = unique_prefix()
    project = Project(tmp_path, f"{base}{separator}?prefix={prefix}")
    (tmp_path / "url_app.py").write_text(TASKS)
    (tmp_path / "pinned_app.py").write_text(PINNED)
    try:
        worker = project.worker(module="url_app")
        assert f"?prefix={prefix}" in worker.output()  # the banner's URL
        producer = Conveyor(base, prefix=prefix)
        shout = producer.task(name="url_app:shout")(lambda word: word)
        job = shout.delay("ping")
        assert job.result(timeout=30) == "PING"
        assert holder(prefix).exists(f"{{{prefix}}}:job:{job.id}")
        with Conveyor(base) as default:  # the job is not under the default prefix
            assert default.broker.get([job.id]) == [None]
        shown = json.loads(conveyor(project, "job", job.id, "--json").stdout)
        assert (shown["id"], shown["status"], shown["result"]) == (job.id, "succeeded", "PING")
        listed = json.loads(conveyor(project, "jobs", "succeeded", "--json").stdout)
        assert [j["id"] for j in listed["jobs"]] == [job.id]
        refused = conveyor(project, "info", "-A", "pinned_app", code=1)
        assert refused.stderr.startswith("error: two key prefixes: prefix='elsewhere' and ")
        assert f"?prefix={prefix}" in refused.stderr and "Traceback" not in refused.stderr
        producer.close()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    finally:
        project.cleanup()


def test_the_url_prefix_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    check_the_url_prefix(tmp_path, redis_server.url, lambda _: redis_server.client())


def test_the_url_prefix_on_a_cluster(tmp_path: Path, redis_cluster: RedisClusterServers) -> None:
    # The form docs/cluster.md shows: the seed nodes, then /?prefix=NAME.
    check_the_url_prefix(
        tmp_path, redis_cluster.url, lambda p: redis_cluster.master_of(p).client(), "/"
    )
