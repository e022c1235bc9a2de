"""``postgresql://`` URLs: Conveyor's own options taken out, the rest left to libpq.

Pure: nothing here imports psycopg, so a bad URL is refused where the app is made even
where psycopg is not installed. What libpq reads (host, port, user, password, database,
``sslmode``, ``connect_timeout``, ``application_name``, ...) goes to it unchanged; libpq
names what it does not know when the first connection is made.

Conveyor's options (docs/postgres.md):

``schema``
    The schema that holds Conveyor's tables (default ``conveyor``): lower-case letters,
    digits and ``_``, starting with a letter or ``_``, at most 48 characters (the
    notification channel is named after it).
``max_connections``
    The most connections the broker's pool opens (default 10), besides the one that
    listens for wake-ups.
``pool_timeout``
    Seconds an operation waits for a free connection of the pool (default 30).
``worker_commit``
    ``async`` (default): a worker's claims and finishes commit without waiting for the
    disk (``_functions``, schema version 5); ``sync``: they wait, as every other write does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from ..._errors import InvalidURL
from .._url import redact_url

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "conveyor"
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_POOL_TIMEOUT = 30.0
WORKER_COMMITS = ("async", "sync")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_EXAMPLE = "postgresql://user:password@host:5432/dbname"
_ENCODE = "percent-encode / ? # @ in a password as %2F %3F %23 %40"


@dataclass(frozen=True, repr=False)
class PostgresURL:
    """A checked PostgreSQL URL: ``conninfo`` is what libpq gets (the URL without
    Conveyor's options; it holds the password), ``shown`` the redacted URL."""

    conninfo: str
    shown: str
    schema: str = DEFAULT_SCHEMA
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    worker_commit: str = WORKER_COMMITS[0]
    secrets: tuple[str, ...] = ()  # the password's texts (``password_texts``): never shown

    def __repr__(self) -> str:
        return f"PostgresURL({self.shown!r})"


def _bad(shown: str, what: str, fix: str = f"write {_EXAMPLE}") -> InvalidURL:
    return InvalidURL(f"bad PostgreSQL URL {shown!r}: {what}; {fix}")


def check_schema(name: object, shown: str = "") -> str:
    """A schema name Conveyor can put in SQL without quoting surprises."""
    if not isinstance(name, str) or not _SCHEMA.fullmatch(name) or name.startswith("pg_"):
        what = f"bad schema name {str(name)[:60]!r}"
        fix = (
            "use 1-48 lower-case letters, digits and '_', starting with a letter or '_' "
            "(not with pg_, which PostgreSQL keeps for itself), e.g. ?schema=conveyor_jobs"
        )
        if shown:
            raise _bad(shown, what, fix)
        raise InvalidURL(f"{what}: {fix}")
    return name


def _positive(shown: str, name: str, text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not 0 < value < math.inf:  # NaN fails too
        what = f"bad value {text[:40]!r} for option {name!r}"
        raise _bad(shown, what, "it takes a number above 0")
    return value


def password_texts(base: str, options: list[str]) -> tuple[str, ...]:
    """The password as the URL writes it (in the authority of ``base``, or a ``password=``
    of ``options``) and percent-decoded, longest first: libpq quotes it in some of its
    messages (a space, a bad escape), which must not show it."""
    authority = base.split("/", 1)[0]
    userinfo, at, _ = authority.rpartition("@")
    given = [userinfo.partition(":")[2]] if at and ":" in userinfo else []
    for option in options:
        name, _, value = option.partition("=")
        if unquote(name) == "password":
            given.append(value)
    texts = {
        form
        for raw in given
        for text in (raw, unquote(raw))
        for form in (text, " ".join(text.split()))  # as a message shows it: blanks folded
    }
    return tuple(sorted((t for t in texts if t.strip()), key=len, reverse=True))


def parse_postgres_url(url: str) -> PostgresURL:
    """Check a ``postgresql://`` (or ``postgres://``) URL and take Conveyor's options out
    of it; ``InvalidURL`` says what is wrong and what to write, without the password."""
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    if not sep or scheme.lower() not in SCHEMES:
        raise _bad(shown, "use postgresql:// or postgres://")
    head, hashed, _ = rest.partition("#")
    if hashed:
        raise _bad(shown, "a '#' in the URL", _ENCODE)
    authority_end = min((i for i in (head.find("/"), head.find("?")) if i >= 0), default=len(head))
    if "@" in head[authority_end:].split("?", 1)[0]:
        raise _bad(shown, "an '@' after the host (a password with an unencoded / or ?)", _ENCODE)
    base, asked, query = head.partition("?")
    schema = DEFAULT_SCHEMA
    max_connections = DEFAULT_MAX_CONNECTIONS
    pool_timeout = DEFAULT_POOL_TIMEOUT
    worker_commit = WORKER_COMMITS[0]
    kept: list[str] = []
    seen: set[str] = set()
    for item in query.split("&") if asked else ():
        if not item:
            continue
        raw_name, eq, raw_value = item.partition("=")
        name, value = unquote(raw_name), unquote(raw_value)
        if name in ("schema", "max_connections", "pool_timeout", "worker_commit"):
            if name in seen:
                raise _bad(shown, f"option {name!r} is given twice", "give it once")
            seen.add(name)
            if not eq or not value:
                raise _bad(shown, f"option {name!r} has no value", f"write {name}=<value>")
            if name == "schema":
                schema = check_schema(value, shown)
            elif name == "max_connections":
                max_connections = int(_positive(shown, name, value, int))
            elif name == "worker_commit":
                if value not in WORKER_COMMITS:
                    what = f"bad value {value[:40]!r} for option {name!r}"
                    raise _bad(shown, what, "it takes async or sync")
                worker_commit = value
            else:
                pool_timeout = float(_positive(shown, name, value, float))
        else:
            kept.append(item)
    conninfo = f"postgresql://{base}" + (f"?{'&'.join(kept)}" if kept else "")
    return PostgresURL(
        conninfo=conninfo,
        shown=shown,
        schema=schema,
        max_connections=max_connections,
        pool_timeout=pool_timeout,
        worker_commit=worker_commit,
        secrets=password_texts(base, kept),
    )


def quoted(schema: str) -> str:
    """The schema as an SQL identifier (checked names never need escaping inside)."""
    return '"' + check_schema(schema) + '"'


def channel(schema: str) -> str:
    """The notification channel of a schema's broker (``LISTEN``/``pg_notify``)."""
    return f"{check_schema(schema)}_wake"


def with_schema(url: str, schema: str) -> str:
    """``url`` naming ``schema`` (tests give each broker a schema of its own)."""
    base, _, query = url.partition("?")
    items = [i for i in query.split("&") if i and not i.startswith("schema=")]
    return base + "?" + "&".join([*items, f"schema={quote(check_schema(schema))}"])
