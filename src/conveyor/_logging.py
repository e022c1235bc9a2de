"""Logging for ``conveyor`` processes (placeholder: text only, until the handlers land)."""

from __future__ import annotations

import logging


def configure(level: str, fmt: str) -> None:
    """Log at ``level`` (debug, info, warning, error) to stderr; ``fmt`` is text or json."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
