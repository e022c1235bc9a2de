"""What an ``amqp://`` app refuses, and what it says to do about it.

* A virtual host that is missing, or that the URL's user may not use, is a
  ``BrokerAuthError`` (retrying cannot help) with RabbitMQ's reason and how to fix it.
* A Conveyor option given twice in the URL is refused where the app is made (no socket),
  not read as its last value.
* A server that takes the connection and never answers (a listener of the test's own, no
  RabbitMQ) is given up after the URL's ``connection_timeout`` per attempt, with a
  ``BrokerUnavailable`` that says so, not an empty ``TimeoutError``; ``conveyor info``
  prints it as its one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conveyor import Conveyor
from conveyor._errors import BrokerAuthError, BrokerUnavailable, InvalidURL
from conveyor.brokers import open_broker

CTL_TIMEOUT = 60.0


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=CTL_TIMEOUT, check=True)


@pytest.fixture
def not_permitted(rabbitmq_url: str) -> Iterator[str]:
    """The URL of a virtual host of this test's own that its user has no rights on."""
    vhost = "conveyor-test-" + uuid.uuid4().hex[:10]
    _ctl("add_vhost", vhost)  # the rabbitmq_url fixture checked that rabbitmqctl may
    try:
        yield rabbitmq_url.rsplit("/", 1)[0] + "/" + vhost
    finally:
        _ctl("delete_vhost", vhost)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("vhost", ["missing", "not permitted"])
def test_a_refused_virtual_host_says_why_and_what_to_do(
    request: pytest.FixtureRequest, rabbitmq_url: str, tmp_path: Path, vhost: str
) -> None:
    if vhost == "missing":
        url, reason = rabbitmq_url + "-missing", "not found"
    else:
        url, reason = request.getfixturevalue("not_permitted"), "refused for user"
    with pytest.raises(BrokerAuthError) as caught:
        open_broker(url, store=f"sqlite:///{tmp_path / 'records.db'}")
    message = str(caught.value)
    assert "530 NOT_ALLOWED" in message and reason in message
    assert "rabbitmqctl add_vhost NAME" in message and "rabbitmqctl set_permissions" in message
    assert (urlsplit(url).password or "") + "@" not in message


AMQP = "amqp://user:s3cret@rabbit:5672/jobs"


@pytest.mark.parametrize(
    "query",
    [
        "queue_type=classic&queue_type=quorum",
        "queues=a&queues=b",
        "queues=a&queue_type=classic&queues=a",  # the same value twice, too
        "prefetch=1&prefetch=2",
    ],
)
def test_a_conveyor_option_given_twice_is_refused(query: str) -> None:
    with pytest.raises(InvalidURL, match="bad RabbitMQ URL") as caught:
        Conveyor(f"{AMQP}?{query}", store="redis://localhost:6379/0")
    name = query.split("=", 1)[0]
    assert f"option {name!r} is given twice; give it once" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that takes TCP connections (the kernel's, from its backlog) and
    never sends a byte: a port that is not RabbitMQ's, or a server too loaded to answer."""
    with socket.create_server(("127.0.0.1", 0), backlog=32) as listener:
        yield listener.getsockname()[1]


NEVER_ANSWERS = "RabbitMQ at 127.0.0.1:{port} accepted the connection but did not answer the "
NEVER_ANSWERS += "AMQP handshake within 1 s (3 tries): check that the port is RabbitMQ's and "
NEVER_ANSWERS += "that the server is not overloaded"


def test_a_server_that_never_answers_is_given_up_within_the_urls_connection_timeout(
    silent_port: int, tmp_path: Path
) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{silent_port}/jobs?connection_timeout=1"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        open_broker(url, store=f"sqlite:///{tmp_path / 'records.db'}")
    assert time.monotonic() - started < 6  # 3 attempts of 1 s (it was 30 s whatever the URL)
    assert str(caught.value).startswith(NEVER_ANSWERS.format(port=silent_port))
    assert "s3cret" not in str(caught.value)


def test_the_command_line_says_what_a_server_that_never_answers_did(
    silent_port: int, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'records.db'}"
    open_broker(store).close()  # the records exist: only RabbitMQ is in the way
    env = {
        **os.environ,
        "CONVEYOR_URL": f"amqp://guest:guest@127.0.0.1:{silent_port}/jobs?connection_timeout=1",
        "CONVEYOR_STORE_URL": store,
    }
    for name in ("CONVEYOR_LOG_LEVEL", "CONVEYOR_LOG_FORMAT"):
        env.pop(name, None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "info"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - started < 15
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: " + NEVER_ANSWERS.format(port=silent_port))
