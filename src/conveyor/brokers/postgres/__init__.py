"""The PostgreSQL broker (``postgresql://``), written as docs/adding-a-broker.md says: the
hot-path primitives in ``broker.py``, the operations' in ``_admin.py``, what they share
(the database, the listener, the ``Listening`` watch) in ``_core.py``; tables and
migrations in ``_schema.py``, the server-side functions of the hot paths in
``_functions.py``, connections and the translation of psycopg's errors in ``_db.py``,
wake-ups in ``_listen.py``, enqueue inside the caller's own transaction in
``_transactional.py``, the key-value store in ``store.py``. ``broker.py``'s docstring says
how it works.

Importing this package imports nothing else (the registry reads URLs with ``_url`` without
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
