"""The PostgreSQL broker's URL and ``connection=``, without a server: what is refused, and
what the messages show (never a password)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor import Conveyor, InvalidOption
from conveyor._errors import ConfigurationError, InvalidURL
from conveyor.brokers import check_url
from conveyor.brokers.postgres._url import parse_postgres_url
from conveyor.workflows import chain


def test_conveyors_options_are_taken_out_and_the_rest_left_to_libpq() -> None:
    url = parse_postgres_url(
        "postgres://app:s3cret@db.internal:6432/shop?sslmode=require&schema=jobs"
        "&max_connections=4&pool_timeout=2.5&application_name=web&worker_commit=sync"
    )
    assert url.conninfo == (
        "postgresql://app:s3cret@db.internal:6432/shop?sslmode=require&application_name=web"
    )
    assert (url.schema, url.max_connections, url.pool_timeout) == ("jobs", 4, 2.5)
    assert url.worker_commit == "sync"
    assert "s3cret" not in repr(url) and "s3cret" not in url.shown
    assert parse_postgres_url("postgresql:///shop").schema == "conveyor"
    assert parse_postgres_url("postgresql:///shop").worker_commit == "async"
    assert check_url("POSTGRESQL://h/db") == "postgresql"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:s3cret@h/db?schema=Jobs", "bad schema name"),
        ("postgresql://u:s3cret@h/db?schema=a;drop", "bad schema name"),
        ("postgresql://u:s3cret@h/db?schema=a&schema=b", "given twice"),
        ("postgresql://u:s3cret@h/db?max_connections=0", "above 0"),
        ("postgresql://u:s3cret@h/db?pool_timeout=nan", "above 0"),
        ("postgresql://u:s3cret@h/db?schema=", "has no value"),
        ("postgresql://u:s3cret@h/db?worker_commit=off", "it takes async or sync"),
        ("postgresql://u:s3c/ret@h/db", "an '@' after the host"),
        ("postgresql://u:s3cret@h/db#x", "a '#'"),
        ("postgresql://u:s3cret@h/db?schema=pg_jobs", "not with pg_"),
    ],
)
def test_a_bad_url_says_what_to_write_without_the_password(url: str, says: str) -> None:
    with pytest.raises(InvalidURL, match=says) as caught:
        Conveyor(url)
    assert "s3cret" not in str(caught.value)


def test_without_psycopg_the_app_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from conveyor import Conveyor, ConfigurationError\n"
        "try:\n    Conveyor('postgresql://u:pw@h/db')\n"
        "except ConfigurationError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'conveyor[postgres]'" in out.stdout


def test_connection_needs_a_broker_in_the_callers_database() -> None:
    app = Conveyor("memory://")

    @app.task
    def noop() -> None: ...

    with pytest.raises(ConfigurationError, match="needs the PostgreSQL broker"):
        noop.options(connection=object()).delay()
    assert app.broker.stats() == []


def test_connection_is_given_per_call_only() -> None:
    app = Conveyor("memory://")
    with pytest.raises(InvalidOption, match="per call"):
        app.task(connection=object())
    with pytest.raises(ConfigurationError, match="connection"):
        app.periodic(every=60, connection=object())

    @app.task
    def step() -> None: ...

    with pytest.raises(ConfigurationError, match="connection= sends a job on its own"):
        chain(step.options(connection=object()).s(), step.s()).delay()


def test_an_option_libpq_does_not_know_is_named_before_any_connection() -> None:
    from conveyor.brokers.postgres import PostgresBroker

    with pytest.raises(InvalidURL, match='invalid URI query parameter: "colour"') as caught:
        PostgresBroker("postgresql://u:s3cret@nowhere.invalid/db?colour=blue")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret%ZZ@nowhere.invalid/db",
        "postgresql://u@nowhere.invalid/db?password=s3cret%00",
    ],
)
def test_a_bad_percent_escape_in_the_password_is_not_shown(url: str) -> None:
    """libpq quotes the token it cannot read: here, the password."""
    from conveyor.brokers.postgres import PostgresBroker

    with pytest.raises(InvalidURL, match="percent-e") as caught:
        PostgresBroker(url)
    assert "s3cret" not in str(caught.value)
