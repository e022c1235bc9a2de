"""The codec: JSON by default, pickle only signed, a size cap, tampering refused."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, PayloadTooLarge, SerializationError
from conveyor._codec import _AS_MESSAGE, _AS_OUTCOME, Codec
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
    assert codec.encode_outcome(outcome) == codec._frame(outcome, _AS_OUTCOME)
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


SHAPED_LIKE_A_JOB = {"id": "j", "task": "m:f", "args": ["chosen by whoever stored it"]}


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_bytes_signed_for_one_use_are_refused_as_another(serializer: Any) -> None:
    """A stored value shaped like a message, signed with the app's secret, decoded as a
    job: before, the signature covered the body alone, and it was one."""
    codec = Codec(serializer, secret="s3cret")
    message = Message(id="j", task="m:f", args=[1])
    value = codec.encode_value(SHAPED_LIKE_A_JOB)
    outcome = codec.encode_outcome(Outcome(value=SHAPED_LIKE_A_JOB))
    job = codec.encode_message(message)
    assert codec.decode_value(value) == SHAPED_LIKE_A_JOB  # each for its own use
    assert codec.decode_outcome(outcome) == Outcome(value=SHAPED_LIKE_A_JOB)
    assert codec.decode_message(job) == message
    refused = [
        (codec.decode_message, value, "a stored value (app.store or a cache), not as a job"),
        (codec.decode_message, outcome, "a job's outcome, not as a job"),
        (codec.decode_value, job, "a job, not as a stored value"),
        (codec.decode_outcome, value, "a stored value (app.store or a cache), not as a job's"),
    ]
    for decode, data, says in refused:
        with pytest.raises(SerializationError) as caught:
            decode(data)
        assert str(caught.value).startswith("payload is signed as " + says), caught.value
    with pytest.raises(SerializationError, match="signature does not match"):
        Codec(serializer, secret="other").decode_message(job)


def test_a_payload_signed_in_the_earlier_frame_is_refused_saying_so() -> None:
    """Frame CV1 signed the body alone, whatever it was for: never decoded now."""
    import hashlib
    import hmac

    body = b"J" + b'{"id":"j","task":"m:f"}'
    old = b"CV1" + hmac.digest(b"s3cret", body, hashlib.sha256) + body
    with pytest.raises(SerializationError) as caught:
        Codec(secret="s3cret").decode_message(old)
    assert str(caught.value).startswith(
        "payload is signed in the frame of an earlier Conveyor version (CV1)"
    )
    with pytest.raises(SerializationError, match="signed payload but this app has no secret"):
        Codec().decode_message(old)


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

        framed = outcome(lambda d: codec._decode(d, _AS_MESSAGE, codec._msg_decoder, Message))
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


# -- what a secret vouches for: a job of this app, under its own id --------------------------


def _signed_app(broker: str, tmp_path: Path, serializer: Any = "json", **options: Any) -> Any:
    from conveyor import Conveyor

    url = "memory://" if broker == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    return Conveyor(url, serializer=serializer, secret="s3cret", **options)


def _recorder(app: Any, ran: list[Any]) -> Any:
    @app.task(name="t.record")
    def record(tag: Any, *more: Any) -> Any:
        ran.append(tag)
        return tag

    return record


def _dead_reason(app: Any, job_id: str) -> str:
    from conveyor import JobDead

    with pytest.raises(JobDead) as caught:
        app.job(job_id).result(timeout=5)
    return caught.value.reason


@pytest.mark.parametrize("broker", ["memory", "sqlite"])
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_value_stored_with_the_secret_is_never_run_as_a_job(
    broker: str, serializer: str, tmp_path: Path
) -> None:
    """Whoever can write the broker copied a stored value (its content chosen by a user: a
    webhook body, say) into a job's payload: it ran as a job, with the arguments it held."""
    from conveyor._message import Envelope
    from conveyor.testing import drain

    app, ran = _signed_app(broker, tmp_path, serializer), []
    record = _recorder(app, ran)
    app.store.set("webhook:last", {"id": "forged", "task": "t.record", "args": ["stored"]})
    stored = app.broker.kv.get("store:webhook:last")
    assert stored is not None
    app.broker.enqueue([Envelope("forged", "default", stored)])
    after = record.delay("after")
    drain(app, timeout=30)
    assert after.result(timeout=5) == "after"
    assert ran == ["after"]
    assert _dead_reason(app, "forged").startswith(
        "undecodable payload: payload is signed as a stored value (app.store or a cache), "
        "not as a job; refusing to decode it"
    )
    app.close()


@pytest.mark.parametrize("broker", ["memory", "sqlite"])
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_signed_payload_replayed_under_another_id_is_dead_lettered(
    broker: str, serializer: str, tmp_path: Path
) -> None:
    """A job's payload, captured from the broker and written again under a new id, ran
    again: its signature is good, and nothing compared the id it names with the job's."""
    from conveyor._message import Envelope
    from conveyor.testing import drain

    app, ran = _signed_app(broker, tmp_path, serializer), []
    record = _recorder(app, ran)
    job = record.delay("once")
    payload = app.broker.payload(job.id)
    assert payload is not None
    app.broker.enqueue([Envelope("replayed", "default", payload)])
    drain(app, timeout=30)
    assert job.result(timeout=5) == "once"
    assert ran == ["once"]
    assert _dead_reason(app, "replayed") == (
        f"the payload belongs to job {job.id!r}, not to this one: a job's payload written "
        "into the broker under another id is not run"
    )
    app.close()


def test_a_replayed_workflow_step_moves_no_workflow(tmp_path: Path) -> None:
    """The replay is dead-lettered without its message: the workflow the payload names is
    not failed (nor started) by it; the step it copies still waits for its time."""
    from conveyor import JobStatus, chain
    from conveyor._message import Envelope
    from conveyor.testing import drain

    app, ran = _signed_app("memory", tmp_path), []
    record = _recorder(app, ran)
    job = chain(record.options(delay=3600).s("first"), record.s("second")).delay()
    first, second = job.steps
    payload = app.broker.payload(first)
    assert payload is not None
    app.broker.enqueue([Envelope("replayed", "default", payload)])
    drain(app, timeout=30, advance=False)  # what is due now: the replay alone
    assert _dead_reason(app, "replayed").startswith(f"the payload belongs to job {first!r}")
    assert ran == []
    assert [app.job(i).status for i in (first, second)] == [JobStatus.SCHEDULED] * 2
    app.close()


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_signed_jobs_retries_requeues_and_workflows_still_run(
    serializer: str, tmp_path: Path
) -> None:
    from conveyor import JobStatus, chain, chord, current_job, group
    from conveyor.testing import drain

    app, ran = _signed_app("sqlite", tmp_path, serializer), []
    record = _recorder(app, ran)

    @app.task(name="t.flaky", retries=2, backoff=0.001)
    def flaky(tag: str) -> str:
        if current_job().attempt == 0:
            raise OSError("transient")
        return tag

    @app.task(name="t.fails")
    def fails() -> None:
        ran.append("fails")
        raise ValueError("no")

    retried, failed = flaky.delay("retried"), fails.delay()
    chained = chain(record.s("a"), record.s("b")).delay()  # ("a", "b") -> "a"
    chorded = chord(group(record.s("c"), record.s("d")), record.s()).delay()
    for _ in range(20):  # the retry's backoff is a millisecond
        drain(app, timeout=30)
        if retried.status is JobStatus.SUCCEEDED:
            break
    assert retried.result(timeout=5) == "retried"
    assert chained.result(timeout=5) == "a"
    assert chorded.result(timeout=5) == ["c", "d"]
    assert failed.status is JobStatus.FAILED
    assert app.requeue([failed.id]) == 1
    drain(app, timeout=30)
    assert ran.count("fails") == 2  # requeued, it ran again
    app.close()


def test_a_payload_far_over_max_payload_is_dead_lettered_undecoded(tmp_path: Path) -> None:
    """Written straight into the broker, 45 MB of empty lists took a worker 1.2 GB and 11 s
    to decode: the cap was only checked at enqueue."""
    from conveyor import Conveyor
    from conveyor._message import Envelope
    from conveyor.testing import drain

    app, ran = Conveyor(f"sqlite:///{tmp_path / 'jobs.db'}", max_payload=1000), []
    record = _recorder(app, ran)
    body = b'{"id":"huge","task":"t.record","args":[[' + b"[]," * 700 + b"[]]]}"
    assert len(body) > 2000
    app.broker.enqueue([Envelope("huge", "default", body)])
    after = record.delay("after")
    drain(app, timeout=30)
    assert after.result(timeout=5) == "after"
    assert ran == ["after"]  # a good task: decoded, it would have run
    assert _dead_reason(app, "huge") == (
        f"payload of {len(body)} bytes is over the 2000 bytes a worker decodes (twice "
        "max_payload=1000); not decoded: the app enqueues at most max_payload bytes. If such "
        "jobs are meant to run, raise Conveyor(max_payload=...) for the producer and the "
        "workers alike"
    )
    app.close()


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_job_at_the_payload_cap_is_retried_and_requeued_and_runs(
    serializer: str, tmp_path: Path
) -> None:
    """The bound a worker decodes leaves room for what a retry and a requeue add (its
    attempt count, its enqueue time) to a job let in at the cap."""
    from conveyor import JobStatus
    from conveyor.testing import drain

    app = _signed_app("sqlite", tmp_path, serializer, max_payload=600)
    runs: list[int] = []

    @app.task(name="t.boom", retries=1, backoff=0.001)
    def boom(blob: str) -> None:
        runs.append(len(blob))
        raise ValueError("boom")

    job, size = _at_the_cap(boom, 600)
    for _ in range(20):
        drain(app, timeout=30)
        if job.status is JobStatus.FAILED:
            break
    assert app.requeue([job.id]) == 1
    for _ in range(20):
        drain(app, timeout=30)
        if len(runs) == 4:
            break
    assert runs == [size] * 4  # run, retried, requeued, retried: never dead-lettered
    app.close()


def _at_the_cap(task: Any, cap: int) -> tuple[Any, int]:
    """A job of ``task`` sent with the longest str argument the payload cap lets in, and
    that length."""
    for size in range(cap, 0, -1):
        try:
            return task.delay("x" * size), size
        except PayloadTooLarge:
            continue
    raise AssertionError("nothing fits under the cap")
