"""The Django app: ``"conveyor.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

import threading
from typing import Any

from django.apps import AppConfig

from ..._app import Conveyor


class ConveyorConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conveyor: Conveyor | None = None
        self._lock = threading.Lock()

    def ready(self) -> None:
        self.conveyor  # noqa: B018  # a bad settings.CONVEYOR fails at start-up, not at the first job

    @property
    def conveyor(self) -> Conveyor:
        """The project's app, made from ``settings.CONVEYOR`` on first use (opening nothing:
        its broker opens when first used too)."""
        if self._conveyor is None:
            with self._lock:
                if self._conveyor is None:
                    from ._settings import build_app

                    self._conveyor = build_app()
        return self._conveyor
