"""Django's Tasks on the PostgreSQL broker in Django's own database, with
``"ENQUEUE": "transaction"``: the job is written in Django's transaction, so it commits and
rolls back with the rows beside it. A subprocess, since Django is set up once per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from postgres_server import schema_url

pytestmark = pytest.mark.postgres

TASKS = """
from django_tasks import task

@task()
def double(x: int) -> int:
    return 2 * x
"""

SCRIPT = """
import sys
import django
from django.conf import settings

url, database, mode = sys.argv[1:]
settings.configure(
    INSTALLED_APPS=["django_tasks", "conveyor.contrib.django"],
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": database,
                           "HOST": "127.0.0.1", "USER": "postgres"}},
    CONVEYOR={"URL": url},
    TASKS={"default": {"BACKEND": "conveyor.contrib.django.ConveyorBackend",
                       "OPTIONS": {"ENQUEUE": mode}}},
    USE_TZ=True,
)
django.setup()
from django.db import connection, transaction

from conveyor.contrib.django import get_app
from conveyor.testing import drain

import shop_tasks

app = get_app()


class Undo(Exception):
    pass


try:
    with transaction.atomic():
        undone = shop_tasks.double.enqueue(1)
        with connection.cursor() as cursor:  # the job is a row of this transaction
            cursor.execute("SELECT txid_current_if_assigned() IS NOT NULL")
            print("written in the transaction:", cursor.fetchone()[0])
        print("seen by others before the commit:", app.broker.get([undone.id])[0] is not None)
        raise Undo
except Undo:
    pass
print("after a rollback:", app.broker.get([undone.id])[0] is not None)

with transaction.atomic():
    kept = shop_tasks.double.enqueue(21)
    print("before the commit:", app.broker.get([kept.id])[0] is not None)
print("after the commit:", app.broker.get([kept.id])[0].status.value)
drain(app)
kept.refresh()
print("result:", kept.status, kept.return_value)
"""


def _run(tmp_path: Path, url: str, mode: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "shop_tasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "script.py").write_text(SCRIPT)
    database = url.partition("?")[0].rpartition("/")[2]
    return subprocess.run(
        [sys.executable, "script.py", url, database, mode],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_job_enqueued_in_the_transaction_commits_and_rolls_back_with_it(
    tmp_path: Path, postgres_url: str
) -> None:
    done = _run(tmp_path, schema_url(postgres_url), "transaction")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "written in the transaction: True",
        "seen by others before the commit: False",
        "after a rollback: False",
        "before the commit: False",
        "after the commit: queued",
        "result: SUCCESSFUL 42",
    ]


def test_without_it_a_job_sent_at_once_stays_after_a_rollback(
    tmp_path: Path, postgres_url: str
) -> None:
    done = _run(tmp_path, schema_url(postgres_url), "now")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:3] == [
        "seen by others before the commit: True",
        "after a rollback: True",  # the job of an undone change: what the mode prevents
    ]


def test_the_transaction_mode_is_refused_on_another_broker(tmp_path: Path) -> None:
    done = _run(tmp_path, f"sqlite:///{tmp_path}/jobs.db", "transaction")
    assert done.returncode != 0
    assert "'transaction'" in done.stderr and "postgresql://" in done.stderr
