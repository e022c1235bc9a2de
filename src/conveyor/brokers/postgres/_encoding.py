"""Which text a PostgreSQL database can store, by its server encoding: the broker's own
connections speak UTF8, and the server converts into its encoding and refuses what that
encoding lacks (``_db`` checks user text with these before anything is sent, and makes a
worker's text storable)."""

from __future__ import annotations

from ..._errors import InvalidName

# Server encodings whose Python codec (psycopg's table) holds exactly the characters the
# server's conversion from UTF8 holds: compared character by character over the whole BMP
# (these have nothing beyond it). Not in it: EUC_JP, EUC_JIS_2004 and EUC_KR, where
# Python and PostgreSQL map thousands of characters differently ("〜", "똠": Python only;
# "髙", "①": PostgreSQL only), and EUC_TW and MULE_INTERNAL, which Python lacks.
_EXACT = frozenset(
    {"UTF8", "EUC_CN", "KOI8R", "KOI8U", "WIN866", "WIN874"}
    | {f"LATIN{n}" for n in range(1, 11)}
    | {f"ISO_8859_{n}" for n in range(5, 9)}
    | {f"WIN{n}" for n in range(1250, 1259)}
)


def python_codec(encoding: str) -> str | None:
    """The Python codec psycopg uses for this PostgreSQL ``encoding`` name (None: Python
    has none), exact or not (see ``codec_of``)."""
    import psycopg  # (here: ``_db`` says what to install when psycopg is missing)

    try:  # psycopg's own table (not public API: without it, the server checks alone)
        from psycopg._encodings import pg2pyenc

        return pg2pyenc(encoding.encode())
    except (ImportError, psycopg.NotSupportedError):
        return None


def codec_of(encoding: str) -> str | None:
    """The Python codec that tells exactly which text a database in this server
    ``encoding`` stores, as the broker reads it: UTF-8 for SQL_ASCII too, which stores the
    bytes it is sent (psycopg sends UTF-8 there) and converts nothing. None: no codec
    agrees with the server's conversion (or Python has none): the server decides."""
    if encoding == "SQL_ASCII":
        return "utf-8"
    return python_codec(encoding) if encoding in _EXACT else None


def ascii_safe(text: str) -> str:
    """``text`` with every character outside ASCII (and a NUL) replaced by ``?``: what
    every encoding holds."""
    return text.encode("ascii", "replace").decode().replace("\x00", "?")


def unstorable(text: str, codec: str | None) -> bool:
    """True if ``text`` cannot be sent to a database whose text is in ``codec`` (a character
    the encoding lacks, a lone surrogate, a NUL, which no PostgreSQL text holds)."""
    if "\x00" in text:
        return True
    if text.isascii() or codec is None:  # (a codec Python lacks: the server will tell)
        return False
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return True
    return False


def refusal(what: str, text: str, where: str, advice: str) -> InvalidName:
    """The error for user text (``what``: "unique key", "store key", "rate key") that
    ``where`` (the database, a caller's connection) cannot take: ``advice`` says what to do
    instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        advice = "a lone surrogate (half of a UTF-16 pair) is no text: pass valid Unicode"
    return InvalidName(
        f"{what} {text[:100]!r} holds characters {where} cannot store: {advice}; nothing "
        "was written"
    )


def encoding_advice(encoding: str) -> str:
    """What to do about text a database in this server ``encoding`` cannot store."""
    return (
        f"its encoding is {encoding}. Use characters {encoding} holds (ASCII always works), "
        "or keep Conveyor's tables in a database created with ENCODING 'UTF8'"
    )
