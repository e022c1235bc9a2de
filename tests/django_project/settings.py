import os
from pathlib import Path

FOLDER = Path(os.environ["CONVEYOR_TEST_DIR"])

SECRET_KEY = "tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None  # the test's logging stays as pytest set it

INSTALLED_APPS = ["django_tasks", "conveyor.contrib.django", "django_project.notes"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": FOLDER / "django.sqlite3",
        # Persistent connections: a job that spoils one would spoil the next job's.
        "CONN_MAX_AGE": None,
        "OPTIONS": {"timeout": 20},
    }
}

CONVEYOR = {"URL": f"sqlite:///{FOLDER}/conveyor.db"}

TASKS = {
    "default": {
        "BACKEND": "conveyor.contrib.django.ConveyorBackend",
        "QUEUES": ["default", "other"],
    },
    "now": {
        "BACKEND": "conveyor.contrib.django.ConveyorBackend",
        "QUEUES": [],  # any queue
        "OPTIONS": {"ENQUEUE": "now"},
    },
}
