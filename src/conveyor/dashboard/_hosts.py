"""Which ``Host`` a request may name. A dashboard without a password answers only for this
machine's own names (``localhost``, 127.x.x.x, ``[::1]``) and the names it was given: else
a page of any site whose name an attacker points at 127.0.0.1 (DNS rebinding) would be
"the same site" as the dashboard for the browser, free to read its pages and its CSRF
token and to post its actions. An address typed as such (``10.0.0.5``) cannot be rebound,
but it is allowed only when named too, so that the rule stays one line in the docs.

Pure: the command line uses it before the extra is imported.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .._checks import names, refuse

ANY = "*"  # allowed_hosts=["*"]: every Host (something in front checks it)
_EXAMPLE = "allowed_hosts=['conveyor.example.com']"


def loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port, in lower case: ``[::1]:8765`` gives
    ``[::1]``, ``Example.COM.:80`` gives ``example.com``."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    return text.partition(":")[0].rstrip(".")


def allowed_names(value: Any) -> frozenset[str]:
    """``allowed_hosts``: host names without a port (``*`` for any); IPv6 addresses in
    brackets or not."""
    found = set()
    for name in names("allowed_hosts", value, _EXAMPLE):
        text = name.strip().lower()
        try:
            if ipaddress.ip_address(text.strip("[]")).version == 6:
                text = f"[{text.strip('[]')}]"
        except ValueError:
            if not text or ":" in text or "/" in text or " " in text:
                rule = "allowed_hosts takes host names as a browser's Host names them, no port"
                raise refuse("allowed_hosts", value, rule, _EXAMPLE) from None
        found.add(text.rstrip("."))
    return frozenset(found)


def host_allowed(header: str, allowed: frozenset[str]) -> bool:
    """A request's ``Host`` is this machine's own name, or one of ``allowed``."""
    name = host_name(header)
    return bool(name) and (ANY in allowed or name in allowed or loopback(name))
