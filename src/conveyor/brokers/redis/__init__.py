"""The Redis Streams broker. Key schema: ``_keys.py``; scripts: the ``.lua`` files here."""

from .broker import RedisBroker

__all__ = ["RedisBroker"]
