"""A ``conveyor worker`` decodes only its app's serializer, on SQLite.

Its app and a producer share a signing secret but not a serializer: a JSON worker handed a
signed pickle (whose argument creates a file if it is ever unpickled) and a pickle worker
handed signed JSON both dead-letter the job with a reason naming both formats, run nothing
of it, and go on to run the next job. Before, a JSON app with a secret unpickled anything
signed with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Project, wait_for
from conveyor import Conveyor, JobDead, Signature
from conveyor.testing.conformance._values import Gadget

pytestmark = pytest.mark.slow

SECRET = "shared-by-the-producer-and-the-worker"

APP = """
import os, pathlib
from conveyor import Conveyor

app = Conveyor(
    prefix=os.environ["JOBS_PREFIX"],
    serializer=os.environ["JOBS_SERIALIZER"],
    secret=os.environ["JOBS_SECRET"],
)
LOG = pathlib.Path(__file__).with_name("runs.log")


@app.task
def run(tag) -> str:
    with open(LOG, "a") as f:
        f.write(f"start {tag} {os.getpid()}\\n")
    return "ran"
"""


def _send(app: Conveyor, arg: Any) -> Any:
    (job,) = app.enqueue_many([Signature(app, "jobs_app:run", (arg,), {}, app.defaults)])
    return job


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("worker_format", "foreign_format"), [("json", "pickle"), ("pickle", "json")]
)
def test_a_worker_dead_letters_a_signed_payload_in_the_other_format_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_format: str, foreign_format: str
) -> None:
    project = Project(tmp_path)
    (tmp_path / "jobs_app.py").write_text(APP)
    monkeypatch.setenv("JOBS_SERIALIZER", worker_format)
    monkeypatch.setenv("JOBS_SECRET", SECRET)
    marker = tmp_path / "unpickled"
    own = Conveyor(project.url, serializer=worker_format, secret=SECRET)  # type: ignore[arg-type]
    other = Conveyor(project.url, serializer=foreign_format, secret=SECRET)  # type: ignore[arg-type]
    try:
        worker = project.worker()
        assert _send(own, "before").result(timeout=30) == "ran"
        foreign = _send(other, Gadget(marker) if foreign_format == "pickle" else "foreign")
        after = _send(own, "after")

        assert after.result(timeout=30) == "ran", worker.output()
        with pytest.raises(JobDead) as caught:
            own.job(foreign.id).result(timeout=30)
        assert caught.value.reason.startswith(
            f"undecodable payload: payload is {foreign_format}, but this app is configured "
            f"for {worker_format}: refusing to decode it"
        ), caught.value.reason
        assert not marker.exists()  # never unpickled
        assert [tag for _, tag, _ in project.runs()] == ["before", "after"]  # never run
        wait_for(lambda: foreign.id in worker.output(), 10, worker.output)
        assert worker.proc.poll() is None, worker.output()
        assert "Traceback" not in worker.output()
    finally:
        own.close()
        other.close()
        project.cleanup()
