"""A task of ``conveyor worker`` using redis-py as it would in a process of its own, while the
command's process defers redis-py's packages (``cli/_deferred.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Project
from redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.redis

TRACED = """\
import os

import redis

from conveyor import Conveyor

app = Conveyor(os.environ["CONVEYOR_URL"], prefix=os.environ["JOBS_PREFIX"])


class Traced(redis.Redis):
    pass


redis.Redis = Traced  # as an instrumentation might


@app.task
def which() -> str:
    assert redis.VERSION  # a name redis/__init__ computes: it runs now
    return redis.Redis.__name__
"""


def test_a_client_class_the_app_assigned_is_the_one_its_tasks_find(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    project = Project(tmp_path, redis_server.url, unique_prefix())
    (tmp_path / "traced_app.py").write_text(TRACED)
    project.worker(module="traced_app")
    app = project.app()
    try:
        which = app.task(name="traced_app:which")(lambda: "")
        assert which.delay().result(timeout=30) == "Traced"
    finally:
        app.close()
        project.cleanup()
