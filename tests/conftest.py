"""Fixtures for every test directory.

The private ``redis-server`` fixtures (``redis_server``, ``fresh_redis_server``,
``aof_redis_server``) live in ``tests/redis_server.py``, loaded here as a plugin. This
folder is not a package: pytest puts it on ``sys.path`` when it imports this file, which is
how ``redis_server`` is found (and how test modules import its helpers).
"""

pytest_plugins = ["redis_server", "postgres_server"]
