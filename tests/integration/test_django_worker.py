"""``python -m django conveyor_worker`` (what ``manage.py conveyor_worker`` runs) as a real
subprocess on the test project: Django set up in each child of ``--pool processes``, and a
job that spoils its database connection does not spoil the next one on that child."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.timeout(120)
def test_processes_pool_runs_django_tasks_and_cleans_up_after_a_spoiling_job(
    django_project: Path, django_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    from conveyor.contrib.django import get_app
    from django_project.notes import tasks
    from django_project.notes.models import Note

    worker = django_worker("--pool", "processes", "-c", "1", "-q", "default")
    app: Any = get_app()
    # One child, one job at a time, in order, on one persistent connection.
    spoilt = tasks.autocommit_off_and_raise.enqueue("never committed")
    left_open = tasks.leave_transaction_open.enqueue("rolled back")
    written = tasks.write_note.enqueue("committed")
    context = tasks.whoami.enqueue("child")
    counted = tasks.count_notes.enqueue()
    app.job(counted.id).result(timeout=60)

    assert tasks.autocommit_off_and_raise.get_result(spoilt.id).status == "FAILED"
    assert tasks.leave_transaction_open.get_result(left_open.id).status == "FAILED"
    note_id = tasks.write_note.get_result(written.id).return_value
    assert Note.objects.get(pk=note_id).text == "committed"
    assert not Note.objects.filter(text__in=["never committed", "rolled back"]).exists()
    ran = tasks.whoami.get_result(context.id)
    assert ran.return_value["id"] == context.id
    assert ran.worker_ids[0].split(".")[-1] != str(worker.pid)  # a child ran it
    assert tasks.count_notes.get_result(counted.id).return_value == Note.objects.count()
    log = (django_project / "worker0.log").read_text()
    assert "left a transaction open on database 'default'" in log
