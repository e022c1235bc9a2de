"""Fixtures for every test directory.

The private ``redis-server`` fixtures (``redis_server``, ``fresh_redis_server``,
``aof_redis_server``) live in ``tests/redis_server.py``, and the Django project's
(``django_project``, ``django_worker``) in ``tests/django_setup.py``, loaded here as plugins. This
folder is not a package: pytest puts it on ``sys.path`` when it imports this file, which is
how ``redis_server`` is found (and how test modules import its helpers).

Hypothesis runs under the ``conveyor`` profile: no per-example deadline and no "too slow"
health check, two wall-clock judgements a machine loaded by parallel tests (``make test``
runs them on several workers) could fail; what the properties check is untouched. Tests
that set their own ``settings`` start from this profile.
"""

from hypothesis import HealthCheck, settings

pytest_plugins = ["redis_server", "django_setup", "postgres_server"]

settings.register_profile("conveyor", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("conveyor")
