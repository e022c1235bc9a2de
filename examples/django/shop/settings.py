"""Settings of the example shop: Django's Tasks framework on Conveyor.

The database is SQLite in this folder, or PostgreSQL when ``POSTGRES_DB`` names one (on
``POSTGRES_HOST``, user ``POSTGRES_USER``). Conveyor's broker is ``CONVEYOR_URL``, else an
SQLite file in this folder.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django_tasks",  # the Tasks framework's backport; Django 6.0 has it built in
    "conveyor.contrib.django",
    "orders",
]

if os.environ.get("POSTGRES_DB"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["POSTGRES_DB"],
            "HOST": os.environ.get("POSTGRES_HOST", "127.0.0.1"),
            "USER": os.environ.get("POSTGRES_USER", "postgres"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "shop.sqlite3",
            "OPTIONS": {"timeout": 20},  # the worker and the shop write at once
        }
    }

# The project's Conveyor app: the broker, and who may run what.
CONVEYOR = {
    "URL": os.environ.get("CONVEYOR_URL", f"sqlite:///{BASE_DIR}/conveyor.db"),
}

# Django's tasks run on Conveyor. A task enqueued inside a transaction is sent when it
# commits (the default, "ENQUEUE": "on_commit"), so the worker finds the rows it reads.
TASKS = {
    "default": {
        "BACKEND": "conveyor.contrib.django.ConveyorBackend",
        "QUEUES": ["default", "mail"],
    }
}
