"""The shop's tests with Flask's test client: no server, no worker process. `drain` runs
the jobs here, each inside the app context, as the worker would, on a memory broker and a
clock that only `drain` moves (retries without waiting)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from shop import create_app
from shop.tasks import conveyor

from conveyor.testing import FakeClock, drain, use_memory


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "DATABASE": str(tmp_path / "shop.db")})
    with use_memory(conveyor, FakeClock()):  # a fresh, empty broker for each test
        yield app


def test_an_order_gets_its_receipt(app: Flask) -> None:
    client = app.test_client()
    taken = client.post("/orders", json={"email": "ada@example.com", "item": "flat white"})
    assert taken.status_code == 202
    order, job = taken.json["order"], taken.json["job"]  # type: ignore[index]
    assert client.get(f"/jobs/{job}").json == {"status": "queued"}

    drain(conveyor)  # the worker's part

    receipt = "Conveyor Coffee: one flat white for ada@example.com (order 1)"
    assert client.get(f"/orders/{order}").json["receipt"] == receipt  # type: ignore[index]
    assert client.get(f"/jobs/{job}").json == {"status": "succeeded", "result": receipt}


def test_a_receipt_for_a_missing_order_fails_after_its_retries(app: Flask) -> None:
    from shop.tasks import send_receipt

    job = send_receipt.delay(404)
    report = drain(conveyor)  # three retries: the FakeClock moves past each backoff
    assert report.ran == 4
    shown = app.test_client().get(f"/jobs/{job.id}").json
    assert shown is not None and shown["status"] == "failed"
    assert shown["error"] == "builtins.LookupError: no order 404"


def test_an_unknown_job_is_not_found(app: Flask) -> None:
    assert app.test_client().get("/jobs/01a24ac90673b41126b3598bdf").status_code == 404
