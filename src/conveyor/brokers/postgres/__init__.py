"""The PostgreSQL broker (``postgresql://``). Tables and migrations: ``_schema.py``; the
server-side functions of the hot paths: ``_functions.py``; wake-ups: ``_listen.py``;
enqueue inside the caller's own transaction: ``_transactional.py``.

Importing this package imports nothing else (``brokers`` reads URLs with ``_url`` without
psycopg); ``PostgresBroker`` loads the adapter, and psycopg with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import PostgresBroker

__all__ = ["PostgresBroker"]


def __getattr__(name: str) -> Any:
    if name == "PostgresBroker":
        from .broker import PostgresBroker

        return PostgresBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
