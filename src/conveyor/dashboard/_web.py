"""The Starlette application: the pages, the JSON API, the live streams and the actions.

Every page is the same small HTML shell; the script (``static/app.js``) reads the JSON API
and builds the page with ``textContent``, so nothing a job carries is ever parsed as markup.
Broker calls block, so they run in the thread pool. Live pages follow a server-sent event
stream that sends a document whenever it changed (checked every ``TICK`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import html
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .._errors import (
    BrokerError,
    ConfigurationError,
    ConveyorError,
    JobNotEnded,
    JobNotFound,
    ValidationError,
)
from .._inspect import redact
from ._guard import CSRF_COOKIE, Guard, csrf_ok, csrf_token
from ._views import ENCODER, Dashboard

log = logging.getLogger("conveyor.dashboard")

TICK = 0.5  # seconds between two looks of a live stream
# Seconds a live stream lasts at most; the page reconnects at once (``retry:``). A server
# the dashboard is mounted in waits for open responses when it stops, and only the
# dashboard's own command can tell the streams to end.
STREAM_LIFE = 60.0
_KEEPALIVE = 30  # ticks without news after which a stream sends a comment (proxies' timeouts)
_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_STATUS: list[tuple[type[ConveyorError], int]] = [
    (JobNotFound, 404),
    (JobNotEnded, 409),
    (BrokerError, 503),
    (ValidationError, 400),
    (ConfigurationError, 400),
]
_READ_ONLY = (
    "this dashboard is read-only (started with --read-only, or read_only=True): it takes "
    "no action; use `conveyor requeue`, `cancel`, `delete`, `queues pause` instead"
)


def _json(data: Any, status: int = 200) -> Response:
    headers = {"cache-control": "no-store"}
    return Response(ENCODER.encode(data), status, headers, "application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    """A path or a method the dashboard does not have: JSON, as its other errors are."""
    code = exc.status_code if isinstance(exc, HTTPException) else 400
    detail = exc.detail if isinstance(exc, HTTPException) else ""
    return _json({"error": f"{detail or 'error'}: {request.method} {request.url.path}"}, code)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback by the server, never shown to the browser."""
    response = _json({"error": "the dashboard failed on this request: see its log"}, 500)
    response.headers["x-content-type-options"] = "nosniff"
    return response


def _status(exc: ConveyorError) -> int:
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)


def _problem(exc: ConveyorError) -> Response:
    return _json({"error": redact(str(exc))}, _status(exc))


class _Assets:
    """The static files, read once; ``version`` changes with their content (cache busting)."""

    def __init__(self) -> None:
        folder = resources.files("conveyor.dashboard") / "static"
        self.files = {name: (folder / name).read_bytes() for name in _TYPES}
        self.shell = (folder / "index.html").read_text()
        digest = hashlib.sha256(b"".join(self.files.values()) + self.shell.encode())
        self.version = digest.hexdigest()[:12]


class Web:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.assets = _Assets()
        self.closing = threading.Event()  # the server is stopping: end the live streams

    async def page(self, request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        token, new = csrf_token(request)
        body = (
            self.assets.shell.replace("{{root}}", html.escape(root))
            .replace("{{csrf}}", token)
            .replace("{{version}}", self.assets.version)
            .replace("{{read_only}}", "true" if self.dash.read_only else "false")
        )
        response = Response(body, media_type="text/html; charset=utf-8")
        response.headers["cache-control"] = "no-store"
        if new:
            # Lax, not Strict: a link from elsewhere to a page sends the cookie, so the page
            # keeps the token of the other open tabs instead of replacing it (their actions
            # would then be refused). The header, which no other site can set, is the guard.
            secure = request.url.scheme == "https"
            path = root or "/"
            response.set_cookie(
                CSRF_COOKIE, token, path=path, httponly=True, samesite="lax", secure=secure
            )
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.assets.files:
            return Response("not found", 404, media_type="text/plain")
        headers = {"cache-control": "public, max-age=86400"}
        return Response(self.assets.files[name], 200, headers, _TYPES[name])

    # -- reading ---------------------------------------------------------------------------

    async def _call(self, read: Callable[..., Any], *args: Any) -> Response:
        try:
            return _json(await run_in_threadpool(read, *args))
        except ConveyorError as exc:
            return _problem(exc)

    async def overview(self, request: Request) -> Response:
        return await self._call(self.dash.overview)

    async def jobs(self, request: Request) -> Response:
        q = request.query_params
        try:
            offset = int(q.get("offset") or 0)
        except ValueError:
            return _json({"error": "offset takes a whole number of jobs to skip"}, 400)
        status, queue = request.path_params["status"], q.get("queue") or None
        return await self._call(self.dash.jobs, status, queue, q.get("task"), offset)

    async def job(self, request: Request) -> Response:
        return await self._call(self.dash.job, request.path_params["job_id"])

    async def schedules(self, request: Request) -> Response:
        return await self._call(self.dash.schedules)

    async def live(self, request: Request) -> Response:
        job_id = request.path_params.get("job_id")
        read = self.dash.overview if job_id is None else functools.partial(self.dash.job, job_id)
        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        stream = _stream(read, self.closing, STREAM_LIFE)
        return StreamingResponse(stream, headers=headers, media_type="text/event-stream")

    # -- acting ----------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        if not csrf_ok(request):
            return _json({"error": "the page is out of date (no CSRF token): reload it"}, 403)
        action, params = request.path_params["action"], request.path_params
        dash = self.dash
        calls: dict[str, Callable[[], str]]
        if "job_id" in params:
            job_id = params["job_id"]
            calls = {
                "requeue": functools.partial(dash.requeue, job_id),
                "cancel": functools.partial(dash.cancel, job_id),
                "delete": functools.partial(dash.delete, job_id),
            }
        else:
            queue, status = params["queue"], request.query_params.get("status", "")
            calls = {
                "pause": functools.partial(dash.pause, queue),
                "resume": functools.partial(dash.resume, queue),
                "purge": functools.partial(dash.purge, queue),
                "requeue": functools.partial(dash.requeue_all, queue, status),
            }
        call = calls.get(action)
        if call is None:
            return _json({"error": f"no action {action!r}: use {', '.join(calls)}"}, 404)
        try:
            return _json({"message": await run_in_threadpool(call)})
        except ConveyorError as exc:
            return _problem(exc)

    async def refuse(self, request: Request) -> Response:
        return _json({"error": _READ_ONLY}, 403)


async def _stream(
    read: Callable[[], dict[str, Any]], closing: threading.Event, life: float
) -> AsyncIterator[bytes]:
    """Server-sent events: each document that differs from the last one sent (its ``now``
    aside), an ``event: problem`` while it cannot be read (logged, once, when the error is
    not one of Conveyor's), a comment now and then; until the client goes, the server stops
    or ``life`` seconds have passed (the page then reconnects, to the next server if it is
    one)."""
    yield b"retry: 1000\n\n"  # reconnect within a second (a restarted server)
    last, quiet, logged = b"", 0, ""
    end = time.monotonic() + life
    while not closing.is_set() and time.monotonic() < end:
        try:
            data = await run_in_threadpool(read)
            data.pop("now", None)
            chunk = b"data: " + ENCODER.encode(data) + b"\n\n"
        except Exception as exc:  # anything: the page must keep its stream, and say why
            problem = redact(str(exc) if isinstance(exc, ConveyorError) else repr(exc))
            if not isinstance(exc, ConveyorError) and problem != logged:
                text = redact("".join(traceback.format_exception(exc)))
                log.warning("a live page of the dashboard could not be read:\n%s", text)
                logged = problem
            status = _status(exc) if isinstance(exc, ConveyorError) else 500
            error = ENCODER.encode({"error": problem, "status": status})
            chunk = b"event: problem\ndata: " + error + b"\n\n"
        if chunk != last:
            yield chunk
            last, quiet = chunk, 0
        else:
            quiet += 1
            if quiet >= _KEEPALIVE:
                yield b": still here\n\n"
                quiet = 0
        await asyncio.sleep(max(0.0, min(TICK, end - time.monotonic())))


def build(dash: Dashboard, pair: tuple[str, str] | None, hosts: frozenset[str] | None) -> Starlette:
    web = Web(dash)
    routes = [
        Route("/", web.page),
        Route("/jobs/{status}", web.page),
        Route("/job/{job_id}", web.page),
        Route("/schedules", web.page),
        Route("/static/{name}", web.static),
        Route("/api/overview", web.overview),
        Route("/api/jobs/{status}", web.jobs),
        Route("/api/job/{job_id}", web.job),
        Route("/api/schedules", web.schedules),
        Route("/api/live", web.live),
        Route("/api/live/job/{job_id}", web.live),
    ]
    if dash.read_only:  # the actions are not there at all, not only their buttons
        routes.append(Route("/api/{rest:path}", web.refuse, methods=["POST"]))
    else:
        routes += [
            Route("/api/job/{job_id}/{action}", web.act, methods=["POST"]),
            Route("/api/queue/{queue}/{action}", web.act, methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        dash.monitor.start()  # when mounted without a lifespan, the first request starts it
        try:
            yield
        finally:
            web.closing.set()  # the live streams end: the server need not wait for them
            await run_in_threadpool(dash.monitor.stop)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, pair=pair, hosts=hosts)],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, 500: _server_error},
    )
    app.state.close_streams = web.closing.set  # for a server that stops (conveyor dashboard)
    return app
