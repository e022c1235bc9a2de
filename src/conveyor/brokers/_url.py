"""Broker URLs: the one parser of the Redis forms, and the redaction every repr, log line,
table and error message shows a URL through.

Pure: nothing here imports a client library or opens anything, so a bad URL is refused
where the app is made, with a message that says what to write.

Redaction masks whatever could be a secret, whatever the form: the password of the
userinfo (and a lone name before ``@``, which may be a token), the value of every query
option whose name holds ``pass``, ``token``, ``secret`` or ``key`` (and the options after
it: an ``&`` inside an unencoded password would start a new one), an option name that is
not a word, a fragment, and a port that is not a number. A URL with an ``@`` after the end
of its host (a password with an unencoded ``/``, ``?`` or ``#``, or an ``@`` in an option
value) is masked whole after the scheme: which part is the password cannot be told.
The parser refuses every URL the redaction could not show safely, so what it accepts is
shown with its hosts, database and options.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from .._errors import ConfigurationError, InvalidName, InvalidURL
from .._message import validate_queue

MASK = "***"
SECRET_WORDS = ("pass", "token", "secret", "key")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_NO_AUTHORITY = {"sqlite", "memory"}  # file paths and nothing: no user, no host
SCHEME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_WORD = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]+")
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.%A-Za-z]+\]")
REDIS_PORT, SENTINEL_PORT = 6379, 26379


def is_secret(option: str) -> bool:
    """An option whose value is never shown."""
    name = option.lower()
    return any(word in name for word in SECRET_WORDS)


class _Parts:
    """A URL cut where the parser and the redaction both cut it. (A plain class: a frozen
    dataclass's methods are compiled when it is built, ~1 % of a worker's start each.)"""

    __slots__ = ("ambiguous", "fragment", "hosts", "path", "query", "scheme", "userinfo")

    def __init__(
        self,
        *,
        scheme: str | None,  # None: no "://"
        userinfo: str | None,  # before the authority's last "@"
        hosts: str,
        path: str,
        query: str | None,
        fragment: str | None,
        ambiguous: bool,  # an "@" after the end of the authority
    ) -> None:
        self.scheme = scheme
        self.userinfo = userinfo
        self.hosts = hosts
        self.path = path
        self.query = query
        self.fragment = fragment
        self.ambiguous = ambiguous


def _split(url: str) -> _Parts:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, hashed, fragment = rest.partition("#")
    if sep and scheme.lower() in _NO_AUTHORITY:
        path, asked, query = rest.partition("?")
        return _Parts(
            scheme=scheme,
            userinfo=None,
            hosts="",
            path=path,
            query=query if asked else None,
            fragment=fragment if hashed else None,
            ambiguous=False,
        )
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    end = min(ends, default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo: str | None
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        userinfo = None
    path, asked, query = tail.partition("?")
    return _Parts(
        scheme=scheme if sep else None,
        userinfo=userinfo,
        hosts=hosts,
        path=path,
        query=query if asked else None,
        fragment=fragment if hashed else None,
        ambiguous="@" in tail or bool(hashed and "@" in fragment),
    )


def _host_port(item: str) -> tuple[str, str | None]:
    """``host[:port]`` or ``[v6]:port`` as (host, port text or None)."""
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            return item, None
        host, after = item[: close + 1], item[close + 1 :]
        if not after:
            return host, None
        return host, after[1:] if after.startswith(":") else after
    host, colon, port = item.rpartition(":")
    return (host, port) if colon else (item, None)


def _shown_hosts(hosts: str) -> str:
    out = []
    for item in hosts.split(","):
        host, port = _host_port(item)
        if port is None:
            out.append(host)
        else:
            out.append(f"{host}:{port if _DIGITS.fullmatch(port) else MASK}")
    return ",".join(out)


def _shown_query(query: str) -> str:
    out = []
    items = query.split("&")
    for at, item in enumerate(items):
        name, eq, _ = item.partition("=")
        if not _WORD.fullmatch(unquote(name)):
            out.append(MASK)
        elif is_secret(unquote(name)):
            out.append(f"{name}={MASK}" if eq else MASK)
            if at < len(items) - 1:
                out.append(MASK)
            break
        else:
            out.append(item)
    return "&".join(out)


def redact_url(url: str) -> str:
    """The URL with everything that could be a secret masked, for logs, tables, reprs and
    error messages (see the module docstring); never raises."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    p = _split(url)
    head = ""
    if p.scheme is not None:
        head = f"{p.scheme if SCHEME_NAME.fullmatch(p.scheme) else MASK}://"
    if p.ambiguous:
        return head + MASK
    user = ""
    if p.userinfo is not None:
        name, colon, _ = p.userinfo.partition(":")
        # Without a scheme, "a:b@host" may be a password holding a colon: nothing shows.
        user = f"{name}:{MASK}@" if colon and p.scheme is not None else f"{MASK}@"
    shown = head + user + (_shown_hosts(p.hosts) if p.hosts else "") + p.path
    if p.query is not None:
        shown += "?" + _shown_query(p.query)
    if p.fragment is not None:
        shown += "#" + MASK
    return shown


# -- the Redis forms -------------------------------------------------------------------------


class RedisURL:
    """A checked Redis URL. ``hosts``: the server (``redis``, ``rediss``), the sentinels, or
    the cluster's seed nodes (``redis+cluster``, ``rediss+cluster``);
    ``socket``: the ``unix://`` path; ``service``: the master the sentinels watch;
    ``prefix``: the key prefix ``?prefix=`` names (None: not given; ``key_prefix``);
    ``options``: the other query options, their values converted (the names of ``OPTIONS``).

    A value, as a frozen dataclass would be (equality, hash, no assignment; pickled and
    copied through its ``__dict__``), written out by hand like ``_Parts``."""

    scheme: str
    shown: str  # redacted
    hosts: tuple[tuple[str, int], ...]
    socket: str
    service: str
    db: int
    username: str | None
    password: str | None
    prefix: str | None
    options: tuple[tuple[str, Any], ...]

    __match_args__ = _FIELDS = (
        "scheme",
        "shown",
        "hosts",
        "socket",
        "service",
        "db",
        "username",
        "password",
        "prefix",
        "options",
    )

    def __init__(
        self,
        scheme: str,
        shown: str,
        *,
        hosts: tuple[tuple[str, int], ...] = (),
        socket: str = "",
        service: str = "",
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        prefix: str | None = None,
        options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self.__dict__.update(
            scheme=scheme,
            shown=shown,
            hosts=hosts,
            socket=socket,
            service=service,
            db=db,
            username=username,
            password=password,
            prefix=prefix,
            options=options,
        )

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__[name] for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        return f"RedisURL({self.shown!r})"

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


def _number(kind: Callable[[str], Any], low: float, above: bool = False) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or value < low or (above and value == low):
            raise ValueError(text)
        return value

    return convert


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(text)
        return text.lower()

    return convert


def _prefix(text: str) -> str:
    """A key prefix, checked as ``prefix=`` is: it becomes a hash tag (``{P}``), so braces
    or odd characters would move keys between slots."""
    try:
        return validate_queue(text)
    except InvalidName:
        raise ValueError(text) from None


_ALL = frozenset(REDIS_SCHEMES + CLUSTER_SCHEMES)
_ONE_DB = frozenset(REDIS_SCHEMES)  # a cluster has database 0 only
_POOLED = frozenset({"redis", "rediss", "unix", *CLUSTER_SCHEMES})
_TCP = frozenset({"redis", "rediss", "redis+sentinel", *CLUSTER_SCHEMES})
_TLS = frozenset({"rediss", "rediss+cluster"})
_SENTINEL = frozenset({"redis+sentinel"})

# name -> (convert, what it takes (for the message), the schemes that take it)
OPTIONS: dict[str, tuple[Callable[[str], Any], str, frozenset[str]]] = {
    "db": (_number(int, 0), "a database number, 0 or more", _ONE_DB),
    "prefix": (_prefix, "a key prefix: 1-64 letters, digits, '_', '.' or '-'", _ALL),
    "username": (str, "an ACL user name", _ALL),
    "password": (str, "a password", _ALL),
    "client_name": (str, "a name for CLIENT LIST", _ALL),
    "socket_timeout": (_number(float, 0, above=True), "seconds, above 0", _ALL),
    "socket_connect_timeout": (_number(float, 0, above=True), "seconds, above 0", _ALL),
    "socket_keepalive": (_flag, "true or false", _TCP),
    "health_check_interval": (_number(float, 0), "seconds, 0 or more", _ALL),
    "max_connections": (_number(int, 1), "a whole number, 1 or more", _ALL),
    "timeout": (_number(float, 0, above=True), "seconds to wait for a free connection", _POOLED),
    "ssl_cert_reqs": (_choice("none", "optional", "required"), "none, optional or required", _TLS),
    "ssl_ca_certs": (str, "a CA bundle file", _TLS),
    "ssl_certfile": (str, "a client certificate file", _TLS),
    "ssl_keyfile": (str, "a client key file", _TLS),
    "ssl_check_hostname": (_flag, "true or false", _TLS),
    "sentinel_username": (str, "the sentinels' ACL user", _SENTINEL),
    "sentinel_password": (str, "the sentinels' password", _SENTINEL),
    "wait": (_number(int, 1), "how many replicas must have an enqueue, 1 or more", _ALL),
    "wait_timeout": (_number(float, 0, above=True), "seconds to wait for them, above 0", _ALL),
    "shards": (_number(int, 1), "how many shards one prefix spreads over, 1 or more", _POOLED),
}

_EXAMPLE = {
    "redis": "redis://[user:password@]host:6379/0",
    "rediss": "rediss://[user:password@]host:6380/0",
    "unix": "unix://[user:password@]/path/to/redis.sock?db=0",
    "redis+sentinel": "redis+sentinel://[user:password@]host:26379[,host:26379]/mymaster[/0]",
    "redis+cluster": "redis+cluster://[user:password@]host:6379[,host:6379...]",
    "rediss+cluster": "rediss+cluster://[user:password@]host:6380[,host:6380...]",
}
_ENCODE = "percent-encode / ? # in a password as %2F %3F %23, and @ in an option value as %40"
_ENCODE_OPTION = "percent-encode & = # in an option value as %26 %3D %23"


class _Reader:
    """Reads one URL, raising ``InvalidURL`` with the redacted URL, what is wrong and what
    to write."""

    def __init__(self, url: str, scheme: str) -> None:
        self.url = url
        self.scheme = scheme
        self.shown = redact_url(url)

    def bad(self, what: str, fix: str = "") -> InvalidURL:
        fix = fix or f"write {_EXAMPLE[self.scheme]}"
        return InvalidURL(f"bad Redis URL {self.shown!r}: {what}; {fix}")

    def address(self, item: str, default_port: int, what: str) -> tuple[str, int]:
        host, port = _host_port(item)
        if not host:
            raise self.bad(f"no {what} host")
        if not _HOST.fullmatch(host):
            raise self.bad(
                f"the {what} host is not a host name or address",
                "use a name, an IPv4 address or [an IPv6 address], with :port after it",
            )
        if port is None:
            return host.strip("[]"), default_port
        example = f"e.g. {host}:{default_port}"
        if not port:
            raise self.bad(f"a ':' after the {what} host but no port", example)
        if not _DIGITS.fullmatch(port):
            raise self.bad(f"the {what} port is not a number", f"use 1 to 65535, {example}")
        if not 1 <= int(port) <= 65535:
            raise self.bad(f"port {int(port)} is out of range", f"use 1 to 65535, {example}")
        return host.strip("[]"), int(port)

    def database(self, text: str) -> int:
        if not _DIGITS.fullmatch(text):
            raise self.bad(
                f"the database number {text[:40]!r} is not a number",
                "end the URL with /0 to /15 (the server's databases), or leave it out for 0",
            )
        return int(text)

    def query(self, query: str | None) -> dict[str, Any]:
        found: dict[str, Any] = {}
        after = ""  # the secret option before this one: an "&" in its value may cut it
        for item in (query or "").split("&"):
            if not item:
                continue
            raw_name, eq, raw_value = item.partition("=")
            name, value = unquote(raw_name), unquote(raw_value)
            label = f"after {after!r}" if after else repr(name)
            known = OPTIONS.get(name)
            if not _WORD.fullmatch(name):
                raise self.bad(f"an option name that is not a word ({label})", _ENCODE_OPTION)
            if known is None or self.scheme not in known[2]:
                if after:
                    raise self.bad(f"an unknown option {label}", _ENCODE_OPTION)
                takes = sorted(n for n, (*_, schemes) in OPTIONS.items() if self.scheme in schemes)
                what = "unknown option" if known is None else f"{self.scheme}:// takes no option"
                raise self.bad(f"{what} {label}", f"{self.scheme}:// takes {', '.join(takes)}")
            convert, takes_what, _ = known
            if name in found:
                raise self.bad(f"option {label} is given twice", "give it once")
            if not eq or not value:
                raise self.bad(f"option {label} has no value", f"write {name}=<{takes_what}>")
            try:
                found[name] = convert(value)
            except ValueError:
                shown = "" if after or is_secret(name) else f" {value[:60]!r}"
                raise self.bad(
                    f"bad value{shown} for option {label}", f"it takes {takes_what}"
                ) from None
            if is_secret(name):
                after = name
        return found


def parse_redis_url(url: str) -> RedisURL:
    """Check a ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    ``redis+cluster://`` or ``rediss+cluster://`` URL and read it; ``InvalidURL`` says what
    is wrong and what to write, without its secrets."""
    p = _split(url)
    scheme = (p.scheme or "").lower()
    if scheme not in REDIS_SCHEMES + CLUSTER_SCHEMES:
        raise InvalidURL(
            f"bad Redis URL {redact_url(url)!r}: use redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster://"
        )
    r = _Reader(url, scheme)
    if p.ambiguous:
        raise r.bad("an '@' after the host (a password with an unencoded / ? or #?)", _ENCODE)
    if p.fragment is not None:
        raise r.bad("a '#' in the URL", _ENCODE)
    username = password = None
    if p.userinfo is not None:
        user, _, secret = p.userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    options = r.query(p.query)
    for name, given in (("username", username), ("password", password)):
        if name in options and given is not None:
            raise r.bad(f"the {name} is given twice, before '@' and as ?{name}=", "give it once")
    username = options.pop("username", username)
    password = options.pop("password", password)
    db = options.pop("db", None)
    prefix = options.pop("prefix", None)
    hosts: tuple[tuple[str, int], ...] = ()
    socket = service = ""
    path = [unquote(s) for s in p.path.split("/")[1:]]
    if scheme == "unix":
        if p.hosts:
            raise r.bad("a unix:// URL names no host", "write unix:///path/to/redis.sock (three /)")
        socket = unquote(p.path)
        if not socket.strip("/"):
            raise r.bad("no socket path")
    elif scheme == "redis+sentinel":
        if not p.hosts:
            raise r.bad("no sentinel address")
        hosts = tuple(r.address(item, SENTINEL_PORT, "sentinel") for item in p.hosts.split(","))
        if not path or not path[0]:
            raise r.bad("no service name", "name the master the sentinels watch, e.g. "
                        "redis+sentinel://host:26379/mymaster/0")  # fmt: skip
        service, rest = path[0], [s for s in path[1:] if s]
        if len(rest) > 1:
            raise r.bad("more than a service and a database after the sentinels")
        db = _one_db(r, db, r.database(rest[0]) if rest else None)
    elif scheme in CLUSTER_SCHEMES:
        hosts = _seeds(r, p.hosts, path)
    else:
        if "," in p.hosts:
            raise r.bad(
                "several hosts",
                f"only redis+sentinel:// and redis+cluster:// take a list; write "
                f"{_EXAMPLE[scheme]}",
            )
        hosts = (r.address(p.hosts, REDIS_PORT, "Redis"),)
        rest = [s for s in path if s]
        if len(rest) > 1:
            raise r.bad("more than a database number after the host")
        db = _one_db(r, db, r.database(rest[0]) if rest else None)
    return RedisURL(
        scheme=scheme,
        shown=r.shown,
        hosts=hosts,
        socket=socket,
        service=service,
        db=db or 0,
        username=username,
        password=password,
        prefix=prefix,
        options=tuple(sorted(options.items())),
    )


def key_prefix(given: str | None, url: RedisURL) -> str:
    """The key prefix a Redis broker uses: ``prefix=`` (of ``Conveyor`` or the broker) or
    the URL's ``?prefix=``, whichever is given, else ``conveyor``. Both given must name the
    same prefix: a producer and a worker that each read only one of them would otherwise
    work on different keys, and its jobs would wait for ever."""
    if given is not None and url.prefix is not None and given != url.prefix:
        raise ConfigurationError(
            f"two key prefixes: prefix={given!r} and ?prefix={url.prefix} in the URL "
            f"{url.shown!r}; give it once (drop prefix= or ?prefix=), or the same name in both"
        )
    if given is not None:
        return given
    return url.prefix or "conveyor"


def _seeds(r: _Reader, hosts: str, path: list[str]) -> tuple[tuple[str, int], ...]:
    """The seed nodes of a cluster URL, which names no database (a cluster has only 0)."""
    if not hosts:
        raise r.bad("no seed node")
    if any(s for s in path):
        raise r.bad(
            "a path after the seed nodes",
            "a cluster has database 0 only: end the URL after the last host:port",
        )
    return tuple(r.address(item, REDIS_PORT, "seed node") for item in hosts.split(","))


def _one_db(r: _Reader, option: int | None, path: int | None) -> int | None:
    if option is not None and path is not None and option != path:
        raise r.bad(f"two databases, /{path} and ?db={option}", "give one")
    return path if path is not None else option
