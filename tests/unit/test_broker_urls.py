"""Broker URLs: every form the docs show is read with its password, a bad one is an
``InvalidURL`` that says what is wrong and what to write, and no password or token ever
shows in a repr, a redacted URL or an error message, whatever the URL looks like."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from conveyor import ConfigurationError, Conveyor, InvalidName, InvalidURL
from conveyor.brokers import open_broker, redact_url
from conveyor.brokers._url import key_prefix, parse_redis_url
from conveyor.brokers.redis import _cluster, _connect
from conveyor.brokers.redis._core import check_prefix

# Forms with a secret in them: userinfo, query options, sentinel lists, TLS, a socket, and
# malformed ones around a password (bad port, database, host, option, scheme, fragment).
WITH_SECRET = [
    "redis://:{pw}@h.example:6379/0",
    "redis://app:{pw}@h.example:6379/0",
    "redis://app:{pw}@[::1]:6379/3",
    "rediss://app:{pw}@h.example:6380/1?ssl_cert_reqs=required",
    "redis+sentinel://:{pw}@s1:26379,s2:26379/mymaster/0",
    "redis+sentinel://app:{pw}@s1,s2:26380/mymaster?sentinel_password={pw}",
    "unix://:{pw}@/run/redis.sock?db=2",
    "redis://h.example:6379/0?password={pw}",
    "redis://h.example/0?password={pw}&socket_timeout=5",
    "redis://h.example/0?username=app&password={pw}",
    "redis+sentinel://s1/mymaster?sentinel_password={pw}",
    "redis://h.example/0?api_token={pw}",
    "redis://h.example/0?client_secret={pw}&db=1",
    "rediss://h.example/0?ssl_key_passphrase={pw}",
    "redis://:{pw}@h.example:99999/0",
    "redis://:{pw}@h.example:0/0",
    "redis://:{pw}@h.example:port/0",
    "redis://:{pw}@h.example:/0",
    "redis://:{pw}@h.example/zero",
    "redis://:{pw}@h.example/0/1",
    "redis://:{pw}@/0",
    "redis://:{pw}@",
    "redis://:{pw}@h1,h2/0",
    "redis://:{pw}@h.example/0?db=x",
    "redis://:{pw}@h.example/0?socket_timeout=soon",
    "redis://:{pw}@h.example/0?bogus=1",
    "redis://:{pw}@h.example/0#part",
    "redis://app:{pw}@h.example/0?password=again",
    "redis+sentinel://:{pw}@s1:26379,/mymaster",
    "redis+sentinel://:{pw}@s1:70000/mymaster",
    "redis+sentinel://:{pw}@s1:26379/",
    "redis+cluster://:{pw}@h.example:7000/0",
    "unix://:{pw}@host/run/redis.sock",
    "nope://:{pw}@h.example/0",
    "{pw}@h.example:6379",
    "sqlite:///jobs.db?password={pw}",
]
# Forms that are right, with where the password lands.
VALID = {
    "redis://:{pw}@h.example:6379/0": "password",
    "redis://app:{pw}@h.example:6379/0": "password",
    "rediss://app:{pw}@h.example:6380/1?ssl_cert_reqs=required": "password",
    "redis+sentinel://:{pw}@s1:26379,s2:26379/mymaster/0": "password",
    "unix://:{pw}@/run/redis.sock?db=2": "password",
    "redis://h.example:6379/0?password={pw}": "password",
    "redis+sentinel://s1/mymaster?sentinel_password={pw}": "sentinel_password",
    "redis+cluster://app:{pw}@h1.example:7000,h2.example:7001": "password",
    "rediss+cluster://app:{pw}@h1.example:7000?ssl_cert_reqs=none&wait=1": "password",
}

# A password: a random run of letters and digits (what must never show, whole or cut)
# between pieces full of the characters URLs give meaning to.
_PIECES = ["@", ":", "/", "%", "%40", "%2F", "%3a", "%25", "?", "#", "&", "=", "+", " ", ","]
_PIECES += ["[", "]", "é", "*", "~", ";"]
_edge = st.lists(st.sampled_from(_PIECES), max_size=4).map("".join)
# Bounded by digits, so it cannot be a word of a message or a type name (a core that read
# "InvalidURL" was found in the error's repr, which is no leak).
_core = st.from_regex(r"[0-9][A-Za-z0-9]{8,}[0-9]", fullmatch=True)
passwords = st.tuples(_edge, _core, _edge)


def _said(url: str) -> list[str]:
    """Everything Conveyor may show about ``url``: the app's repr or the error (with its
    causes), the parsed URL's repr, the redacted URL."""
    shown = [redact_url(url)]
    try:
        shown.append(repr(Conveyor(url)))
    except InvalidURL as exc:
        error: BaseException | None = exc
        while error is not None:
            shown += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
    try:
        shown.append(repr(parse_redis_url(url)))
    except InvalidURL as exc:
        shown += [str(exc), repr(exc)]
    return shown


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(WITH_SECRET), passwords, st.booleans())
@example("redis://:{pw}@h.example:6379/0", ("a/b?c#", "SECRETxyz12", "@:%40"), False)
@example("redis://h.example/0?password={pw}&db=1", ("&db=", "SECRETxyz12", "#x"), False)
@example("{pw}@h.example:6379", ("", "0000000000", ":"), False)  # the colon ends a "user"
def test_no_password_shows_whatever_the_url(
    template: str, password: tuple[str, str, str], encoded: bool
) -> None:
    head, core, tail = password
    secret = head + core + tail
    written = quote(secret, safe="") if encoded else secret
    assume(core not in template)
    url = template.replace("{pw}", written)
    for text in _said(url):
        assert core not in text, (url, text)
        assert written not in text and secret not in text


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(VALID)), passwords)
def test_every_documented_form_reads_its_password_back(
    template: str, password: tuple[str, str, str]
) -> None:
    secret = "".join(password)
    read = parse_redis_url(template.replace("{pw}", quote(secret, safe="")))
    where = VALID[template]
    assert (read.password if where == "password" else read.option(where)) == secret


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://h:99999/0", "port 99999 is out of range; use 1 to 65535, e.g. h:6379"),
        ("redis://h:0/0", "port 0 is out of range"),
        ("redis://h:six/0", "the Redis port is not a number; use 1 to 65535, e.g. h:6379"),
        ("redis://h:/0", "a ':' after the Redis host but no port"),
        ("redis://h/zero", "the database number 'zero' is not a number; end the URL with /0"),
        ("redis://h/0/1", "more than a database number after the host"),
        ("redis://h/1?db=2", "two databases, /1 and ?db=2"),
        ("redis://h/0?socket_timeout=soon", "for option 'socket_timeout'; it takes seconds"),
        ("redis://h/0?socket_timeout=-1", "bad value '-1' for option 'socket_timeout'"),
        ("redis://h/0?max_connections=0", "it takes a whole number, 1 or more"),
        ("redis://h/0?socket_keepalive=maybe", "it takes true or false"),
        ("redis://h/0?timeout=nan", "bad value 'nan' for option 'timeout'"),
        ("rediss://h/0?ssl_cert_reqs=always", "it takes none, optional or required"),
        ("redis://h/0?bogus=1", "unknown option 'bogus'; redis:// takes client_name, db,"),
        ("redis://h/0?ssl_cert_reqs=none", "redis:// takes no option 'ssl_cert_reqs'"),
        ("redis://h/0?socket_timeout", "option 'socket_timeout' has no value"),
        ("redis://h/0?db=1&db=1", "option 'db' is given twice"),
        ("unix:///run/r.sock?socket_keepalive=1", "unix:// takes no option 'socket_keepalive'"),
        ("redis:///0", "no Redis host; write redis://[user:password@]host:6379/0"),
        ("redis://", "no Redis host"),
        ("redis://h_%/0", "the Redis host is not a host name or address"),
        ("redis://h/0#x", "a '#' in the URL; percent-encode / ? # in a password"),
        ("redis://:a/b@h/0", "an '@' after the host"),
        ("redis://app:pw@h/0?password=pw", "the password is given twice"),
        ("redis+sentinel://s1:26379/", "no service name"),
        ("redis+sentinel:///mymaster", "no sentinel address"),
        ("redis+sentinel://s1:26379,/mymaster", "no sentinel host"),
        ("redis+sentinel://s1/m/0/1", "more than a service and a database"),
        ("unix://host/run/redis.sock", "a unix:// URL names no host; write unix:///path"),
        ("unix://", "no socket path"),
        ("redis://h1,h2:6380/0", "only redis+sentinel:// and redis+cluster:// take a list"),
        ("redis+cluster://h:7000/0", "a path after the seed nodes; a cluster has database 0"),
        ("redis+cluster://h:7000?db=1", "redis+cluster:// takes no option 'db'"),
        ("redis+cluster://", "no seed node; write redis+cluster://"),
        ("redis+cluster://h1:7000,:7001", "no seed node host"),
        ("redis+cluster://h:7000?wait=0", "bad value '0' for option 'wait'"),
        ("redis+cluster://h:7000?ssl_ca_certs=a", "redis+cluster:// takes no option"),
        ("nope://h/0", "unknown broker scheme 'nope'"),
        ("localhost:6379", "bad broker URL 'localhost:6379': use memory://"),
    ],
)
def test_a_bad_url_says_what_is_wrong_and_what_to_write(url: str, says: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        Conveyor(url)
    assert says in str(caught.value)


def test_a_sqlite_url_error_shows_it_redacted() -> None:
    with pytest.raises(InvalidURL, match="options are not supported") as caught:
        open_broker("sqlite:///jobs.db?password=hunter2hunter2")
    assert "hunter2" not in str(caught.value)
    assert "sqlite:///jobs.db?password=***" in str(caught.value)


def test_a_url_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(InvalidURL, match="must be a str, not bytes"):
        Conveyor(b"redis://:pw@h/0")  # type: ignore[arg-type]


def test_redaction_keeps_what_is_not_secret() -> None:
    assert redact_url("redis://app:pw@h:6379/0?socket_timeout=5") == (
        "redis://app:***@h:6379/0?socket_timeout=5"
    )
    assert redact_url("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0") == (
        "redis+sentinel://:***@s1:26379,s2:26379/mymaster/0"
    )
    assert redact_url("sqlite:////data/a@b/jobs.db") == "sqlite:////data/a@b/jobs.db"
    assert redact_url("memory://") == "memory://"
    # Everything after a secret option is masked: an "&" in an unencoded value cuts it.
    assert redact_url("redis://h/0?password=a&b=c") == "redis://h/0?password=***&***"
    assert repr(Conveyor("redis://:pw@h/0")) == "<Conveyor redis://:***@h/0>"


def test_the_client_is_built_from_what_the_url_says() -> None:
    """No I/O: the pool's connection arguments, not a connection."""
    url = "rediss://app:p%40ss@h.example:6380/3?ssl_cert_reqs=none&socket_timeout=2.5&timeout=7"
    client = _connect.connect(_connect.parse(url))
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert pool.connection_class is redis.SSLConnection
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h.example", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("app", "p@ss")
    assert (kwargs["ssl_cert_reqs"], kwargs["socket_timeout"]) == ("none", 2.5)
    assert pool.timeout == 7.0 and pool.max_connections == _connect.MAX_CONNECTIONS
    client.close()

    client = _connect.connect(_connect.parse("unix://:pw@/run/redis.sock?db=2&max_connections=4"))
    pool = client.connection_pool
    assert pool.connection_class is redis.UnixDomainSocketConnection
    assert (pool.connection_kwargs["path"], pool.connection_kwargs["db"]) == ("/run/redis.sock", 2)
    assert pool.max_connections == 4
    client.close()

    aclient = _connect.connect_async(_connect.parse(url))
    assert aclient.connection_pool.connection_class is redis.asyncio.SSLConnection
    assert aclient.connection_pool.connection_kwargs["password"] == "p@ss"


def test_a_sentinel_client_gives_each_side_its_own_password() -> None:
    url = "redis+sentinel://app:m%2Fpw@s1:26379,s2/mymaster/4?sentinel_password=s%26pw"
    master = _connect.connect(_connect.parse(url))
    pool = master.connection_pool
    sentinel = pool.sentinel_manager  # type: ignore[attr-defined]
    addresses = [s.connection_pool.connection_kwargs for s in sentinel.sentinels]
    assert [(a["host"], a["port"]) for a in addresses] == [("s1", 26379), ("s2", 26379)]
    assert sentinel.sentinels[0].connection_pool.connection_kwargs["password"] == "s&pw"
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == (
        "app",
        "m/pw",
    )
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("mymaster", 4)  # type: ignore[attr-defined]


def test_a_cluster_url_reads_its_seeds_and_options() -> None:
    t = parse_redis_url(
        "rediss+cluster://app:s%40cret@h1:7000,[::1]:7001,h3/?wait=2&wait_timeout=0.5"
    )
    assert t.scheme == "rediss+cluster"
    assert t.hosts == (("h1", 7000), ("::1", 7001), ("h3", 6379))
    assert (t.db, t.username, t.password) == (0, "app", "s@cret")
    assert (t.option("wait"), t.option("wait_timeout")) == (2, 0.5)
    assert "s@cret" not in repr(t) and "s%40cret" not in repr(t)


def test_a_tls_cluster_client_aims_tls_connections_at_the_slot_owner() -> None:
    """No I/O: the pools' connection class follows the owner of the prefix's slot, over
    TLS, and the owner logs in to the nodes it asks with the URL's user and TLS options."""
    target = _connect.parse("rediss+cluster://app:p%40ss@h1:7000,h2:7001?ssl_cert_reqs=none")
    owner = _connect.slot_owner(target, "{billing}")
    assert owner is not None and owner.slot == key_slot(b"{billing}")
    assert owner._node["ssl"] is True and owner._node["password"] == "p@ss"
    client = _connect.connect(target, owner)
    pool = client.connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)
    assert pool.connection_class is _cluster.ClusterSSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["slot_owner"] is owner and "db" not in kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["ssl_cert_reqs"]) == (
        "app",
        "p@ss",
        "none",
    )
    client.close()
    aclient = _connect.connect_async(target, owner)
    assert aclient.connection_pool.connection_class is _cluster.AsyncClusterSSLConnection
    plain = _connect.parse("redis+cluster://h1:7000")
    plain_client = _connect.connect(plain, _connect.slot_owner(plain, "{x}"))
    assert plain_client.connection_pool.connection_class is _cluster.ClusterConnection
    assert _connect.slot_owner(_connect.parse("redis://h1:7000/0"), "{x}") is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@h.example:6379/0?prefix=billing",
        "rediss://app:pw@h.example/1?ssl_cert_reqs=none&prefix=billing",
        "unix:///run/redis.sock?db=2&prefix=billing",
        "redis+sentinel://s1,s2/mymaster/0?prefix=billing",
        "redis+cluster://h1:7000,h2:7001/?prefix=billing",
        "rediss+cluster://app:pw@h1:7000?prefix=billing&wait=1",
    ],
)
def test_every_redis_form_reads_the_prefix_from_its_query(url: str) -> None:
    t = parse_redis_url(url)
    assert t.prefix == "billing" and "prefix" not in dict(t.options)
    assert parse_redis_url(url.replace("prefix=billing", "client_name=x")).prefix is None
    broker = open_broker(url)  # opens no connection
    assert broker.prefix == "billing"
    broker.close()


@pytest.mark.parametrize(
    "name",
    ["a", "billing", "Billing-2", "a.b_c", "x" * 64, "x" * 65, "a{b", "a}b", "a:b", "a b", "ä"],
)
def test_the_url_prefix_is_checked_as_the_prefix_argument_is(name: str) -> None:
    try:
        check_prefix(name)
    except InvalidName:
        with pytest.raises(InvalidURL, match="for option 'prefix'; it takes a key prefix"):
            Conveyor(f"redis://:s3cret@h/0?prefix={quote(name, safe='')}")
        with pytest.raises(InvalidName, match="bad key prefix"):
            Conveyor("redis://h/0", prefix=name).open()
    else:
        assert parse_redis_url(f"redis://h/0?prefix={quote(name, safe='')}").prefix == name
    with pytest.raises(InvalidURL, match="option 'prefix' has no value"):
        Conveyor("redis://h/0?prefix=")


def test_the_prefix_argument_and_the_url_prefix_must_agree() -> None:
    url = "redis://:s3cret@h/0?prefix=billing"
    assert [key_prefix(p, parse_redis_url("redis://h/0")) for p in (None, "shop")] == [
        "conveyor",
        "shop",
    ]
    assert key_prefix(None, parse_redis_url(url)) == "billing"
    for app in (Conveyor(url), Conveyor(url, prefix="billing")):
        assert app.open().prefix == "billing"
        app.close()
    # Either alone would put the producer and the worker on different keys: refused.
    for other in ("shop", "conveyor"):
        app = Conveyor(url, prefix=other)
        with pytest.raises(ConfigurationError, match="two key prefixes") as caught:
            app.open()
        assert f"prefix={other!r} and ?prefix=billing" in str(caught.value)
        assert "s3cret" not in str(caught.value) and "drop prefix= or ?prefix=" in str(caught.value)


def test_a_redis_url_is_a_frozen_value() -> None:
    url = parse_redis_url("redis://user:pw@h:6380/2?prefix=billing&socket_timeout=3")
    again = parse_redis_url("redis://user:pw@h:6380/2?prefix=billing&socket_timeout=3")
    assert url == again != parse_redis_url("redis://user:pw@h:6380/3")
    assert hash(url) == hash(again)
    assert pickle.loads(pickle.dumps(url)) == copy.copy(url) == copy.deepcopy(url) == url
    assert (url.db, url.prefix, url.option("socket_timeout")) == (2, "billing", 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.db = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        del url.password
