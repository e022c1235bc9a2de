"""Conveyor in a Django project (``pip install 'conveyor[django]'``).

::

    INSTALLED_APPS = [..., "django_tasks", "conveyor.contrib.django"]  # no django_tasks on 6.0+
    CONVEYOR = {"URL": "redis://localhost:6379/0"}                     # the app: see below
    TASKS = {"default": {"BACKEND": "conveyor.contrib.django.ConveyorBackend"}}

    python manage.py conveyor_worker -q default -c 8      # the options of `conveyor worker`

* ``settings.CONVEYOR`` configures the project's one ``Conveyor`` app (``get_app()``), built
  once per process when first used: ``URL``, ``TRUST``, ``SERIALIZER``, ``SECRET``,
  ``PREFIX``, ``MAX_PAYLOAD``, ``MAX_RESULT``, ``EVENTS``, ``EVENTS_KEPT`` are the arguments of
  ``Conveyor(...)`` of the same names; ``MIDDLEWARE`` lists more middleware (instances, or
  dotted paths of classes made without arguments), run after ``DatabaseConnections``;
  ``IMPORTS`` lists modules a worker imports at start besides each installed app's
  ``tasks`` module, so the tasks they define are found.
* ``ConveyorBackend`` runs the functions of Django's Tasks framework (``@task``) as Conveyor
  jobs: ``enqueue``/``aenqueue``, ``priority``, ``queue_name``, ``run_after``, and
  ``TaskResult`` read from the job (``get_result``, ``refresh``). Its ``OPTIONS``:
  ``ENQUEUE`` (``"on_commit"``, the default: inside a transaction, the job is sent when it
  commits and never if it rolls back; ``"now"``: sent at once; ``"transaction"``: written
  in the transaction itself, on the PostgreSQL broker in the same database) and
  ``DATABASE`` (the alias whose transactions it follows; ``"default"``).
* ``python manage.py conveyor_worker`` runs Django tasks and the app's own tasks, with the
  options of ``conveyor worker``; Django is set up once in each process, children of
  ``--pool processes`` too, and ``DatabaseConnections`` handles the database connections
  around every job as Django does around a request.

docs/django.md has the whole story: settings, the supported features, how Conveyor's job
statuses map to the framework's, and the worker.
"""

from __future__ import annotations

from ._backend import ConveyorBackend
from ._connections import DatabaseConnections
from ._settings import get_app

__all__ = ["ConveyorBackend", "DatabaseConnections", "get_app"]
