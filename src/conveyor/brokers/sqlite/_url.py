"""The ``sqlite://`` URL: three slashes before a relative path, four before an absolute one.
The path is percent-decoded, so a ``#``, ``?`` or ``%`` in it is written ``%23``, ``%3F``,
``%25``: unencoded, ``#`` and ``?`` would start a fragment or options (refused), and ``%41``
reads as ``A``."""

from __future__ import annotations

import os
from urllib.parse import unquote

from ..._errors import InvalidURL


def sqlite_path(url: str) -> str:
    """The file path in a ``sqlite://`` URL (three slashes: relative; four: absolute)."""
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    how = "write sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db (four)"
    if not sep or scheme.lower() != "sqlite":
        raise InvalidURL(f"bad SQLite URL {url!r}: {how}")
    if rest.lstrip("/") == ":memory:":
        raise InvalidURL(
            f"{url!r}: an in-memory SQLite database cannot be shared with worker processes; "
            "use memory:// for one process (tests), or a file such as sqlite:///./conveyor.db"
        )
    if not rest.startswith("/"):
        raise InvalidURL(f"bad SQLite URL {url!r}: a host is not allowed; {how}")
    path = unquote(rest[1:])
    if any(c in rest for c in "?#") or "\x00" in path:
        raise InvalidURL(
            f"bad SQLite URL {url!r}: options are not supported; a '#', '?' or '%' in a "
            f"folder or file name is written percent-encoded (%23, %3F, %25); {how}"
        )
    if not path or path.endswith("/"):
        raise InvalidURL(f"bad SQLite URL {url!r}: name a database file; {how}")
    return path


def sqlite_url(path: str) -> str:
    """The URL of the file at ``path``, made absolute (four slashes): what the broker shows,
    so an operator sees which file a relative URL opened. ``sqlite_path`` reads it back."""
    absolute = os.path.abspath(path)
    return "sqlite:///" + absolute.replace("%", "%25").replace("?", "%3F").replace("#", "%23")
