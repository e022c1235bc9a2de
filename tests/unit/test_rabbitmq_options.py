"""The RabbitMQ broker's URL and its record store, read where the app is made (no socket:
the adapter is imported, nothing is opened)."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor._errors import ConfigurationError, InvalidURL
from conveyor.brokers import open_broker, record_store
from conveyor.brokers.rabbitmq._url import (
    DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_SWEEP,
    parse_amqp_url,
)

AMQP = "amqp://user:s3cret@rabbit:5672/jobs"


def test_the_url_is_read_with_its_options_and_shown_without_its_password() -> None:
    found = parse_amqp_url(AMQP + "?prefetch=20&sweep=0.5&confirm_timeout=3&heartbeat=30")
    assert (found.vhost, found.prefetch, found.sweep, found.confirm_timeout) == (
        "jobs",
        20,
        0.5,
        3.0,
    )
    assert found.connect == "amqp://user:s3cret@rabbit:5672/jobs?heartbeat=30&reconnect_interval=1"
    assert "s3cret" not in repr(found)
    plain = parse_amqp_url("amqps://user:pw@rabbit")
    assert (plain.vhost, plain.prefetch, plain.sweep) == ("/", None, DEFAULT_SWEEP)
    assert plain.connect == "amqps://user:pw@rabbit:5671/?reconnect_interval=1"
    assert parse_amqp_url("amqp://rabbit/%2F").vhost == "/"
    assert plain.queue_type == "quorum"
    assert parse_amqp_url(AMQP + "?queue_type=classic").queue_type == "classic"


def test_connection_timeout_is_conveyors_seconds_not_passed_on() -> None:
    """aio-pika does not read ``connection_timeout`` from the URL: the link waits it out
    itself, for each attempt to connect (10 s unless given)."""
    found = parse_amqp_url(AMQP + "?connection_timeout=1.5&heartbeat=30")
    assert found.connection_timeout == 1.5
    assert found.connect == "amqp://user:s3cret@rabbit:5672/jobs?heartbeat=30&reconnect_interval=1"
    assert parse_amqp_url(AMQP).connection_timeout == DEFAULT_CONNECTION_TIMEOUT == 10


def test_reconnect_interval_and_heartbeat_reach_the_client_as_it_reads_them() -> None:
    """The client reads a value it cannot parse as 0 (``reconnect_interval=abc`` or ``-1``
    reconnected without a pause, 20,000 times in 3 s; ``heartbeat=30s`` turned heartbeats
    off): the URL's values are checked (refused below) and written so it reads them right
    (``1e3``, without a dot, it takes for 0)."""
    aiormq = pytest.importorskip("aiormq.connection")
    found = parse_amqp_url(AMQP + "?reconnect_interval=1e3&heartbeat=0&name=app")
    assert found.connect == AMQP + "?reconnect_interval=1000.0&heartbeat=0&name=app"
    for given, read in [("0.25", 0.25), ("2", 2), ("1e3", 1000), ("1e-3", 0.001)]:
        connect = parse_amqp_url(AMQP + "?reconnect_interval=" + given).connect
        assert aiormq.parse_timeout(connect.rpartition("=")[2]) == read
    for beat in ("0", "30", "65534"):
        connect = parse_amqp_url(AMQP + "?heartbeat=" + beat).connect
        passed = connect.partition("heartbeat=")[2].partition("&")[0]
        assert aiormq.parse_heartbeat(passed) == int(beat)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (AMQP + "?connection_timeout=0", "seconds, above 0"),
        (AMQP + "?connection_timeout=1&connection_timeout=2", "given twice"),
        (AMQP + "?prefetch=0", "it takes a whole number above 0"),
        (AMQP + "?sweep=nan", "seconds, above 0"),
        (AMQP + "?sweep=1&sweep=2", "given twice"),
        (AMQP + "?colour=red", "unknown option 'colour'"),
        (AMQP + "?queue_type=stream", "use quorum (default) or classic"),
        (AMQP + "?reconnect_interval=abc", "value 'abc' for option 'reconnect_interval'; it "),
        (AMQP + "?reconnect_interval=-1", "it takes seconds, above 0"),
        (AMQP + "?reconnect_interval=1&reconnect_interval=2", "given twice"),
        (AMQP + "?heartbeat=30s", "value '30s' for option 'heartbeat'; it takes whole seconds"),
        (AMQP + "?heartbeat=abc", "from 0 (no heartbeats) to 65534"),
        (AMQP + "?heartbeat=100000", "from 0 (no heartbeats) to 65534"),
        (AMQP + "?heartbeat=65535", "from 0 (no heartbeats) to 65534"),
        (AMQP + "?heartbeat=30&heartbeat=60", "given twice"),
        ("amqp://user:s3cret@rabbit:99999/jobs", "a bad host or port"),
        ("amqp://user:s3cret@rabbit/a/b", "a '/' inside the virtual host"),
        ("amqp://user:s3cret@/jobs", "one host is needed"),
    ],
)
def test_a_bad_url_is_refused_saying_what_to_write(url: str, says: str) -> None:
    with pytest.raises(InvalidURL, match="bad RabbitMQ URL") as caught:
        Conveyor(url, store="redis://localhost:6379/0")
    assert says in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_amqp_without_a_store_names_both_ways_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONVEYOR_STORE_URL", raising=False)
    for make in (lambda: Conveyor(AMQP), lambda: open_broker(AMQP)):
        with pytest.raises(ConfigurationError) as caught:
            make()
        message = str(caught.value)
        assert "store=" in message and "CONVEYOR_STORE_URL" in message
        assert "amqp://user:***@rabbit:5672/jobs" in message and "s3cret" not in message


def test_the_store_comes_from_the_app_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_URL", AMQP)
    monkeypatch.setenv("CONVEYOR_STORE_URL", "redis://records:6379/1")
    assert Conveyor().store_url == "redis://records:6379/1"
    assert Conveyor(store="postgresql://db/jobs").store_url == "postgresql://db/jobs"
    assert Conveyor("redis://localhost:6379/0").store_url is None  # keeps its own records


@pytest.mark.parametrize(
    ("url", "store", "says"),
    [
        ("redis://localhost:6379/0", "redis://other:6379/0", "leave store= out"),
        (AMQP, "memory://", "must be Redis, PostgreSQL or SQLite"),
        (AMQP, "amqp://other/jobs", "must be Redis, PostgreSQL or SQLite"),
    ],
)
def test_a_store_where_none_can_be_is_refused(url: str, store: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        record_store(url, store)
    with pytest.raises(ConfigurationError, match=says):
        Conveyor(url, store=store)


def test_a_flask_app_gives_the_record_store_in_its_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flask import Flask

    from conveyor.contrib.flask import FlaskConveyor

    monkeypatch.delenv("CONVEYOR_STORE_URL", raising=False)
    flask_app = Flask("shop")
    flask_app.config.update(CONVEYOR_URL=AMQP, CONVEYOR_STORE_URL="redis://records:6379/1")
    conveyor = FlaskConveyor(flask_app)
    assert (conveyor.url, conveyor.store_url) == (AMQP, "redis://records:6379/1")
    bare = Flask("bare")
    bare.config.update(CONVEYOR_URL=AMQP)
    with pytest.raises(ConfigurationError, match="CONVEYOR_STORE_URL"):
        FlaskConveyor(bare)
