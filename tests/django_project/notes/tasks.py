"""Tasks of every kind the backend runs; a worker imports this module at start."""

import asyncio
from typing import Any

from django.db import transaction

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

from conveyor.contrib.django import get_app

from .models import Note

app = get_app()


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="other", priority=-30)
def shout(text: str) -> str:
    return text.upper()


@task()
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def whoami(context: Any, tag: str) -> dict[str, Any]:
    result = context.task_result
    return {"id": result.id, "attempt": context.attempt, "tag": tag, "backend": result.backend}


@task()
async def add_later(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task()
async def count_notes() -> int:
    return await Note.objects.acount()


@task()
def pair() -> tuple[int, str]:
    return (1, "two")  # JSON has no tuple: the framework's result is a list


@task()
def unstorable() -> object:
    return object()


@task()
def unencodable(kind: str) -> Any:
    """A value the framework's normalization keeps and the worker's codec refuses."""
    return {"nan": float("nan"), "int_key": {1: "a"}, "big": "y" * (2**20 + 1)}[kind]


@task(backend="now")
def write_note(text: str) -> int:
    return int(Note.objects.create(text=text).pk)


@task()
def autocommit_off_and_raise(text: str) -> None:
    transaction.set_autocommit(False)
    Note.objects.create(text=text)  # never committed
    raise RuntimeError("autocommit left off, with a write pending")


@task()
def leave_transaction_open(text: str) -> None:
    transaction.atomic().__enter__()
    Note.objects.create(text=text)
    raise RuntimeError("a transaction left open")


@app.task
def conveyor_own(x: int) -> int:
    return x * 10
