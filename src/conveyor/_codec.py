"""Turning messages and values into bytes and back.

JSON (msgspec) is the default: fast, and decoding it cannot run code. Pickle is available
only when the application asks for it *and* gives a signing secret: every payload then
carries an HMAC-SHA256 over its body, and a payload whose signature is missing or wrong is
refused before a single byte is unpickled. A secret may also be used with JSON, so that only
producers holding it can enqueue.

Wire format::

    JSON, unsigned:  <json>
    signed:          b"CV1" + <32-byte HMAC-SHA256 of body> + body
                     body = b"J" + <json>  |  b"P" + <pickle>
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any, Literal, TypeVar

import msgspec

from ._errors import ConfigurationError, PayloadTooLarge, SerializationError
from ._message import Message, Outcome

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 1024 * 1024
_SIGNED = b"CV1"
_MAC_LEN = 32

Serializer = Literal["json", "pickle"]


def _enc_hook(obj: Any) -> Any:
    raise NotImplementedError(
        f"cannot serialize {type(obj).__qualname__}; pass JSON-compatible values "
        "(str, int, float, bool, None, list, dict, datetime, UUID, dataclass) "
        "or enable pickle with a signing secret"
    )


class Codec:
    def __init__(
        self,
        serializer: Serializer = "json",
        secret: bytes | str | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if serializer not in ("json", "pickle"):
            raise ConfigurationError(f"unknown serializer {serializer!r}: use 'json' or 'pickle'")
        if serializer == "pickle" and not secret:
            raise ConfigurationError(
                "pickle needs a signing secret: Conveyor(..., serializer='pickle', "
                "secret=os.environ['CONVEYOR_SECRET']); unsigned pickle lets anyone who can "
                "write to the broker run code in your workers"
            )
        self.serializer: Serializer = serializer
        self._key = secret.encode() if isinstance(secret, str) else secret
        self.max_payload = max_payload
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
        self._msg_decoder = msgspec.json.Decoder(Message)
        self._outcome_decoder = msgspec.json.Decoder(Outcome)
        self._any_decoder = msgspec.json.Decoder()

    # -- framing ---------------------------------------------------------------------------

    def _body(self, obj: Any) -> bytes:
        try:
            if self.serializer == "pickle":
                return b"P" + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            data = self._encoder.encode(obj)
        except (NotImplementedError, TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(str(exc)) from exc
        except (pickle.PicklingError, AttributeError) as exc:
            raise SerializationError(f"cannot pickle value: {exc}") from exc
        return b"J" + data if self._key else data

    def _frame(self, obj: Any) -> bytes:
        body = self._body(obj)
        if not self._key:
            return body
        mac = hmac.digest(self._key, body, hashlib.sha256)
        return _SIGNED + mac + body

    def _unframe(self, data: bytes) -> tuple[bool, bytes]:
        """Return (is_pickle, body) after checking the signature when one is required."""
        if not self._key:
            if data.startswith(_SIGNED):
                raise SerializationError("signed payload but this app has no secret configured")
            return False, data
        if not data.startswith(_SIGNED) or len(data) < len(_SIGNED) + _MAC_LEN + 1:
            raise SerializationError("payload is not signed; refusing to decode it")
        mac = data[len(_SIGNED) : len(_SIGNED) + _MAC_LEN]
        body = data[len(_SIGNED) + _MAC_LEN :]
        if not hmac.compare_digest(mac, hmac.digest(self._key, body, hashlib.sha256)):
            raise SerializationError("payload signature does not match; refusing to decode it")
        kind, rest = body[:1], body[1:]
        if kind == b"P":
            return True, rest
        if kind == b"J":
            return False, rest
        raise SerializationError("unknown payload body kind")

    def _decode(self, data: bytes, decoder: msgspec.json.Decoder[T], type_: type[T]) -> T:
        is_pickle, body = self._unframe(data)
        try:
            if is_pickle:
                obj = pickle.loads(body)  # signature verified above
                return msgspec.convert(obj, type_) if type_ is not object else obj
            return decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SerializationError(f"cannot decode payload: {exc}") from exc
        except Exception as exc:
            raise SerializationError(f"cannot decode payload: {exc!r}") from exc

    # -- public ----------------------------------------------------------------------------

    def encode_message(self, message: Message) -> bytes:
        data = self._frame(message)
        if len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"job {message.task} encodes to {len(data)} bytes, over the "
                f"{self.max_payload}-byte cap; store large data elsewhere (a file, object store "
                "or app.store) and pass its key, or raise Conveyor(max_payload=...)"
            )
        return data

    def decode_message(self, data: bytes) -> Message:
        return self._decode(data, self._msg_decoder, Message)

    def encode_outcome(self, outcome: Outcome) -> bytes:
        return self._frame(outcome)

    def decode_outcome(self, data: bytes) -> Outcome:
        return self._decode(data, self._outcome_decoder, Outcome)

    def encode_value(self, value: Any) -> bytes:
        return self._frame(value)

    def decode_value(self, data: bytes) -> Any:
        return self._decode(data, self._any_decoder, object)
