"""The shop against a real `flask --app shop conveyor worker` process, as in production:
the task reads the worker's own Flask config and database through the app context."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shop import create_app
from shop.tasks import conveyor

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["threads", "processes"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Start the worker on a database and a broker of the test's; stop it with SIGTERM."""
    config = {"DATABASE": str(tmp_path / "shop.db"), "CONVEYOR_URL": f"sqlite:///{tmp_path}/q.db"}
    env = dict(
        os.environ,
        FLASK_DATABASE=config["DATABASE"],
        FLASK_CONVEYOR_URL=config["CONVEYOR_URL"],
        FLASK_SHOP_NAME="Conveyor Coffee (worker)",  # what only the worker's app says
        PYTHONPATH=str(HERE),
    )
    log = tmp_path / "worker.log"  # a file: a pipe nobody reads fills up and blocks the worker
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "shop", "conveyor", "worker", "-c", "2",
             "--pool", request.param],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield config
    finally:
        conveyor.close()
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        assert code == 0, log.read_text()


@pytest.mark.timeout(60)
def test_the_worker_writes_the_receipt_in_its_app_context(config: dict[str, Any]) -> None:
    client = create_app(config).test_client()
    taken = client.post("/orders", json={"email": "ada@example.com", "item": "cortado"}).json
    assert taken is not None
    receipt = conveyor.job(taken["job"]).result(timeout=30)
    assert receipt == "Conveyor Coffee (worker): one cortado for ada@example.com (order 1)"
    assert client.get(f"/orders/{taken['order']}").json == {
        "id": 1, "email": "ada@example.com", "item": "cortado", "receipt": receipt,
    }  # fmt: skip
