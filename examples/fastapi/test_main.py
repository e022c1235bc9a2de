"""The web app's tests with httpx's ASGI client: no server, no worker process. The
conveyor_app fixture (pytest.ini) puts the app on a fresh memory broker for each test; jobs
run in `drain`, or in a worker thread (the conveyor_worker fixture) for what needs one."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from main import api
from tasks import app

from conveyor import Conveyor, JobStatus, current_job
from conveyor.testing import drain
from conveyor.worker import Worker

pytestmark = pytest.mark.anyio  # every test runs on an event loop, as the app does

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def connect(asgi: ASGIApp = api) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with connect() as client:
        yield client


async def test_a_report_runs_and_its_result_is_shown(
    conveyor_app: Conveyor, client: httpx.AsyncClient
) -> None:
    started = await client.post("/reports", json={"rows": 3})
    assert started.status_code == 202
    job = started.json()["job"]
    shown = await client.get(f"/jobs/{job}")
    assert shown.json() == {"status": "queued", "progress": None, "note": None}

    drain(conveyor_app)  # the worker's part

    shown = await client.get(f"/jobs/{job}")
    assert shown.json() == {
        "status": "succeeded", "progress": 1.0, "note": "row 3 of 3",
        "result": {"rows": 3, "total": 6},
    }  # fmt: skip


async def test_a_report_of_no_rows_is_refused(
    conveyor_app: Conveyor, client: httpx.AsyncClient
) -> None:
    assert (await client.post("/reports", json={"rows": 0})).status_code == 422


async def test_welcome_answers_with_the_result_when_a_worker_is_quick(
    conveyor_worker: Worker, client: httpx.AsyncClient
) -> None:
    answer = await client.post("/welcome", json={"email": "ada@example.com"}, params={"wait": 30})
    assert answer.status_code == 200
    assert answer.json() == {"result": "welcome mail sent to ada@example.com"}


async def test_welcome_hands_back_the_job_when_no_worker_answers_in_time(
    conveyor_app: Conveyor, client: httpx.AsyncClient
) -> None:
    answer = await client.post("/welcome", json={"email": "ada@example.com"}, params={"wait": 0})
    assert answer.status_code == 202
    assert conveyor_app.job(answer.json()["job"]).status is JobStatus.QUEUED


# -- the events stream ------------------------------------------------------------------------

release = threading.Event()


@app.task
def paused_report() -> str:
    """Reports half its progress, then waits until the test has seen it streamed."""
    current_job().progress(0.5, "halfway")
    if not release.wait(30):
        raise TimeoutError("the stream never showed the progress")
    current_job().progress(1.0, "done")
    return "the report"


@app.task
def broken_report() -> str:
    raise ValueError("no such customer")


def events(body: str) -> list[tuple[str, Any]]:
    """(event, data) of each server-sent event in ``body`` (keep-alive comments left out)."""
    found = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line[:1] != ":")
        if fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def releasing(asgi: ASGIApp, seen: bytes) -> ASGIApp:
    """``asgi``, setting ``release`` once a piece of its response body holding ``seen`` has
    been sent (the test client hands the test the stream only when it has ended)."""

    async def observed(scope: Any, receive: Any, send: Any) -> None:
        async def spy(message: MutableMapping[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and seen in message.get("body", b""):
                release.set()

        await asgi(scope, receive, spy)

    return observed


async def test_the_events_stream_progress_while_the_job_runs(
    conveyor_app: Conveyor, conveyor_worker: Worker
) -> None:
    release.clear()
    job = paused_report.delay()
    async with connect(releasing(api, b"halfway")) as client:
        stream = await client.get(f"/jobs/{job.id}/events", params={"every": 0.05})
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert events(stream.text) == [
        ("progress", {"fraction": 0.5, "note": "halfway"}),  # sent while the job waited
        ("progress", {"fraction": 1.0, "note": "done"}),
        ("succeeded", {"result": "the report"}),
    ]


async def test_the_events_of_a_failed_job_end_with_its_error(
    conveyor_app: Conveyor, client: httpx.AsyncClient
) -> None:
    job = broken_report.delay()
    drain(conveyor_app)
    stream = await client.get(f"/jobs/{job.id}/events")
    assert events(stream.text) == [("failed", {"error": "builtins.ValueError: no such customer"})]


async def test_an_unknown_job_is_not_found(
    conveyor_app: Conveyor, client: httpx.AsyncClient
) -> None:
    for path in ("/jobs/01a24ac90673b41126b3598bdf", "/jobs/01a24ac90673b41126b3598bdf/events"):
        assert (await client.get(path)).status_code == 404
    assert (await client.get("/jobs/not-an-id/events")).status_code == 404
