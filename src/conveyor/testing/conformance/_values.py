"""``ValueConformance``: what travels through a broker arrives exactly as it was sent.

A broker moves payloads and results as opaque bytes; the app's codec decides what a value
may be (``conveyor._values``: JSON keeps some values exactly, converts two documented kinds
and refuses the rest; pickle keeps whatever it can pickle). This suite holds both ends on
one broker:

* any bytes, as a payload or a result, come back byte for byte;
* arguments and results the codec keeps come back equal and of the same types, with JSON
  and with signed pickle;
* what the codec refuses never reaches the broker, nor does the good rest of an
  ``enqueue_many`` batch that holds it;
* a payload a worker cannot decode (nested 100,000 deep) or must not (the other
  serializer's format, however well signed) is dead-lettered with its reason, never run,
  and the worker goes on.

Use it like ``BrokerConformance``: a test module that provides the fixtures ``broker`` and
``clock`` and subclasses ``ValueConformance``. Needs pytest and hypothesis.
"""

from __future__ import annotations

import datetime as dt
import enum
import pathlib
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..._app import Conveyor
from ..._clock import FakeClock
from ..._errors import JobDead, PayloadTooLarge, SerializationError, ValidationError
from ..._message import DEFAULT_QUEUE, Envelope, JobStatus, Outcome, new_job_id
from ..._task import Signature
from ...brokers._port import Broker
from ...worker import drain
from ._helpers import envelope, fetch, finish

SECRET = "conformance-secret"

# -- values, and what "arrived as sent" means ----------------------------------------------

_KEYS = st.text(alphabet="abcxyz_-é 0", max_size=6)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)  # beyond 64 bits, both signs
    | st.floats(allow_nan=False, allow_infinity=False)  # -0.0, subnormals, 1e308
    | st.text(max_size=20)  # valid Unicode: no lone surrogates
)

json_values: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=24,
)
"""What JSON keeps exactly: None, bool, int of any size, finite float, str, list, dict with
str keys, nested."""


class Colour(enum.Enum):
    RED = "red"
    GREEN = 2


class Point:
    """A plain module-level class: pickle carries it by reference."""

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return type(other) is Point and same((self.x, self.y), (other.x, other.y))

    def __hash__(self) -> int:
        return hash((self.x, self.y))


_HASHABLE = (
    st.integers() | st.text(max_size=8) | st.tuples(st.integers(), st.text(max_size=4)) | st.none()
)
_PYTHON = (
    _SCALARS
    | st.floats()  # NaN and infinities too
    | st.binary(max_size=16)
    | st.datetimes(timezones=st.none() | st.just(dt.UTC))
    | st.dates()
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.uuids()
    | st.fractions()
    | st.complex_numbers(allow_nan=False)
    | st.sampled_from(Colour)
    | st.builds(Point, st.floats(), st.floats())
    | st.frozensets(_HASHABLE, max_size=4)
)

pickle_values: st.SearchStrategy[Any] = st.recursive(
    _PYTHON,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.sets(_HASHABLE, max_size=4)
        | st.dictionaries(_HASHABLE, inner, max_size=4)
    ),
    max_leaves=24,
)
"""What pickle keeps exactly: everything above, and NaN, bytes, dates, sets, tuples,
non-str keys, enums, instances of module-level classes."""


def same(sent: Any, got: Any) -> bool:
    """Equal, of the same types all the way down, floats bit for bit (-0.0 is not 0.0, a
    NaN is itself)."""
    if type(sent) is not type(got):
        return False
    if isinstance(sent, float):
        return struct.pack("<d", sent) == struct.pack("<d", got)
    if isinstance(sent, complex):
        return same(sent.real, got.real) and same(sent.imag, got.imag)
    if isinstance(sent, list | tuple):
        return len(sent) == len(got) and all(map(same, sent, got))
    if isinstance(sent, dict):
        return list(map(type, sent)) == list(map(type, got)) and (
            list(sent) == list(got) and all(same(sent[k], got[k]) for k in sent)
        )
    return bool(sent == got)


class Gadget:
    """Unpickling this creates ``path``: a marker that shows whether a payload was
    unpickled."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[pathlib.Path]]:
        return pathlib.Path.touch, (self.path,)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _echo(*args: Any, **kwargs: Any) -> list[Any]:
    return [*args, kwargs] if kwargs else list(args)


# The suite is a base class: each adapter's test class runs these methods on its own broker,
# so one process calls them from several classes (differing executors) by design.
_HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)


# -- the suite ------------------------------------------------------------------------------


class ValueConformance:
    """Values and payloads travel through ``broker`` exactly, or not at all."""

    @pytest.fixture
    def apps(self, broker: Broker, clock: FakeClock | None) -> Iterator[dict[str, Conveyor]]:
        """Apps on the one broker: ``json`` (no secret), ``signed`` (JSON with the secret)
        and ``pickle`` (with the same secret), each with an ``echo`` task of one name."""
        made: dict[str, Conveyor] = {}
        for name, options in (
            ("json", {}),
            ("signed", {"secret": SECRET}),
            ("pickle", {"serializer": "pickle", "secret": SECRET}),
        ):
            app = Conveyor(broker=broker, clock=clock, **options)  # type: ignore[arg-type]
            app.task(name="conformance.echo")(_echo)
            made[name] = app
        yield made  # the broker fixture closes the broker they share

    @_HYPOTHESIS
    @given(payload=st.binary(min_size=1, max_size=4096), result=st.binary(min_size=1))
    def test_payload_and_result_bytes_come_back_byte_for_byte(
        self, broker: Broker, payload: bytes, result: bytes
    ) -> None:
        env = envelope(payload=payload)
        assert broker.enqueue([env]) == [env.id]
        [delivery] = fetch(broker)
        assert delivery.payload == payload
        assert finish(broker, delivery, result=result)
        [record] = broker.get([env.id])
        assert record is not None and record.result == result

    @_HYPOTHESIS
    @given(
        args=st.lists(json_values, max_size=3),
        kwargs=st.dictionaries(st.sampled_from(["a", "b", "é"]), json_values, max_size=2),
        which=st.sampled_from(["json", "signed"]),
    )
    def test_json_arguments_and_results_arrive_as_sent(
        self, apps: dict[str, Conveyor], args: list[Any], kwargs: dict[str, Any], which: str
    ) -> None:
        self._round_trip(apps[which], args, kwargs)

    @_HYPOTHESIS
    @given(
        args=st.lists(pickle_values, max_size=3),
        kwargs=st.dictionaries(st.sampled_from(["a", "b"]), pickle_values, max_size=2),
    )
    def test_pickled_arguments_and_results_arrive_as_sent(
        self, apps: dict[str, Conveyor], args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        self._round_trip(apps["pickle"], args, kwargs)

    def _round_trip(self, app: Conveyor, args: list[Any], kwargs: dict[str, Any]) -> None:
        sig: Signature[Any] = Signature(app, "conformance.echo", tuple(args), kwargs, app.defaults)
        [job] = app.enqueue_many([sig])
        [delivery] = fetch(app.broker)
        message = app.codec.decode_message(delivery.payload)
        assert same(message.args, args), (message.args, args)
        assert same(message.kwargs, kwargs), (message.kwargs, kwargs)
        value = [args, kwargs]
        assert finish(app.broker, delivery, result=app.codec.encode_outcome(Outcome(value)))
        assert same(job.result(timeout=10), value)

    @pytest.mark.parametrize(
        "bad",
        [
            float("nan"),
            {1: "an int key"},
            {"x": [b"bytes"]},
            {"deep": _nested_list(100_000)},
            dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
            "x" * 2_000_000,
        ],
        ids=["nan", "int-key", "bytes", "deep", "datetime", "too-large"],
    )
    def test_one_bad_argument_writes_nothing_of_an_enqueue_many_batch(
        self, apps: dict[str, Conveyor], bad: Any
    ) -> None:
        app = apps["json"]
        echo = app.registry["conformance.echo"]
        first, last = new_job_id(), new_job_id()
        batch = [
            echo.options(job_id=first).s(1),
            echo.s("fine", bad),
            echo.options(job_id=last).s(2),
        ]
        with pytest.raises((SerializationError, PayloadTooLarge)) as caught:
            app.enqueue_many(batch)
        assert "args[1]" in str(caught.value) or isinstance(caught.value, PayloadTooLarge)
        self._nothing_written(app.broker, first, last)

    def test_an_item_that_is_not_a_signature_writes_nothing_of_its_batch(
        self, apps: dict[str, Conveyor]
    ) -> None:
        app = apps["json"]
        echo = app.registry["conformance.echo"]
        first = new_job_id()
        batch: list[Any] = [echo.options(job_id=first).s(1), echo]  # a task, not a call of it
        with pytest.raises(ValidationError, match="enqueue_many takes signatures"):
            app.enqueue_many(batch)
        self._nothing_written(app.broker, first)

    @pytest.mark.parametrize(
        "bad",
        [
            {"priority": True},
            {"retries": 1.5},
            {"backoff": float("nan")},
            {"timeout": float("inf")},
            {"result_ttl": 0},
            {"delay": -1},
            {"eta": "tomorrow"},
            {"queue": "a b"},
            {"key": ""},
            {"allow_failed_dependencies": "yes"},
        ],
        ids=lambda bad: "-".join(map(str, bad)),
    )
    def test_a_bad_option_is_refused_before_anything_is_written(
        self, apps: dict[str, Conveyor], bad: dict[str, Any]
    ) -> None:
        app = apps["json"]
        echo = app.registry["conformance.echo"]
        first = new_job_id()
        with pytest.raises(ValidationError, match=f"bad {next(iter(bad))}"):
            app.enqueue_many([echo.options(job_id=first).s(1), echo.options(**bad).s(2)])
        self._nothing_written(app.broker, first)

    def test_options_at_the_edges_of_their_range_make_jobs_that_arrive_as_set(
        self, apps: dict[str, Conveyor], clock: FakeClock | None
    ) -> None:
        app = apps["json"]
        echo = app.registry["conformance.echo"]
        now = clock.time() if clock is not None else time.time()
        edges: list[dict[str, Any]] = [
            {"priority": 9, "retries": 0, "backoff": 0, "result_ttl": 1, "timeout": 1e-3},
            {"priority": 0, "retries": 10_000, "backoff": dt.timedelta(hours=1)},
            {"eta": now - 3600, "delay": None},  # already due: runs now
            {"delay": 0, "result_ttl": dt.timedelta(days=3650)},
        ]
        sent = {echo.options(**options).delay(i).id: options for i, options in enumerate(edges)}
        got = {d.id: d for d in fetch(app.broker)}
        assert set(got) == set(sent)  # all due at once
        fields = ("priority", "retries", "backoff", "timeout", "result_ttl")
        for job_id, options in sent.items():
            want = echo.options(**options).opts
            message = app.codec.decode_message(got[job_id].payload)
            assert [getattr(message, f) for f in fields] == [getattr(want, f) for f in fields]
            assert got[job_id].priority == want.priority
            assert finish(app.broker, got[job_id])

    def _nothing_written(self, broker: Broker, *ids: str) -> None:
        assert broker.get(list(ids)) == [None] * len(ids)
        assert fetch(broker) == []
        assert all(s.queued + s.scheduled == 0 for s in broker.stats())

    @pytest.mark.timeout(60)
    def test_a_payload_nested_100000_deep_is_dead_lettered_and_the_worker_goes_on(
        self, apps: dict[str, Conveyor]
    ) -> None:
        app = apps["json"]
        hostile = new_job_id()
        body = b'{"id":"%s","task":"conformance.echo","args":%s}' % (
            hostile.encode(),
            _nested(100_000),
        )
        app.broker.enqueue([Envelope(hostile, DEFAULT_QUEUE, body)])
        after = app.registry["conformance.echo"].delay("after")
        drain(app, timeout=30)
        assert after.result(timeout=10) == ["after"]
        with pytest.raises(JobDead) as caught:
            app.job(hostile).result(timeout=10)
        assert caught.value.reason.startswith(
            "undecodable payload: cannot decode payload: it is nested too deeply"
        )

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(("sender", "worker"), [("pickle", "signed"), ("signed", "pickle")])
    def test_a_payload_in_the_other_serializers_format_is_dead_lettered_unread(
        self, apps: dict[str, Conveyor], tmp_path: pathlib.Path, sender: str, worker: str
    ) -> None:
        marker = tmp_path / "unpickled"
        producer, consumer = apps[sender], apps[worker]
        arg: Any = Gadget(marker) if sender == "pickle" else "json"
        foreign = producer.registry["conformance.echo"].delay(arg)
        after = consumer.registry["conformance.echo"].delay("after")
        drain(consumer, timeout=30)
        assert after.result(timeout=10) == ["after"]
        assert foreign.status is JobStatus.DEAD
        with pytest.raises(JobDead) as caught:
            consumer.job(foreign.id).result(timeout=10)
        own = "json" if worker == "signed" else "pickle"
        other = "pickle" if own == "json" else "json"
        assert caught.value.reason.startswith(
            f"undecodable payload: payload is {other}, but this app is configured for {own}"
        )
        assert not marker.exists()  # the signed pickle was never unpickled
