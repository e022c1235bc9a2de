"""What keeps the dashboard safe to expose: HTTP Basic auth on every request, the ``Host``
check of a dashboard without it (``_hosts``), a CSRF token on every action, and headers
that stop a page from being framed or from running any script it did not load from here
(everything user-provided is also put in the page as text by the script, never as
markup)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ConfigurationError
from ._hosts import ANY, host_allowed

CSRF_COOKIE = "conveyor_csrf"
CSRF_HEADER = "x-conveyor-csrf"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{43}\Z")  # secrets.token_urlsafe(32)

# No inline script or style may run, nothing loads from elsewhere, no page frames this one.
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def credentials(auth: str | tuple[str, str] | None) -> tuple[str, str] | None:
    """``"user:password"`` or ``(user, password)``, both non-empty; None for no auth."""
    if auth is None:
        return None
    if isinstance(auth, str):
        user, colon, password = auth.partition(":")
        pair = (user, password) if colon else ("", "")
    elif isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth):
        pair = auth
    else:
        pair = ("", "")
    if not pair[0] or not pair[1] or ":" in pair[0]:
        raise ConfigurationError(
            "auth takes 'USER:PASSWORD' (or a (user, password) tuple), both non-empty and no "
            "':' in the user (HTTP Basic cannot send one); "
            "e.g. auth='admin:' + os.environ['DASHBOARD_PASSWORD']"
        )
    return pair


def _digest(text: str) -> bytes:
    # Compared as digests: equal lengths, so the time taken tells nothing of the secret.
    return hashlib.sha256(text.encode()).digest()


class Guard:
    """ASGI middleware: every HTTP request names an allowed ``Host`` (``hosts``; None: any;
    403 otherwise) and carries the credentials (401 otherwise), and every response carries
    ``HEADERS``."""

    def __init__(
        self, app: ASGIApp, pair: tuple[str, str] | None, hosts: frozenset[str] | None
    ) -> None:
        self.app = app
        self.expected = None if pair is None else (_digest(pair[0]), _digest(pair[1]))
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            host = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.hosts):
                await _refuse(send, 403, _wrong_host(host, self.hosts), [])
                return
        if self.expected is not None and not self._allowed(scope):
            await _unauthorized(send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _allowed(self, scope: Scope) -> bool:
        assert self.expected is not None
        header = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, colon, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        same_user = hmac.compare_digest(_digest(user), self.expected[0])
        same_password = hmac.compare_digest(_digest(password), self.expected[1])
        return bool(colon) and same_user and same_password


async def _unauthorized(send: Send) -> None:
    challenge = (b"www-authenticate", b'Basic realm="Conveyor dashboard", charset="UTF-8"')
    await _refuse(send, 401, "this dashboard needs a user name and password", [challenge])


def _wrong_host(host: str, allowed: frozenset[str]) -> str:
    shown = host if len(host) <= 80 else host[:77] + "..."
    names = ", ".join(sorted(allowed - {ANY}))
    return (
        f"this dashboard answers only for localhost{f' and {names}' if names else ''}, not "
        f"for the host {shown!r} this request named (a page of another site could reach a "
        "dashboard without a password under a name of its own): open it as localhost, or "
        "name the host with --allowed-host (allowed_hosts=[...] of asgi_app), or set --auth"
    )


async def _refuse(send: Send, status: int, error: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
        *HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def csrf_token(request: Request) -> tuple[str, bool]:
    """The page's CSRF token: the browser's cookie if it has a good one, else a new one
    (True: set the cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if _TOKEN.match(token):
        return token, False
    return secrets.token_urlsafe(32), True


def csrf_ok(request: Request) -> bool:
    """An action carries the cookie's token in its header too: a page of another site can
    make the browser send the cookie, never read it, nor set the header."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    return bool(_TOKEN.match(cookie)) and hmac.compare_digest(cookie.encode(), header.encode())
