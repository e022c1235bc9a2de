"""What an ``amqp://`` app refuses, and what it says to do about it.

* A virtual host that is missing, or that the URL's user may not use, is a
  ``BrokerAuthError`` (retrying cannot help) with RabbitMQ's reason and how to fix it.
* A Conveyor option given twice in the URL is refused where the app is made (no socket),
  not read as its last value.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conveyor import Conveyor
from conveyor._errors import BrokerAuthError, InvalidURL
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
