"""A Django project for the tests of ``conveyor.contrib.django`` (``tests/django_setup.py``).

Its files live in ``CONVEYOR_TEST_DIR``: the SQLite database and Conveyor's SQLite broker,
which a worker subprocess started with ``--settings django_project.settings`` (and this
folder's parent on ``PYTHONPATH``) shares with the test.
"""
