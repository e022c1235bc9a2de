"""The codec: JSON by default, pickle only signed, a size cap, tampering refused."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, PayloadTooLarge, SerializationError
from conveyor._codec import Codec
from conveyor._message import Message, Outcome, RemoteError


def test_json_round_trip_of_a_message() -> None:
    codec = Codec()
    msg = Message(id="j1", task="m:f", args=[1, "a", [2.5]], kwargs={"k": None}, queue="q")
    data = codec.encode_message(msg)
    assert data.startswith(b"{")
    assert codec.decode_message(data) == msg


def test_outcome_round_trip() -> None:
    codec = Codec()
    out = Outcome(error=RemoteError("ValueError", "bad", "tb"))
    assert codec.decode_outcome(codec.encode_outcome(out)) == out
    when = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)  # it would come back a str: refused
    with pytest.raises(SerializationError, match=r'value\["at"\] .* use x.isoformat\(\)'):
        codec.encode_value({"at": when})


@pytest.mark.parametrize("secret", [None, "s3cret"])
@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(value=None),
        Outcome(value=True),
        Outcome(value=2**70),
        Outcome(value="é\n\u2028"),
        Outcome(value=[1, {"a": 2.5}]),
        Outcome(error=RemoteError("ValueError", "bad", "tb")),
        Outcome(reason="cancelled while running (cancel)"),
    ],
)
def test_an_outcome_encodes_to_its_framed_body_whatever_path_it_takes(
    outcome: Outcome, secret: str | None
) -> None:
    # A plain value without a secret skips the framing's calls: the bytes are the same.
    codec = Codec(secret=secret)
    assert codec.encode_outcome(outcome) == codec._frame(outcome)
    assert codec.decode_outcome(codec.encode_outcome(outcome)) == outcome


def test_a_plain_value_the_encoder_refuses_is_refused_as_before() -> None:
    for outcome in (Outcome(value="\ud800"), Outcome(error=RemoteError("E", "\ud800"))):
        with pytest.raises(SerializationError, match=r"cannot encode result as JSON: .*surrogate"):
            Codec().encode_outcome(outcome)


def test_unserializable_argument_is_a_typed_error_that_says_what_to_do() -> None:
    with pytest.raises(SerializationError, match=r"args\[0\] .* no JSON form; send plain values"):
        Codec().encode_message(Message(id="j", task="m:f", args=[object()]))


def test_pickle_without_a_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="secret"):
        Codec("pickle")


def test_signed_pickle_round_trip_and_tampering_refused() -> None:
    codec = Codec("pickle", secret="s3cret")
    data = codec.encode_message(Message(id="j", task="m:f", args=[{1, 2}]))
    assert codec.decode_message(data).args == [{1, 2}]
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(SerializationError, match="signature"):
        codec.decode_message(tampered)
    with pytest.raises(SerializationError, match="signature"):
        Codec("pickle", secret="other").decode_message(data)


def test_unsigned_pickle_gadget_is_never_unpickled() -> None:
    class Gadget:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    gadget = pickle.dumps(Gadget())
    codec = Codec("pickle", secret="k")
    with pytest.raises(SerializationError, match="not signed"):
        codec.decode_message(gadget)
    with pytest.raises(SerializationError):
        Codec().decode_message(gadget)


def test_payload_cap() -> None:
    codec = Codec(max_payload=100)
    with pytest.raises(PayloadTooLarge, match="max_payload"):
        codec.encode_message(Message(id="j", task="m:f", args=["x" * 200]))


def test_garbage_is_a_serialization_error() -> None:
    for garbage in (b"", b"\xff\xfe", b"{not json", b'{"id": 1}', b"[]"):
        with pytest.raises(SerializationError):
            Codec().decode_message(garbage)


def test_an_unsigned_json_message_decodes_as_through_the_framing() -> None:
    # Unsigned JSON bytes skip _decode and _unframe: the same Message, the same refusals.
    codec = Codec()
    good = codec.encode_message(Message(id="j1", task="m:f", args=[1, {"a": [2.5]}]))
    signed = Codec(secret="k").encode_message(Message(id="j1", task="m:f"))
    pickled = Codec("pickle", secret="k").encode_message(Message(id="j1", task="m:f"))
    bare = pickle.dumps({"id": "j1", "task": "m:f"})
    for data in (good, bytearray(good), signed, pickled, bare, b"{", b'{"id": 1}'):

        def outcome(decode: object, data: object = data) -> object:
            try:
                return decode(data)  # type: ignore[operator]
            except SerializationError as exc:
                return ("refused", str(exc))

        framed = outcome(lambda d: codec._decode(d, codec._msg_decoder, Message))
        assert outcome(codec.decode_message) == framed
    assert codec.decode_message(good) == Message(id="j1", task="m:f", args=[1, {"a": [2.5]}])
    with pytest.raises(SerializationError, match="signed payload but this app has no secret"):
        codec.decode_message(signed)
    with pytest.raises(SerializationError, match="payload is pickle"):
        codec.decode_message(bare)


# -- the codec through the app ---------------------------------------------------------------


def test_a_job_let_in_at_the_payload_cap_is_retried() -> None:
    # Its retry, a few bytes longer with its attempt count, was refused by the cap, and the
    # job failed at its first error without a word.
    from conveyor import Conveyor, current_job
    from conveyor.testing import drain

    app = Conveyor("memory://", max_payload=2000)

    @app.task(retries=3, backoff=0.001)
    def flaky(blob: str) -> int:
        if current_job().attempt == 0:
            raise OSError("transient")
        return len(blob)

    job, size = _at_the_cap(flaky, 2000)
    drain(app)
    assert job.result() == size


@pytest.mark.parametrize("lifted", [False, True], ids=["python-default", "limit-lifted"])
def test_an_int_past_4300_digits_is_refused_at_enqueue_with_its_path(lifted: bool) -> None:
    # With Python's limit lifted (what the error advised) it went out, and the worker
    # dead-lettered it as undecodable; with the default, the error had no path.
    import sys

    from conveyor import Conveyor
    from conveyor.testing import drain

    if lifted:
        sys.set_int_max_str_digits(0)  # restored below
    app = Conveyor("memory://")

    @app.task
    def echo(x: object) -> object:
        return x

    try:
        with pytest.raises(SerializationError, match=r"args\[0\]\[1\]\[\"n\"\].*4,300 digits"):
            echo.delay([1, {"n": 10**4300}])
        assert app.broker.stats() == []  # nothing went out
        fits = echo.delay(10**4300 - 1)  # 4,300 digits
        drain(app)
        assert fits.result() == 10**4300 - 1
    finally:
        sys.set_int_max_str_digits(4300)


def test_a_dead_letter_written_with_another_secret_reads_as_dead(tmp_path: Path) -> None:
    # The worker (no secret) dead-lettered the producer's signed job, and wrote its outcome
    # unsigned: the producer's result() raised "payload is not signed" instead of JobDead.
    from conveyor import Conveyor, JobDead
    from conveyor.testing import drain

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    producer, worker = Conveyor(url, secret="A"), Conveyor(url)

    for app in (producer, worker):

        @app.task(name="t")
        def t() -> None: ...

    job = producer.registry["t"].delay()
    drain(worker)
    with pytest.raises(JobDead, match="signed"):
        job.result()
    assert isinstance(job.exception(), JobDead)
    producer.close()
    worker.close()


def test_a_secret_from_the_environment_with_undecodable_bytes_signs() -> None:
    # os.environ gives undecodable bytes as lone surrogates: str.encode() raised a raw
    # UnicodeEncodeError; they now stand for those bytes.
    codec = Codec("pickle", secret="k3y\udcff\udcfeabc")
    same = Codec("pickle", secret=b"k3y\xff\xfeabc")
    message = Message(id="a", task="t", args=[1])
    assert same.decode_message(codec.encode_message(message)) == message
    with pytest.raises(ConfigurationError, match="lone surrogate"):
        Codec("json", secret="\ud800")


def test_a_negative_int_counts_its_sign_and_a_requeue_is_not_capped() -> None:
    # The decoder counts the minus sign: -(10**4300 - 1) has 4,300 digits and 4,301 signs.
    # Refused where ints are looked at (with Python's limit lifted, or after a failed encode).
    import sys

    from conveyor import Conveyor
    from conveyor._clock import FakeClock
    from conveyor.testing import drain

    clock = FakeClock(1_700_000_000.0)
    app = Conveyor("memory://", clock=clock, max_payload=400)
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(SerializationError, match="4,300 digits"):
            app.task(name="n")(lambda x: x).delay(-(10**4300 - 1))
    finally:
        sys.set_int_max_str_digits(4300)

    # A job let in at the cap is requeued: its new enqueued_at may be longer by a few bytes.
    @app.task(name="boom")
    def boom(blob: str) -> None:
        raise ValueError("boom")

    job, _ = _at_the_cap(boom, 400)
    drain(app)
    clock.set(1_700_000_123.456789)
    assert app.requeue([job.id]) == 1


def _at_the_cap(task: Any, cap: int) -> tuple[Any, int]:
    """A job of ``task`` sent with the longest str argument the payload cap lets in, and
    that length."""
    for size in range(cap, 0, -1):
        try:
            return task.delay("x" * size), size
        except PayloadTooLarge:
            continue
    raise AssertionError("nothing fits under the cap")
