"""What a child process of ``manage.py conveyor_worker --pool processes`` imports as its app.

A child is a fresh interpreter (``conveyor.worker._child``) that imports the app module it
is given: this one. Importing it sets Django up (``DJANGO_SETTINGS_MODULE`` and ``sys.path``
come from the worker, as with ``--settings`` and ``--pythonpath``), imports the modules
whose tasks the worker knows, and names the project's app ``app`` on the broker the worker
uses (``CONVEYOR_URL``, which the worker sets to its own: its ``--url`` included).
"""

from __future__ import annotations

import os

import django
from django.apps import apps

from ...cli._load import use_url
from ._settings import get_app, load_tasks

if not apps.ready:
    django.setup()
load_tasks()
app = get_app()
if os.environ.get("CONVEYOR_URL"):
    use_url(app, os.environ["CONVEYOR_URL"])
