"""RabbitMQ for tests: a virtual host of the session's own on the machine's server.

The machine's server is ``$CONVEYOR_TEST_RABBITMQ`` (an ``amqp://`` URL without a virtual
host), else ``amqp://guest:guest@127.0.0.1:5672``. The ``rabbitmq_url`` fixture creates a
virtual host per test session with ``rabbitmqctl add_vhost`` (and gives the URL's user all
rights on it), and deletes it at the end; tests isolate themselves from each other with a
key prefix of their own (queue names start with it). Where no server answers, ``rabbitmqctl``
is missing or refuses, or aio-pika is not installed, the tests that need one are skipped
with the reason. Nothing here ever stops or restarts that server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

ADMIN_URL = os.environ.get("CONVEYOR_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672")
CTL_TIMEOUT = 30.0


_REFUSED: list[str] = []  # why the session's virtual host could not be made: skip at once


def _ctl(*args: str) -> None:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.skip("no rabbitmqctl on PATH: the RabbitMQ tests make a virtual host with it")
    try:
        done = subprocess.run(
            [tool, *args], capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        _REFUSED.append(f"rabbitmqctl {args[0]} did not answer in {CTL_TIMEOUT:g} s")
        pytest.skip(_REFUSED[0])
    if done.returncode != 0:
        _REFUSED.append(
            f"rabbitmqctl {args[0]} failed ({(done.stderr or done.stdout).strip()[:200]}): run "
            "the tests as a user rabbitmqctl accepts (root, or one with the Erlang cookie)"
        )
        pytest.skip(_REFUSED[0])


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """An ``amqp://`` URL to a virtual host of this session's own (deleted after)."""
    if _REFUSED:  # a session fixture that failed is asked for again by every test
        pytest.skip(_REFUSED[0])
    try:
        import aio_pika  # noqa: F401
    except ImportError:
        pytest.skip("aio-pika is not installed: pip install 'conveyor[rabbitmq]'")
    parts = urlsplit(ADMIN_URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 5672), timeout=3).close()
    except OSError as exc:
        pytest.skip(
            f"no RabbitMQ server for the tests at {parts.hostname}:{parts.port or 5672} "
            f"({exc}): start one (guest/guest), or set CONVEYOR_TEST_RABBITMQ to an amqp:// "
            "URL of a user rabbitmqctl may give a new virtual host"
        )
    vhost = "conveyor-test-" + uuid.uuid4().hex[:10]
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield f"{ADMIN_URL.rstrip('/')}/{vhost}"
    finally:
        subprocess.run(
            ["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=120, check=False
        )
