"""What a signing secret vouches for, with a ``conveyor worker`` on SQLite: a job of this
app, under its own id, of a size the app lets in, naming no package's entry point.

Written into the broker as raw rows, by someone who can write it but holds no secret: a
value the app stored with its secret (its content chosen by a user), a job's signed payload
under another id (a replay), a payload far over ``max_payload``; and sent by the app, a job
naming a trusted package's ``__main__``. Each is dead-lettered with its reason, none runs
(``__main__`` is not even imported), and the worker runs the next job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Project, wait_for
from conveyor import Conveyor, JobDead, Signature
from conveyor._message import Envelope, Message

pytestmark = pytest.mark.slow

SECRET = "shared-by-the-producer-and-the-worker"
MAX_PAYLOAD = 4000

APP = f"""
import os, pathlib
from conveyor import Conveyor

app = Conveyor(secret=os.environ["JOBS_SECRET"], max_payload={MAX_PAYLOAD})
LOG = pathlib.Path(__file__).with_name("runs.log")


@app.task
def run(tag) -> str:
    with open(LOG, "a") as f:
        f.write(f"start {{tag}} {{os.getpid()}}\\n")
    return "ran"
"""


def _send(app: Conveyor, task: str, *args: Any) -> Any:
    (job,) = app.enqueue_many([Signature(app, task, args, {}, app.defaults)])
    return job


def _reason(app: Conveyor, job_id: str) -> str:
    with pytest.raises(JobDead) as caught:
        app.job(job_id).result(timeout=30)
    return caught.value.reason


@pytest.mark.timeout(90)
def test_a_worker_runs_only_this_apps_jobs_under_their_own_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = Project(tmp_path)
    (tmp_path / "jobs_app.py").write_text(APP)
    marker = tmp_path / "main-imported"
    (tmp_path / "jobs_pkg").mkdir()
    (tmp_path / "jobs_pkg" / "__init__.py").write_text("")
    (tmp_path / "jobs_pkg" / "__main__.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n\ndef x(): ...\n"
    )
    monkeypatch.setenv("JOBS_SECRET", SECRET)
    app = Conveyor(project.url, secret=SECRET, max_payload=MAX_PAYLOAD)
    try:
        worker = project.worker("--trust", "jobs_pkg")
        assert _send(app, "jobs_app:run", "before").result(timeout=30) == "ran"

        app.store.set("webhook", {"id": "from-store", "task": "jobs_app:run", "args": ["store"]})
        stored = app.broker.kv.get("store:webhook")
        assert stored is not None
        genuine = app.codec.encode_message(Message("genuine", "jobs_app:run", args=["replay"]))
        huge = b'{"id":"huge","task":"jobs_app:run","args":[[' + b"[]," * 3000 + b"[]]]}"
        for job_id, payload in (("from-store", stored), ("replayed", genuine), ("huge", huge)):
            app.broker.enqueue([Envelope(job_id, "default", payload)])
        main = _send(app, "jobs_pkg.__main__:x")
        after = _send(app, "jobs_app:run", "after")

        assert after.result(timeout=30) == "ran", worker.output()
        assert _reason(app, "from-store").startswith(
            "undecodable payload: payload is signed as a stored value (app.store or a cache), "
            "not as a job"
        )
        assert _reason(app, "replayed").startswith("the payload belongs to job 'genuine'")
        assert _reason(app, "huge").startswith(
            f"payload of {len(huge)} bytes is over the {2 * MAX_PAYLOAD} bytes a worker decodes"
        )
        assert _reason(app, main.id) == (
            "untrusted callable 'jobs_pkg.__main__:x': dunder modules are refused "
            "(jobs_pkg.__main__ is not imported)"
        )
        assert not marker.exists()
        assert [tag for _, tag, _ in project.runs()] == ["before", "after"]
        wait_for(lambda: main.id in worker.output(), 10, worker.output)
        assert worker.proc.poll() is None, worker.output()
        assert "Traceback" not in worker.output()
    finally:
        app.close()
        project.cleanup()
