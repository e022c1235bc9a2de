"""The dashboard's ASGI application in process (no sockets): its JSON API, the auth, the
CSRF token, read-only, escaping, redaction, mounting under a prefix, the live stream, and
the command's refusal to listen in the open without a password.

What a person sees in a browser, with a real server and real workers, is in
``tests/integration/test_dashboard_browser.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from starlette.types import ASGIApp, Message

from conveyor import ConfigurationError, Conveyor, JobStatus, workflows
from conveyor.brokers import Finish
from conveyor.cli import cli
from conveyor.cli.dashboard import allowed_hosts, loopback
from conveyor.dashboard import _graph, _web, asgi_app
from conveyor.testing import FakeClock, MemoryBroker, drain
from conveyor.workflows import chain, chord

AUTH = ("admin", "s3cret")


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


@pytest.fixture
def app() -> Iterator[Conveyor]:
    with Conveyor("memory://") as app:

        @app.task(queue="mail")
        def send(to: str) -> str:
            return f"sent to {to}"

        @app.task(queue="reports", retries=0)
        def report(month: int) -> None:
            raise ValueError(f"no data for month {month}")

        @app.periodic(every=300)
        def tidy() -> None:
            return None

        yield app


def client(app: Conveyor, **options: Any) -> httpx.AsyncClient:
    return serve(asgi_app(app, refresh=0, **options))


def serve(web: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=web)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost:8765")


async def acting(web: httpx.AsyncClient, page: str = "/") -> dict[str, str]:
    """The CSRF header of a page the client loaded (its cookie is kept by the client)."""
    text = (await web.get(page)).text
    return {"x-conveyor-csrf": text.split('name="conveyor-csrf" content="', 1)[1][:43]}


def failed_job(app: Conveyor) -> str:
    job = app.registry[_name(app, "report")].delay(3)
    drain(app)
    assert job.status is JobStatus.FAILED
    return job.id


def _name(app: Conveyor, short: str) -> str:
    return next(n for n in app.registry if n.endswith(":" + short) or n.endswith("." + short))


async def test_overview_counts_queues_and_throughput(app: Conveyor) -> None:
    send = app.registry[_name(app, "send")]
    for i in range(3):
        send.delay(f"u{i}@example.com")
    failed_job(app)
    send.delay("later@example.com")
    data = (await client(app).get("/api/overview")).json()
    queues = {q["queue"]: q for q in data["queues"]}
    assert queues["mail"]["succeeded"] == 3 and queues["mail"]["queued"] == 1
    assert queues["mail"]["head_since"] is not None and queues["mail"]["paused"] is False
    assert queues["reports"]["failed"] == 1 and queues["reports"]["head_since"] is None
    assert data["totals"]["succeeded"] == 3 and data["totals"]["failed"] == 1
    charts = data["charts"]
    assert sum(charts["succeeded"]) == 3 and sum(charts["failed"]) == 1 and charts["events"]
    assert queues["mail"]["done_last_minute"] == 3
    assert charts["backlog"][-1] == 1 and charts["backlog_by_queue"]["mail"][-1] == 1
    assert data["broker"] == "memory://" and data["read_only"] is False


async def test_lists_page_by_offset_and_filter_by_queue_and_task(app: Conveyor) -> None:
    send, report = app.registry[_name(app, "send")], app.registry[_name(app, "report")]
    ids = [send.delay(f"u{i}").id for i in range(120)]
    report.options(queue="mail").delay(1)
    web = client(app)
    first = (await web.get("/api/jobs/queued", params={"queue": "mail"})).json()
    assert [j["id"] for j in first["jobs"]] == ids[:50]
    assert first["next_offset"] == 50 and first["count"] == 121
    assert first["jobs"][0]["task"] == _name(app, "send") and first["jobs"][0]["args"] == '"u0"'
    last = (await web.get("/api/jobs/queued", params={"queue": "mail", "offset": 100})).json()
    assert len(last["jobs"]) == 21 and last["next_offset"] is None
    only = (await web.get("/api/jobs/queued", params={"task": _name(app, "report")})).json()
    assert [j["task"] for j in only["jobs"]] == [_name(app, "report")]
    assert only["next_offset"] is None and _name(app, "send") in only["tasks"]
    assert (await web.get("/api/jobs/lost")).status_code == 400
    assert (await web.get("/api/jobs/queued", params={"queue": "no way"})).status_code == 400
    assert (await web.get("/api/jobs/queued", params={"offset": "x"})).status_code == 400


async def test_an_offset_past_the_last_job_reads_nothing_and_a_huge_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite an offset past 2**63 was an OverflowError (500); on Redis, a broker reads
    every job it skips."""
    with Conveyor(f"sqlite:///{tmp_path}/jobs.db") as app:

        @app.task(queue="mail")
        def send(to: str) -> None:
            return None

        send.delay("a")
        send.delay("b")
        asked: list[int] = []
        entries = app.broker.entries

        def counted(*args: Any, **kwargs: Any) -> Any:
            asked.append(1)
            return entries(*args, **kwargs)

        monkeypatch.setattr(app.broker, "entries", counted)
        web = client(app)
        for offset in (2, 50, 100_000):
            page = (await web.get("/api/jobs/queued", params={"offset": offset})).json()
            assert page["jobs"] == [] and page["next_offset"] is None and page["count"] == 2
        assert asked == []
        for offset in (100_001, 2**63, 10**40):
            refused = await web.get("/api/jobs/queued", params={"offset": offset})
            assert refused.status_code == 400 and "from 0 to 100,000" in refused.json()["error"]
        page = (await web.get("/api/jobs/queued", params={"offset": 1})).json()
        assert [j["args"] for j in page["jobs"]] == ['"b"'] and asked


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


async def test_a_job_with_arguments_json_has_no_form_for_leaves_its_list_readable() -> None:
    with Conveyor("memory://", serializer="pickle", secret="k") as app:

        @app.task(queue="mail")
        def send(to: Any, **options: Any) -> None:
            return None

        send.delay({(1, 2): 3}, when={frozenset({1}): b"x"})
        send.delay(_Unprintable())
        send.delay("plain")
        web = client(app)
        page = await web.get("/api/jobs/queued")
        assert page.status_code == 200
        shown = [j["args"] for j in page.json()["jobs"]]
        assert shown == [
            '{"(1, 2)":3}, "when":{"frozenset({1})":"eA=="}',
            '"(cannot be shown: RuntimeError)"',
            '"plain"',
        ]
        job = (await web.get(f"/api/job/{page.json()['jobs'][0]['id']}")).json()["job"]
        assert job["args"] == [{"(1, 2)": 3}]


async def test_a_job_whose_argument_cannot_be_shown_has_its_page_and_its_actions() -> None:
    """A pickled argument whose repr raises made the job's page a 500 and its live stream
    a problem: the page had no actions."""
    with Conveyor("memory://", serializer="pickle", secret="k") as app:

        @app.task(queue="mail")
        def send(to: Any, **options: Any) -> None:
            return None

        job = send.delay(_Unprintable(), "plain", cc={"x": _Unprintable()})
        web = client(app)
        answer = await web.get(f"/api/job/{job.id}")
        assert answer.status_code == 200, answer.text
        shown = answer.json()["job"]
        assert shown["args"] == ["(cannot be shown: RuntimeError)", "plain"]
        assert shown["kwargs"] == {"cc": {"x": "(cannot be shown: RuntimeError)"}}
        assert shown["can_cancel"] and shown["can_delete"] and shown["task"] == _name(app, "send")
        live = await _first_event(asgi_app(app, refresh=0), f"/api/live/job/{job.id}")
        assert live["job"]["args"] == shown["args"]
        csrf = await acting(web)
        assert (await web.post(f"/api/job/{job.id}/cancel", headers=csrf)).status_code == 200
        assert app.job(job.id).status is JobStatus.CANCELLED


async def test_job_page_has_the_traceback_the_timeline_and_the_workflow(app: Conveyor) -> None:
    web = client(app)
    job = (await web.get(f"/api/job/{failed_job(app)}")).json()["job"]
    assert job["status"] == "failed" and job["args"] == [3] and job["can_requeue"]
    assert job["error"]["type"] == "builtins.ValueError"
    assert "ValueError: no data for month 3" in job["error"]["traceback"]
    assert [e["type"] for e in job["timeline"]] == ["job.enqueued", "job.started", "job.failed"]
    send = app.registry[_name(app, "send")]
    last = chain(send.s("a"), send.s(), send.s()).delay()
    first, middle, end = last.steps
    graph = (await web.get(f"/api/job/{middle}")).json()["job"]["graph"]
    assert [n["id"] for n in graph["downstream"]] == [end]
    assert graph["downstream"][0]["status"] == "scheduled"
    after = send.options(depends_on=[first]).delay("b")
    upstream = (await web.get(f"/api/job/{after.id}")).json()["job"]["graph"]["upstream"]
    assert upstream == [{"id": first, "status": "queued", "task": _name(app, "send")}]
    assert (await web.get("/api/job/nope")).status_code == 404
    assert (await web.get("/api/job/bad id!")).status_code in (400, 404)


async def test_a_jobs_graph_is_its_workflow_and_dependencies_whole_but_bounded(
    app: Conveyor,
) -> None:
    web = client(app)
    send = app.registry[_name(app, "send")]
    first, middle, end = chain(send.s("a"), send.s(), send.s()).delay().steps
    after = send.options(depends_on=[end]).delay("b")  # known from its job.enqueued event
    graph = (await web.get(f"/api/job/{middle}")).json()["job"]["graph"]
    assert {n["id"]: n["level"] for n in graph["nodes"]} == {
        first: 0, middle: 1, end: 2, after.id: 3,
    }  # fmt: skip
    assert {(e["from"], e["to"], e["kind"]) for e in graph["edges"]} == {
        (first, middle, "workflow"), (middle, end, "workflow"), (end, after.id, "depends"),
    }  # fmt: skip
    assert graph["upstream"] == [{"id": first, "status": "queued", "task": _name(app, "send")}]
    assert not graph["more"]
    # From the end of a long chain: the nearest steps, as many as a graph shows.
    steps = chain(*(send.s(str(i)) for i in range(60))).delay().steps
    graph = (await web.get(f"/api/job/{steps[-1]}")).json()["job"]["graph"]
    assert {n["id"] for n in graph["nodes"]} == set(steps[-_graph.MOST :])
    assert graph["more"]
    # A group's callback keeps the first AFTER_KEPT of its members: the graph says so.
    callback = chord([send.s(str(i)) for i in range(30)], send.s()).delay()
    graph = (await web.get(f"/api/job/{callback.id}")).json()["job"]["graph"]
    assert len(graph["upstream"]) == workflows.AFTER_KEPT and graph["more"]
    assert {n["level"] for n in graph["nodes"] if n["id"] != callback.id} == {0}


async def test_schedules_come_with_their_next_fire_time(app: Conveyor) -> None:
    (schedule,) = (await client(app).get("/api/schedules")).json()["schedules"]
    assert schedule["name"] == _name(app, "tidy") and schedule["every"] == 300
    assert schedule["next_fire_at"].endswith("Z") and len(schedule["upcoming"]) == 5


GUARDED = ["/", "/jobs/failed", "/job/x", "/schedules", "/static/app.js", "/api/overview",
           "/api/jobs/failed", "/api/job/x", "/api/schedules", "/api/live"]  # fmt: skip


async def test_with_auth_every_page_and_call_needs_it(app: Conveyor) -> None:
    web = client(app, auth="admin:s3cret")
    refused = ({}, _basic("admin", "wrong"), _basic("root", "s3cret"), {"authorization": "Basic !"})
    for headers in refused:
        for path in GUARDED:
            response = await web.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"].startswith("Basic realm=")
        assert (await web.post("/api/queue/mail/pause", headers=headers)).status_code == 401
    assert app.broker.paused() == []
    web.headers.update(_basic(*AUTH))
    for path in ("/", "/static/app.js", "/api/overview", "/api/schedules"):
        assert (await web.get(path)).status_code == 200, path
    csrf = await acting(web)
    assert (await web.post("/api/queue/mail/pause", headers=csrf)).status_code == 200
    assert app.broker.paused() == ["mail"]


async def test_without_auth_only_this_machines_host_names_are_answered(app: Conveyor) -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 is the dashboard's own origin
    for the browser; the Host it names is the one thing that gives it away."""
    web = client(app)
    csrf = await acting(web)
    evil = {"host": "evil.example:8765"}
    for path in GUARDED:
        response = await web.get(path, headers={"host": "evil.example"})
        assert response.status_code == 403, path
        assert "not for the host 'evil.example'" in response.json()["error"]
        assert "--allowed-host" in response.json()["error"]
    assert (await web.post("/api/queue/mail/purge", headers={**csrf, **evil})).status_code == 403
    assert (await web.post("/api/queue/mail/pause", headers={**csrf, **evil})).status_code == 403
    assert app.broker.paused() == []
    for host in ("localhost", "LOCALHOST:80", "127.0.0.1:8765", "127.8.0.1", "[::1]:8765"):
        assert (await web.get("/api/overview", headers={"host": host})).status_code == 200, host
    for host in ("", "localhost.evil.example", "127.0.0.1.evil.example", "[::2]", "10.0.0.5"):
        assert (await web.get("/api/overview", headers={"host": host})).status_code == 403, host
    proxied = client(app, allowed_hosts=["ops.example.com"])
    assert (await proxied.get("/", headers={"host": "ops.example.com"})).status_code == 200
    assert (await proxied.get("/", headers={"host": "evil.example"})).status_code == 403
    with_auth = client(app, auth=AUTH)  # the password is the guard: any Host
    assert (await with_auth.get("/", headers={**evil, **_basic(*AUTH)})).status_code == 200
    for bad in ("ops.example.com", ["ops.example.com:443"], ["http://ops.example.com"], [""]):
        with pytest.raises(ConfigurationError, match="allowed_hosts"):
            asgi_app(app, allowed_hosts=bad)


async def test_actions_need_the_csrf_token_of_a_page(app: Conveyor) -> None:
    web = client(app)
    assert (await web.post("/api/queue/mail/pause")).status_code == 403
    await web.get("/")  # the cookie alone is not enough: a page of another site sends it too
    assert (await web.post("/api/queue/mail/pause")).status_code == 403
    forged = {"x-conveyor-csrf": "x" * 43}
    assert (await web.post("/api/queue/mail/pause", headers=forged)).status_code == 403
    assert app.broker.paused() == []
    csrf = await acting(web)
    assert (await web.post("/api/queue/mail/pause", headers=csrf)).status_code == 200
    assert app.broker.paused() == ["mail"]
    cookie = (await client(app).get("/")).headers["set-cookie"].lower()
    assert "samesite=lax" in cookie and "httponly" in cookie  # a link in keeps the token


async def test_actions_requeue_cancel_pause_and_purge(app: Conveyor) -> None:
    web = client(app)
    csrf = await acting(web)
    job_id = failed_job(app)
    answer = await web.post(f"/api/job/{job_id}/requeue", headers=csrf)
    assert answer.json() == {"message": f"requeued {job_id}"}
    assert app.job(job_id).status is JobStatus.QUEUED
    assert (await web.post(f"/api/job/{job_id}/requeue", headers=csrf)).status_code == 409
    assert (await web.post(f"/api/job/{job_id}/cancel", headers=csrf)).status_code == 200
    assert app.job(job_id).status is JobStatus.CANCELLED
    assert (await web.post("/api/job/nope/cancel", headers=csrf)).status_code == 404
    others = [failed_job(app) for _ in range(2)]
    answer = await web.post("/api/queue/reports/requeue?status=failed", headers=csrf)
    assert answer.json()["message"] == "requeued 2 failed job(s) of queue reports"
    assert {app.job(i).status for i in others} == {JobStatus.QUEUED}
    for status in ("done", "queued", ""):
        bad = await web.post(f"/api/queue/reports/requeue?status={status}", headers=csrf)
        assert bad.status_code == 400, status
        assert f"failed, dead or cancelled (the jobs that ended), not {status!r}" in bad.text
    purged = await web.post("/api/queue/reports/purge", headers=csrf)
    assert purged.json()["message"].startswith("deleted 2 queued")
    await web.post("/api/queue/reports/pause", headers=csrf)
    assert app.broker.paused() == ["reports"]
    await web.post("/api/queue/reports/resume", headers=csrf)
    assert app.broker.paused() == []
    assert (await web.post("/api/queue/reports/explode", headers=csrf)).status_code == 404


async def test_delete_takes_a_job_away_but_not_a_running_one(app: Conveyor) -> None:
    web = client(app)
    csrf = await acting(web)
    job_id = failed_job(app)
    assert (await web.get(f"/api/job/{job_id}")).json()["job"]["can_delete"]
    assert (await web.post(f"/api/job/{job_id}/delete")).status_code == 403  # no CSRF token
    answer = await web.post(f"/api/job/{job_id}/delete", headers=csrf)
    assert answer.json() == {"message": f"deleted {job_id} (it was failed)"}
    assert (await web.get(f"/api/job/{job_id}")).status_code == 404
    assert (await web.get("/api/jobs/failed")).json()["jobs"] == []
    assert (await web.post(f"/api/job/{job_id}/delete", headers=csrf)).status_code == 404
    send = app.registry[_name(app, "send")]
    busy, waiting = send.delay("a"), send.delay("b")
    [d] = app.broker.fetch(["mail"], "w", 1, 30.0, 0.0)
    assert d.id == busy.id
    assert (await web.get(f"/api/job/{busy.id}")).json()["job"]["can_delete"]  # worker gone?
    refused = await web.post(f"/api/job/{busy.id}/delete", headers=csrf)
    assert refused.status_code == 409
    assert "live lease" in refused.json()["error"] and "cancel it" in refused.json()["error"]
    assert app.job(busy.id).status is JobStatus.RUNNING
    answer = await web.post(f"/api/job/{waiting.id}/delete", headers=csrf)
    assert answer.json() == {"message": f"deleted {waiting.id} (it was queued)"}
    assert app.broker.get([waiting.id]) == [None]


async def test_delete_takes_a_running_job_whose_worker_is_gone() -> None:
    clock = FakeClock()
    with Conveyor("memory://", clock=clock) as app:

        @app.task(queue="mail")
        def send(to: str) -> str:
            return f"sent to {to}"

        web = client(app)
        csrf = await acting(web)
        job = send.delay("a")
        [d] = app.broker.fetch(["mail"], "w", 1, 30.0, 0.0)
        clock.advance(31)  # the worker died: its lease expired, no fetch reclaimed the job
        answer = await web.post(f"/api/job/{job.id}/delete", headers=csrf)
        assert answer.json() == {"message": f"deleted {job.id} (it was running)"}
        assert app.broker.get([job.id]) == [None]
        assert app.broker.finish([Finish(d, JobStatus.SUCCEEDED, b"late")]) == [False]


async def test_read_only_takes_every_action_away_on_the_server(app: Conveyor) -> None:
    web = client(app, read_only=True)
    csrf = await acting(web)
    job_id = failed_job(app)
    for path in (f"/api/job/{job_id}/requeue", f"/api/job/{job_id}/cancel",
                 f"/api/job/{job_id}/delete", "/api/queue/reports/pause",
                 "/api/queue/reports/requeue?status=failed",
                 "/api/queue/reports/purge"):  # fmt: skip
        response = await web.post(path, headers=csrf)
        assert response.status_code == 403 and "read-only" in response.json()["error"], path
    assert app.job(job_id).status is JobStatus.FAILED and app.broker.paused() == []
    job = (await web.get(f"/api/job/{job_id}")).json()
    assert job["read_only"] and not job["job"]["can_requeue"] and not job["job"]["can_cancel"]
    assert not job["job"]["can_delete"]
    assert 'name="conveyor-read-only" content="true"' in (await web.get("/")).text


async def test_pages_carry_no_job_data_and_run_no_inline_script(app: Conveyor) -> None:
    hostile = "<script>window.pwned=1</script><img src=x onerror=alert(1)>"
    job = app.registry[_name(app, "send")].options(queue="mail").delay(hostile)
    web = client(app)
    for path in ("/", f"/job/{job.id}", "/jobs/queued"):
        page = await web.get(path)
        assert "pwned" not in page.text and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    data = await web.get(f"/api/job/{job.id}")
    assert data.headers["content-type"] == "application/json"
    assert data.headers["x-content-type-options"] == "nosniff"
    assert data.json()["job"]["args"] == [hostile]  # as it is: the page puts it in as text


async def test_no_password_of_the_broker_url_is_ever_shown() -> None:
    url = "redis://ops:hunter2@db.internal:6379/0"
    with Conveyor(url, broker=MemoryBroker()) as app:
        web = client(app)
        shown = [(await web.get(p)).text for p in ("/", "/api/overview", "/api/jobs/queued")]
    assert all("hunter2" not in text for text in shown)
    assert json.loads(shown[1])["broker"] == "redis://ops:***@db.internal:6379/0"


async def test_mounted_under_a_prefix_in_fastapi(app: Conveyor) -> None:
    outer = FastAPI()
    outer.mount("/ops/conveyor", asgi_app(app, refresh=0))
    web = serve(outer)
    page = await web.get("/ops/conveyor/")
    assert '<meta name="conveyor-root" content="/ops/conveyor">' in page.text
    assert 'src="/ops/conveyor/static/app.js?v=' in page.text
    assert "Path=/ops/conveyor;" in page.headers["set-cookie"]
    assert (await web.get("/ops/conveyor/static/app.css")).status_code == 200
    assert (await web.get("/ops/conveyor/api/overview")).json()["broker"] == "memory://"
    csrf = await acting(web, "/ops/conveyor/")
    paused = await web.post("/ops/conveyor/api/queue/mail/pause", headers=csrf)
    assert paused.status_code == 200


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"localhost:8765")], "client": ("127.0.0.1", 1),
        "server": ("localhost", 8765),
    }  # fmt: skip


async def _events(
    web: ASGIApp, path: str, enough: Callable[[list[bytes]], bool] | None = None
) -> list[bytes]:
    """The messages a live stream sends, until ``enough`` of them came (then the client goes
    away) or the server ends the stream (``enough`` None: the client never goes)."""
    found: list[bytes] = []
    done = asyncio.Event()

    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert dict(message["headers"])[b"content-type"].startswith(b"text/event-stream")
        if message["type"] == "http.response.body" and message["body"]:
            found.append(message["body"])
            if enough is not None and enough(found):
                done.set()

    await asyncio.wait_for(web(_scope(path), receive, send), timeout=20)
    return found


async def _first_event(web: ASGIApp, path: str) -> dict[str, Any]:
    """The first document a live stream sends; then the client goes away."""
    found = await _events(web, path, lambda found: found[-1].startswith(b"data: "))
    return dict(json.loads(found[-1][len(b"data: ") :]))


async def test_live_streams_send_the_overview_and_a_job(app: Conveyor) -> None:
    job = app.registry[_name(app, "send")].delay("x")
    web = asgi_app(app, refresh=0)
    overview = await _first_event(web, "/api/live")
    assert overview["totals"]["queued"] == 1
    one = await _first_event(web, f"/api/live/job/{job.id}")
    assert one["job"]["id"] == job.id and one["job"]["status"] == "queued"


async def test_a_problem_says_its_status_and_a_missing_page_is_a_json_error(
    app: Conveyor,
) -> None:
    """The live stream of a job that is not there says 404 (the page told "broker
    unreachable" for every problem); a path or a method the dashboard does not have is a
    JSON error, as the others are."""
    web = asgi_app(app, refresh=0)
    sent = await _events(web, "/api/live/job/no-such-job", lambda s: len(s) > 1)
    assert sent[1].startswith(b"event: problem\ndata: ")
    problem = json.loads(sent[1].split(b"data: ", 1)[1])
    assert problem["status"] == 404 and "no job with id" in problem["error"]
    web = client(app)
    missing = await web.get("/api/nonexistent")
    assert missing.status_code == 404 and missing.json()["error"].endswith("/api/nonexistent")
    method = await web.get("/api/queue/default/pause")
    assert method.status_code == 405 and "error" in method.json()


async def test_a_live_stream_ends_by_itself_and_when_the_app_stops(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mounted, the dashboard is not told that its server stops: an open stream would keep
    the server waiting, so each one ends after a while (the page reconnects at once)."""
    monkeypatch.setattr(_web, "STREAM_LIFE", 0.3)
    web = asgi_app(app, refresh=0)
    sent = await _events(web, "/api/live")  # the client never goes
    assert sent[0] == b"retry: 1000\n\n" and sent[1].startswith(b"data: ")
    monkeypatch.setattr(_web, "STREAM_LIFE", 3600.0)
    lifespan = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    said: list[str] = []

    async def receive() -> Message:
        return next(lifespan)

    async def send(message: Message) -> None:
        said.append(message["type"])

    await web({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert said == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert await _events(web, "/api/live") == [b"retry: 1000\n\n"]  # ends at once


class _Flaky(MemoryBroker):
    """Its job records cannot be read the first ``failures`` times: a bug, not a
    ``BrokerError``."""

    failures = 0

    def get(self, ids: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("lost redis://ops:hunter2@db.internal:6379/0")
        return super().get(ids)


async def test_a_live_stream_outlives_any_error_and_logs_it_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_web, "TICK", 0.01)
    broker = _Flaky()
    with Conveyor("memory://", broker=broker) as app:
        job = app.enqueue(print, "x")
        broker.failures = 3
        web = asgi_app(app, refresh=0)
        sent = await _events(web, f"/api/live/job/{job.id}", lambda s: s[-1].startswith(b"data"))
    assert sent[1] == (
        b"event: problem\ndata: "
        b'{"error":"RuntimeError(\'lost redis://ops:***@db.internal:6379/0\')","status":500}\n\n'
    )
    assert len(sent) == 3 and json.loads(sent[2][len(b"data: ") :])["job"]["id"] == job.id
    (record,) = [r for r in caplog.records if r.name == "conveyor.dashboard"]
    assert "Traceback" in record.getMessage() and "hunter2" not in record.getMessage()


def test_bad_auth_is_refused_without_echoing_it(app: Conveyor) -> None:
    for auth in ("admin", ":pw", "admin:", ("admin",), ("ad:min", "pw")):
        with pytest.raises(ConfigurationError) as caught:
            asgi_app(app, auth=auth)  # type: ignore[arg-type]
        assert "pw" not in str(caught.value).replace("PASSWORD", "")
    for bad in ("admin", "admin:", ":pw", ""):
        result = CliRunner().invoke(cli, ["dashboard", "--auth", bad])
        assert result.exit_code == 2 and "--auth takes USER:PASSWORD" in result.output
        assert "auth=" not in result.output and "pw" not in result.output


def test_the_command_listens_on_an_ipv6_address_written_in_brackets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from conveyor.cli import dashboard as command

    configs: list[uvicorn.Config] = []
    bound: list[tuple[str, int]] = []

    class Listener:  # no socket in a unit test: tests/integration/test_cli.py binds one
        def getsockname(self) -> tuple[str, int, int, int]:
            return ("::1", 8766, 0, 0)

    def listen(host: str, port: int, shown: str) -> Listener:
        bound.append((host, port))
        return Listener()

    monkeypatch.setattr(command, "_listen", listen)
    monkeypatch.setattr(uvicorn.Server, "run", lambda s, sockets: configs.append(s.config))
    args = ["dashboard", "--url", "memory://", "--host", "[::1]", "--port", "8766"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert bound == [("::1", 8766)] and configs[0].host == "::1"
    assert "on http://[::1]:8766/ (" in result.output


def test_the_command_listens_in_the_open_only_with_a_password() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "refusing to serve the dashboard on 0.0.0.0" in result.output
    assert "--auth USER:PASSWORD" in result.output and "--insecure-no-auth" in result.output
    both = runner.invoke(cli, ["dashboard", "--auth", "a:b", "--insecure-no-auth"])
    assert both.exit_code == 2 and "contradict" in both.output
    assert allowed_hosts("127.0.0.1", (), None) == [] and allowed_hosts("::", (), "a:b") is None
    assert allowed_hosts("10.0.0.5", ("ops.example.com",), None) == ["ops.example.com", "10.0.0.5"]
    assert allowed_hosts("0.0.0.0", ("ops.example.com",), "a:b") == ["ops.example.com"]
    rooted = runner.invoke(cli, ["dashboard", "--root-path", "conveyor/"])
    assert rooted.exit_code == 2 and "a path like /conveyor" in rooted.output
    assert all(loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


DJANGO = """
import asyncio, django, httpx
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="x", MIDDLEWARE=[])
urlpatterns = [path("", lambda request: HttpResponse("django's own page"))]
django.setup()

from django.core.asgi import get_asgi_application
from starlette.applications import Starlette
from starlette.routing import Mount
from conveyor import Conveyor
from conveyor import workflows
from conveyor.dashboard import _graph, _web, asgi_app

application = Starlette(routes=[  # as docs/dashboard.md shows it
    Mount("/conveyor", app=asgi_app(Conveyor("memory://"), auth=("ops", "pw"))),
    Mount("/", app=get_asgi_application()),
])

async def main():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://site") as web:
        print((await web.get("/")).text)
        print((await web.get("/conveyor/api/overview")).status_code)
        page = await web.get("/conveyor/", auth=("ops", "pw"))
        print(page.status_code, 'content="/conveyor"' in page.text)

asyncio.run(main())
"""


def test_mounted_beside_django() -> None:
    """In a subprocess: Django's settings are global to a process."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", DJANGO], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.splitlines() == ["django's own page", "401", "200 True"]


def test_one_thread_samples_for_every_viewer(app: Conveyor) -> None:
    from conveyor.dashboard._monitor import Monitor

    monitor = Monitor(app, refresh=0.01)
    app.registry[_name(app, "send")].delay("x")
    monitor.start()
    try:
        wait = time.monotonic() + 30
        while (monitor.latest is None or monitor.latest.seq < 5) and time.monotonic() < wait:
            time.sleep(0.01)
        sample = monitor.latest
        assert sample is not None and sample.seq >= 5  # no request asked for these
        assert [s.queued for s in sample.stats] == [1]
        assert monitor.charts(sample.at)["backlog"][-1] == 1
    finally:
        monitor.stop()
