"""A FastAPI app that hands work to Conveyor without blocking its event loop.

conveyor worker tasks               # the worker
uvicorn main:api                    # the web app
python client.py                    # a report's progress as it comes, then a welcome mail
pytest                              # the tests (no server, no worker process)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field
from tasks import app, build_report, send_welcome

from conveyor import ConveyorError, InvalidName, Job, JobNotFound


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    async with app:  # the broker is closed when the server stops
        # One round trip (open() alone connects nowhere on Redis): a broker that is away
        # fails the start, not a request; a Redis that may evict or refuse jobs says so.
        for line in await asyncio.to_thread(lambda: app.open().warnings()):
            logging.getLogger("main").warning("%s", line)
        yield


api = FastAPI(lifespan=lifespan)


class Report(BaseModel):
    rows: int = Field(gt=0, le=10_000)


class Welcome(BaseModel):
    email: str


async def existing_job(job_id: str) -> Job[Any]:
    """The job of the path, or 404 (resolved before a stream starts, so it can still say so)."""
    try:
        return await asyncio.to_thread(app.job, job_id)
    except (JobNotFound, InvalidName) as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


AJob = Annotated[Job[Any], Depends(existing_job)]


@api.post("/reports", status_code=202)
async def start_report(report: Report) -> dict[str, str]:
    job = await build_report.delay_async(report.rows)  # enqueue without blocking the loop
    return {"job": job.id, "events": f"/jobs/{job.id}/events"}


@api.post("/welcome")
async def welcome(body: Welcome, wait: Annotated[float, Query(ge=0, le=30)] = 2.0) -> Any:
    """The result if the worker is quick, else 202 and the job to ask about later."""
    job = await send_welcome.delay_async(body.email)
    try:
        return {"result": await job.result_async(timeout=wait)}  # `await job`, bounded
    except TimeoutError:
        return JSONResponse({"job": job.id}, status_code=202)


@api.get("/jobs/{job_id}")
async def show_job(job: AJob) -> dict[str, Any]:
    status, (fraction, note) = await asyncio.to_thread(lambda: (job.status, job.progress))
    shown: dict[str, Any] = {"status": status.value, "progress": fraction, "note": note}
    if status.terminal:  # read again (a requeue may have run it since): not on the loop
        try:
            shown["result"] = await job.result_async(timeout=0)
        except ConveyorError as exc:  # TaskFailed, JobCancelled, JobDead
            shown["error"] = str(exc)
        except TimeoutError:  # requeued between the two reads: it runs again
            pass
    return shown


@api.get("/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job: AJob, every: Annotated[float, Query(gt=0, le=10)] = 0.5
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: `progress` when it moves, then one of `succeeded`, `failed`,
    `cancelled` or `dead`, and the stream ends. The end is sent as soon as the job ends
    (the wait is the broker's notification); progress is looked at every `every` seconds."""
    shown: tuple[float | None, str | None] = (None, None)
    end: ServerSentEvent | None = None
    while True:
        progress = await asyncio.to_thread(lambda: job.progress)
        if progress != shown:
            shown = progress
            fraction, note = progress
            yield ServerSentEvent(event="progress", data={"fraction": fraction, "note": note})
        if end is not None:
            yield end
            return
        try:
            value = await job.result_async(timeout=every)
        except TimeoutError:
            continue  # still running
        except JobNotFound as exc:  # purged meanwhile
            end = ServerSentEvent(event="gone", data={"error": str(exc)})
        except ConveyorError as exc:  # TaskFailed, JobCancelled, JobDead: ended
            status = await asyncio.to_thread(lambda: job.status)
            end = ServerSentEvent(event=status.value, data={"error": str(exc)})
        else:
            end = ServerSentEvent(event="succeeded", data={"result": value})
