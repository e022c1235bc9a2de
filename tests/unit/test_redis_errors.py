"""What the Redis broker does with an unhealthy server's errors, without a server: which
errors redis-py's retry sends again (``_connect._Retry``), and what the user is told
(``_errors``) of a replica, a loading server, a database number past ``databases`` and a
password the URL lacks."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.backoff import NoBackoff

from conveyor import BrokerError, BrokerUnavailable, ConfigurationError
from conveyor._inspect import redact
from conveyor.brokers.redis import _connect
from conveyor.brokers.redis._errors import (
    LOADING,
    TRANSLATE,
    DatabaseOutOfRange,
    describe,
    refusal,
    replica,
)

REPLICA = "this Redis is a read-only replica: point the URL at the master, or use redis+sentinel://"


def _calls(retry: _connect._Retry, error: Exception) -> int:
    """How often ``retry`` sends a call that always fails with ``error``."""
    sent = []

    def do() -> None:
        sent.append(1)
        raise error

    with pytest.raises(type(error)):
        retry.call_with_retry(do, lambda _: None)
    return len(sent)


def _calls_async(retry: _connect._AsyncRetry, error: Exception) -> int:
    sent = []

    async def do() -> None:
        sent.append(1)
        raise error

    async def fail(_: Exception) -> None:
        return None

    with pytest.raises(type(error)):
        asyncio.run(retry.call_with_retry(do, fail))
    return len(sent)


@pytest.mark.parametrize(
    "error", [redis.TimeoutError("Timeout reading"), TimeoutError("timed out")]
)
def test_a_timeout_is_not_sent_again_a_connection_error_is(error: Exception) -> None:
    # A server that did not answer within the socket timeout would make each retry wait as
    # long again (a never-answering one held a call for 4 x the socket timeout).
    assert _calls(_connect._Retry(NoBackoff(), 3), error) == 1
    assert _calls_async(_connect._AsyncRetry(NoBackoff(), 3), error) == 1
    reset = redis.ConnectionError("Connection reset by peer")
    assert _calls(_connect._Retry(NoBackoff(), 3), reset) == 4
    assert _calls_async(_connect._AsyncRetry(NoBackoff(), 3), reset) == 4


def test_the_clients_retry_connection_errors_only() -> None:
    target = _connect.parse("redis://127.0.0.1:1/0")  # clients connect lazily: no socket
    for client in (_connect.connect(target), _connect.connect_async(target)):
        retry = client.connection_pool.connection_kwargs["retry"]
        assert retry.get_retries() == 3
        assert retry._supported_errors == (redis.ConnectionError,)


@pytest.mark.parametrize(
    "reply",
    [
        redis.ReadOnlyError("You can't write against a read only replica."),
        # Redis 6.2 wraps it in its script error, a plain ResponseError
        redis.ResponseError(
            "Error running script (call to f_a33fea0d): @user_script:29: @user_script: 29: "
            "-READONLY You can't write against a read only replica."
        ),
    ],
)
def test_a_write_refused_by_a_replica_says_to_point_the_url_at_the_master(
    reply: redis.RedisError,
) -> None:
    with pytest.raises(BrokerError) as caught, TRANSLATE:
        raise reply
    assert str(caught.value).startswith(REPLICA)
    assert "Redis failed" not in str(caught.value)
    assert replica("10.0.0.5:6379").startswith(
        "this Redis is a read-only replica of 10.0.0.5:6379: point the URL at the master"
    )


def test_a_loading_server_says_to_wait() -> None:
    loading = redis.BusyLoadingError("Redis is loading the dataset in memory")
    # BrokerUnavailable: the worker waits for it, as for an outage
    with pytest.raises(BrokerUnavailable) as caught, TRANSLATE:
        raise loading
    assert str(caught.value) == LOADING
    assert "is loading its dataset" in LOADING and "wait" in LOADING
    assert "cannot reach Redis" not in describe(loading)


def test_a_database_past_the_servers_databases_is_a_configuration_error() -> None:
    # ConfigurationError: the worker and ``conveyor events`` stop on it, as on a refused login
    for reply, which in [
        (DatabaseOutOfRange(99), "database 99"),  # the handshake names the number
        (redis.ResponseError("DB index is out of range"), "the database number"),
    ]:
        with pytest.raises(ConfigurationError) as caught, TRANSLATE:
            raise reply
        assert not isinstance(caught.value, BrokerError)
        assert str(caught.value) == (
            f"{which} in the URL is not below the server's `databases` setting: use a number "
            "below it (/0 to /15 with the default 16)"
        )


def test_the_missing_password_hint_keeps_its_placeholders_a_real_password_is_masked() -> None:
    hint = refusal(redis.AuthenticationError("Authentication required."))
    assert hint is not None
    shown = redact(str(hint))
    assert "write redis://:PASSWORD@host:6379/0 (requirepass)" in shown
    assert "redis://USER:PASSWORD@host:6379/0 (an ACL user)" in shown
    assert "***" not in shown
    assert redact("at redis://app:s3cret@h:6379/0") == "at redis://app:***@h:6379/0"
    assert redact("at redis://:PASSWORDS@h/0 or rediss://:xPASSWORD@h/0") == (
        "at redis://:***@h/0 or rediss://:***@h/0"
    )
