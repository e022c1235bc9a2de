"""`conveyor worker shop.tasks` with FLASK_APP=shop, as docs/flask.md offers it, in a real
process: the worker loads the shop's Flask app before it opens its broker, so it takes jobs
from the broker the shop's config names (the one the web app sends to), not from
./conveyor.db, and runs them in the app context."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SHOP = Path(__file__).resolve().parents[2] / "examples" / "flask"


@pytest.mark.timeout(90)
def test_conveyor_worker_of_the_tasks_module_serves_the_flask_apps_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "flask"
    shutil.copytree(SHOP, folder, ignore=shutil.ignore_patterns("instance", "__pycache__"))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("CONVEYOR_URL", raising=False)
    from shop import create_app
    from shop.tasks import conveyor

    env = dict(os.environ, FLASK_APP="shop", PYTHONPATH=str(folder))
    env.pop("PYTHONSAFEPATH", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "shop.tasks", "-c", "1"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        app = create_app()  # the shop's default config: instance/conveyor.db
        taken = app.test_client().post("/orders", json={"email": "ada@x.org", "item": "mocha"})
        assert taken.json is not None
        receipt = conveyor.job(taken.json["job"]).result(timeout=30)
        assert receipt == "Conveyor Coffee: one mocha for ada@x.org (order 1)"
    finally:
        conveyor.close()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        for name in [n for n in sys.modules if n == "shop" or n.startswith("shop.")]:
            del sys.modules[name]  # the copy is gone with tmp_path
    log = worker.stdout.read().decode() if worker.stdout else ""
    assert code == 0, log
    assert f"broker sqlite:///{folder}/instance/conveyor.db" in log
    assert not (folder / "conveyor.db").exists(), log
