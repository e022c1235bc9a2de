"""Turning messages and values into bytes and back.

JSON (msgspec) is the default: fast, and decoding it cannot run code. Pickle is available
only when the application asks for it *and* gives a signing secret: every payload then
carries an HMAC-SHA256 over its body, and a payload whose signature is missing or wrong is
refused before a single byte is unpickled. A secret may also be used with JSON, so that only
producers holding it can enqueue. Either way an app decodes only its own serializer: a
pickle body reaching a JSON app is refused, signed or not.

The signature covers what the bytes are for, a job's message, a job's outcome or a stored
value (``app.store``, the cache), so bytes signed for one are refused as another: a value
stored with the app's secret (whose content a user may choose) copied into the broker as a
job is not a job. A signature does not cover the job id the broker files the payload under;
the worker checks that the message's own id is that one (``worker/_consumer.py``).

Values are checked before they are encoded: with JSON, ``_values.check`` refuses what would
not arrive as it was sent (NaN, bytes, sets, datetimes, int keys, ...); with pickle, what
pickle refuses is reported with the path of the part it refused (``args[1]["x"]``).

Wire format::

    JSON, unsigned:  <json>
    signed:          b"CV2" + <32-byte HMAC-SHA256(secret, purpose + body)> + body
                     purpose = b"msg", b"out" or b"val" (a message, outcome, value), then
                     a NUL byte
                     body = b"J" + <json>  |  b"P" + <pickle>

A frame of an earlier version (b"CV1", whose HMAC covered the body alone, whatever it was
for) is refused with a reason that says so, never decoded: no published version wrote it.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Iterator
from typing import Any, Literal, TypeVar

import msgspec

from ._checks import whole
from ._errors import ConfigurationError, InvalidOption, PayloadTooLarge, SerializationError
from ._message import Message, Outcome
from ._values import MAX_DEPTH, PLAIN, Trail, check, ints_bounded, path, root

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 1024 * 1024
_SIGNED = b"CV2"
_OLD_SIGNED = b"CV1"  # the body alone signed, whatever it was for: refused
_MAC_LEN = 32
# What the bytes are signed for, the start of what the HMAC covers (each 4 bytes, so no
# purpose's tag and body reads as another's).
_AS_MESSAGE = b"msg\0"
_AS_OUTCOME = b"out\0"
_AS_VALUE = b"val\0"
_PURPOSES = {
    _AS_MESSAGE: "a job",
    _AS_OUTCOME: "a job's outcome",
    _AS_VALUE: "a stored value (app.store or a cache)",
}

Serializer = Literal["json", "pickle"]


class Codec:
    def __init__(
        self,
        serializer: Serializer = "json",
        secret: bytes | str | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if serializer not in ("json", "pickle"):
            raise ConfigurationError(f"unknown serializer {serializer!r}: use 'json' or 'pickle'")
        _check_secret(secret)
        if serializer == "pickle" and not secret:
            raise ConfigurationError(
                "pickle needs a signing secret: Conveyor(..., serializer='pickle', "
                "secret=os.environ['CONVEYOR_SECRET']); unsigned pickle lets anyone who can "
                "write to the broker run code in your workers"
            )
        self.serializer: Serializer = serializer
        # A str from os.environ may hold undecodable bytes as lone surrogates: they go back
        # to those bytes, the same in every process.
        self._key = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
        self._plain_json = serializer == "json" and not self._key  # the body is the frame
        self.max_payload = whole("max_payload", max_payload, 1, 2**40, "max_payload=2**20")
        self._encoder = msgspec.json.Encoder()
        self._msg_decoder = msgspec.json.Decoder(Message)
        self._outcome_decoder = msgspec.json.Decoder(Outcome)
        self._any_decoder = msgspec.json.Decoder()

    # -- framing ---------------------------------------------------------------------------

    def _body(self, obj: Any) -> bytes:
        if self.serializer == "pickle":
            return b"P" + _pickled(obj)
        data = self._json(obj)
        return b"J" + data if self._key else data

    def _json(self, obj: Any) -> bytes:
        if not _all_plain(obj) or not ints_bounded():
            for trail, value in _parts(obj):
                check(value, trail)  # refuses what JSON would not bring back as it was
        try:
            return self._encoder.encode(obj)
        except RecursionError as exc:  # within MAX_DEPTH, but called from deep in a stack
            raise SerializationError(
                f"cannot encode {_what(obj)} as JSON: nested too deeply for the stack left "
                f"at this call (values may nest up to {MAX_DEPTH} levels); flatten it"
            ) from exc
        except Exception as exc:
            for trail, value in _parts(obj):
                check(value, trail, text=True)  # says where, if it is a str's fault
            raise SerializationError(f"cannot encode {_what(obj)} as JSON: {exc}") from exc

    def _frame(self, obj: Any, purpose: bytes) -> bytes:
        body = self._body(obj)
        if not self._key:
            return body
        return _SIGNED + _mac(self._key, purpose, body) + body

    def _unframe(self, data: bytes, purpose: bytes) -> bytes:
        """The body, after checking the signature (for ``purpose``) when one is required
        and that it is in the app's own format: an app decodes only the serializer it is
        configured for."""
        if not self._key:
            if data.startswith((_SIGNED, _OLD_SIGNED)):
                raise SerializationError("signed payload but this app has no secret configured")
            if data.startswith(_PICKLE_MAGIC):
                raise SerializationError(self._foreign("pickle"))
            return data
        if data.startswith(_OLD_SIGNED):
            raise SerializationError(
                "payload is signed in the frame of an earlier Conveyor version (CV1), which "
                "does not say what it was signed for; refusing to decode it (send it again "
                "with this version)"
            )
        if not data.startswith(_SIGNED) or len(data) < len(_SIGNED) + _MAC_LEN + 1:
            raise SerializationError("payload is not signed; refusing to decode it")
        mac = data[len(_SIGNED) : len(_SIGNED) + _MAC_LEN]
        body = data[len(_SIGNED) + _MAC_LEN :]
        if not hmac.compare_digest(mac, _mac(self._key, purpose, body)):
            raise SerializationError(self._mismatch(mac, body, purpose))
        kind = _KINDS.get(body[:1])
        if kind is None:
            raise SerializationError("unknown payload body kind")
        if kind != self.serializer:
            raise SerializationError(self._foreign(kind))
        return body[1:]

    def _mismatch(self, mac: bytes, body: bytes, purpose: bytes) -> str:
        """Why a signature that does not match for ``purpose`` is refused: signed with this
        secret for another purpose, or not with this secret at all."""
        assert self._key is not None
        for other, what in _PURPOSES.items():
            if other != purpose and hmac.compare_digest(mac, _mac(self._key, other, body)):
                return (
                    f"payload is signed as {what}, not as {_PURPOSES[purpose]}; refusing to "
                    "decode it (bytes signed with the app's secret for one use are not "
                    "accepted for another)"
                )
        return "payload signature does not match; refusing to decode it"

    def _foreign(self, kind: str) -> str:
        return (
            f"payload is {kind}, but this app is configured for {self.serializer}: refusing "
            "to decode it (an app decodes only its own serializer; give the producer and the "
            "worker the same Conveyor(serializer=...))"
        )

    def _decode(
        self, data: bytes, purpose: bytes, decoder: msgspec.json.Decoder[T], type_: type[T]
    ) -> T:
        body = self._unframe(data, purpose)
        try:
            if self.serializer == "pickle":
                import pickle  # on first use: a JSON app's processes never load it (~2 ms)

                obj = pickle.loads(body)  # signature verified above
                return msgspec.convert(obj, type_) if type_ is not object else obj
            return decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SerializationError(f"cannot decode payload: {exc}") from exc
        except RecursionError as exc:
            raise SerializationError(
                f"cannot decode payload: it is nested too deeply ({exc})"
            ) from exc
        except Exception as exc:
            raise SerializationError(f"cannot decode payload: {exc!r}") from exc

    # -- public ----------------------------------------------------------------------------

    def encode_message(self, message: Message, *, capped: bool = True) -> bytes:
        """The payload of ``message``; over ``max_payload`` it is refused, unless not
        ``capped`` (a retry: the job that was let in, its attempt count a few bytes longer)."""
        data = self._frame(message, _AS_MESSAGE)
        if capped and len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"job {message.task} encodes to {len(data)} bytes, over the "
                f"{self.max_payload}-byte cap; store large data elsewhere (a file, object store "
                "or app.store) and pass its key, or raise Conveyor(max_payload=...)"
            )
        return data

    @property
    def max_decoded(self) -> int:
        """The largest payload a worker decodes: twice ``max_payload``. Every payload
        Conveyor writes is capped but a retry's and a requeue's (``capped=False``), which
        are a job that was let in, a few bytes longer (its attempt count, its enqueue
        time); anything far over the cap was written into the broker by something else,
        and decoding it could take the worker's memory (45 MB of empty lists: 1.2 GB)."""
        return 2 * self.max_payload

    def decode_message(self, data: bytes) -> Message:
        # Every job's payload comes here: unsigned JSON bytes are decoded at once, without
        # ``_decode`` and ``_unframe`` (two Python calls). What decodes as a Message is JSON,
        # so it starts neither with the signed prefix nor with pickle's: ``_unframe`` would
        # have handed it on as it is. Anything the decoder refuses takes the full path below,
        # which refuses it as before.
        if self._plain_json and type(data) is bytes:
            try:
                return self._msg_decoder.decode(data)
            except Exception:
                pass
        return self._decode(data, _AS_MESSAGE, self._msg_decoder, Message)

    def encode_outcome(self, outcome: Outcome) -> bytes:
        # Every job's result comes here: unsigned JSON with a plain value (None, bool, int,
        # str: nothing to check) is encoded at once, without the framing's four calls. A
        # value the encoder refuses (a str with a lone surrogate) takes the full path below,
        # which says why.
        if self._plain_json and type(outcome.value) in PLAIN:
            try:
                return self._encoder.encode(outcome)
            except Exception:
                pass
        return self._frame(outcome, _AS_OUTCOME)

    def decode_outcome(self, data: bytes) -> Outcome:
        return self._decode(data, _AS_OUTCOME, self._outcome_decoder, Outcome)

    def encode_value(self, value: Any) -> bytes:
        return self._frame(value, _AS_VALUE)

    def decode_value(self, data: bytes) -> Any:
        return self._decode(data, _AS_VALUE, self._any_decoder, object)


def _mac(key: bytes, purpose: bytes, body: bytes) -> bytes:
    return hmac.digest(key, purpose + body, hashlib.sha256)


def _check_secret(secret: object) -> None:
    """A secret is a non-empty str or bytes, or None; its value is never shown."""
    if secret is None:
        return
    if not isinstance(secret, str | bytes):
        raise InvalidOption(
            f"bad secret (of type {type(secret).__name__}): a signing secret is a str or bytes; "
            "write secret=os.environ['CONVEYOR_SECRET']"
        )
    if not secret:
        raise InvalidOption(
            f"bad secret={secret!r}: an empty secret would leave payloads unsigned without a "
            "word; give a non-empty one, or secret=None for no signing"
        )
    if isinstance(secret, str):
        try:
            secret.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise InvalidOption(
                "bad secret: it holds a lone surrogate, text with no bytes to sign with; give "
                "it as bytes, or read it from the environment (os.environ['CONVEYOR_SECRET'])"
            ) from None


_KINDS: dict[bytes, Serializer] = {b"J": "json", b"P": "pickle"}
_PICKLE_MAGIC = b"\x80"  # the PROTO opcode that starts every pickle since protocol 2


_ARGS, _KWARGS, _RESULT, _VALUE = root("args"), root("kwargs"), root("result"), root("value")


def _parts(obj: Any) -> Iterator[tuple[Trail, Any]]:
    """The user's values in what is encoded, each with where an error says it is."""
    if type(obj) is Message:
        for i, arg in enumerate(obj.args):
            yield (_ARGS, i), arg
        for name, arg in obj.kwargs.items():
            yield (_KWARGS, name), arg
    elif type(obj) is Outcome:
        yield _RESULT, obj.value
    else:
        yield _VALUE, obj


def _all_plain(obj: Any) -> bool:
    """True if the user's values in ``obj`` are all None, bool, int or str: most calls, so
    they skip the walk (the types are looked at in C)."""
    if type(obj) is not Message:
        return type(obj.value if type(obj) is Outcome else obj) in PLAIN
    for arg in obj.args:  # a loop beats set and map tricks for a few arguments
        if type(arg) not in PLAIN:
            return False
    for arg in obj.kwargs.values():  # noqa: SIM110
        if type(arg) not in PLAIN:
            return False
    return True


def _what(obj: Any) -> str:
    return "the job's arguments" if type(obj) is Message else path(next(_parts(obj))[0])


def _pickled(obj: Any) -> bytes:
    import pickle

    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # PicklingError, TypeError, AttributeError, RecursionError, ...
        raise SerializationError(_unpicklable(obj, exc)) from exc


def _unpicklable(obj: Any, error: Exception) -> str:
    """Which part of ``obj`` pickle refused, and why: the deepest list item or dict value
    that fails on its own."""
    import pickle

    for trail, value in _parts(obj):
        try:
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except RecursionError:
            return (
                f"cannot pickle {path(trail)}: it is nested deeper than pickle can follow "
                f"(Python's recursion limit is {sys.getrecursionlimit()}); flatten it"
            )
        except Exception as exc:
            where, why = _deepest(value, trail, exc)
            return f"cannot pickle {path(where)}: {why}; {_PICKLABLE}"
    return f"cannot pickle {_what(obj)}: {error}; {_PICKLABLE}"


def _deepest(value: Any, trail: Trail, error: Exception) -> tuple[Trail, Exception]:
    import pickle

    while isinstance(value, list | tuple | dict):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            try:
                pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                value, trail, error = item, (trail, key), exc
                break
        else:
            break
    return trail, error


_PICKLABLE = (
    "pickle carries instances of module-level classes and module-level functions, not "
    "lambdas, local classes, locks, files, sockets or generators"
)
