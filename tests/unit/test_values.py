"""What travels: JSON keeps a value exactly, converts it as documented, or refuses it at the
boundary with its path; pickle keeps what it can pickle; nothing comes back changed
silently; no depth of nesting escapes as a RecursionError; a payload in the other
serializer's format is never decoded (docs/reliability.md, "What travels")."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import math
import pickle
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import Conveyor, JobDead, JobStatus, SerializationError, TaskFailed
from conveyor._codec import Codec
from conveyor._message import Envelope, Message, Outcome, new_job_id
from conveyor._values import MAX_DEPTH
from conveyor.testing import drain
from conveyor.testing.conformance._values import Gadget, json_values, pickle_values, same

SETTINGS = settings(max_examples=150, deadline=None)
CODECS = {
    "json": Codec,
    "signed json": lambda: Codec(secret="s"),
    "pickle": lambda: Codec("pickle", secret="s"),
}


# -- a value anywhere in a message, and where an error must say it is -----------------------

Keys = list[int | str]
_PATH_KEYS = st.lists(st.integers(0, 3) | st.text("abXY -", max_size=4), max_size=6)


def plant(leaf: Any, keys: Keys) -> Any:
    """``leaf`` at ``keys`` inside lists and dicts, next to good values."""
    value = leaf
    for key in reversed(keys):
        if isinstance(key, int):
            value = [*(["ok"] * key), value, 1.5]
        else:
            value = {"other": [None, True], key: value}
    return value


def path_of(root: str, keys: Keys) -> str:
    return root + "".join(
        f"[{k}]" if isinstance(k, int) else f"[{json.dumps(k, ensure_ascii=False)}]" for k in keys
    )


def through(codec: Codec, where: str, value: Any) -> Any:
    """``value`` sent as the first argument, a keyword argument, a result or a stored value,
    and what comes back."""
    if where == "args":
        message = codec.decode_message(codec.encode_message(Message("j", "m:f", args=[value])))
        return message.args[0]
    if where == "kwargs":
        message = codec.decode_message(
            codec.encode_message(Message("j", "m:f", kwargs={"x": value}))
        )
        return message.kwargs["x"]
    if where == "result":
        return codec.decode_outcome(codec.encode_outcome(Outcome(value=value))).value
    return codec.decode_value(codec.encode_value(value))


ROOTS = {"args": "args[0]", "kwargs": 'kwargs["x"]', "result": "result", "value": "value"}
WHERE = st.sampled_from(sorted(ROOTS))


# -- JSON: kept exactly -----------------------------------------------------------------


@SETTINGS
@given(value=json_values, where=WHERE, codec=st.sampled_from(["json", "signed json"]))
def test_json_keeps_plain_values_exactly(value: Any, where: str, codec: str) -> None:
    assert same(value, through(CODECS[codec](), where, value))


@pytest.mark.parametrize(
    "value", [-0.0, 5e-324, 1.7976931348623157e308, 2**64, -(2**63) - 1, 10**400, "\x00é\U0001f600"]
)
def test_json_keeps_edge_numbers_and_text_exactly(value: Any) -> None:
    for where in ROOTS:
        assert same(value, through(Codec(), where, value))


# -- JSON: converted, as documented ---------------------------------------------------------


class Size(enum.IntEnum):
    SMALL = 1


class Mode(enum.StrEnum):
    FAST = "fast"


def _detupled(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_detupled(v) for v in value]
    if isinstance(value, dict):
        return {k: _detupled(v) for k, v in value.items()}
    return value


_WITH_TUPLES = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.lists(inner, max_size=3),
    max_leaves=12,
)


@SETTINGS
@given(value=_WITH_TUPLES, where=WHERE)
def test_json_turns_tuples_into_lists_and_nothing_else(value: Any, where: str) -> None:
    assert same(_detupled(value), through(Codec(), where, value))


@pytest.mark.parametrize(("member", "arrives"), [(Size.SMALL, 1), (Mode.FAST, "fast")])
def test_a_str_or_int_enum_member_arrives_as_its_equal_value(member: Any, arrives: Any) -> None:
    got = through(Codec(), "args", {"m": [member], Mode.FAST: 0})
    assert same(got, {"m": [arrives], "fast": 0})
    assert got == {"m": [member], Mode.FAST: 0}  # equal, and found under the same key


# -- JSON: refused, naming where and what to use instead --------------------------------------


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Row:
    id: int


class Item(msgspec.Struct):
    id: int


class Name(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


Point = collections.namedtuple("Point", "x y")

# (the value, what the error must say): everything JSON would bring back as something else
REFUSED_BY_JSON: dict[str, tuple[Any, str]] = {
    "nan": (float("nan"), "float('nan') has no JSON form and would arrive as None"),
    "inf": (float("inf"), "float('inf') has no JSON form"),
    "-inf": (float("-inf"), "float('-inf') has no JSON form"),
    "bytes": (b"\x00\x01", "base64"),
    "bytearray": (bytearray(b"x"), "base64"),
    "memoryview": (memoryview(b"x"), "base64"),
    "set": ({1, 2}, "a set would arrive as a list; use sorted(s)"),
    "frozenset": (frozenset({"a"}), "a frozenset would arrive as a list"),
    "datetime": (dt.datetime(2030, 1, 2, tzinfo=dt.UTC), "use x.isoformat()"),
    "naive datetime": (dt.datetime(2030, 1, 2), "datetime.fromisoformat"),
    "date": (dt.date(2030, 1, 2), "date.fromisoformat"),
    "time": (dt.time(12, 30), "time.fromisoformat"),
    "timedelta": (dt.timedelta(seconds=5), "td.total_seconds()"),
    "decimal": (decimal.Decimal("1.10"), "use str(d) and Decimal(s)"),
    "uuid": (uuid.UUID(int=7), "use str(u)"),
    "enum": (Colour.RED, "would arrive as its value 'red'"),
    "namedtuple": (Point(1, 2), "without its field names; use x._asdict()"),
    "defaultdict": (
        collections.defaultdict(int, a=1),
        "a defaultdict would arrive as a plain dict",
    ),
    "ordereddict": (collections.OrderedDict(a=1), "use dict(x)"),
    "counter": (collections.Counter("ab"), "use dict(x)"),
    "list subclass": (collections.UserList([1]), "UserList objects have no JSON form"),
    "dataclass": (Row(1), "dataclasses.asdict(x)"),
    "struct": (Item(1), "would arrive as a dict"),
    "str subclass": (Name("x"), "subclass of str"),
    "int subclass": (Count(1), "subclass of int"),
    "float subclass": (Ratio(1.0), "subclass of float"),
    "complex": (1 + 2j, "complex objects have no JSON form"),
    "fraction": (fractions.Fraction(1, 3), "Fraction objects have no JSON form"),
    "object": (object(), "object objects have no JSON form; send plain values"),
    "function": (print, "have no JSON form"),
    "lone surrogate": ("a\ud800b", "lone surrogate"),
    "int key": ({1: "a"}, 'the int key 1 would arrive as the str "1", so d[1] would no longer'),
    "float key": ({1.5: "a"}, 'would arrive as the str "1.5"'),
    "bool key": ({True: "a"}, "a bool key has no JSON form"),
    "None key": ({None: "a"}, "a NoneType key has no JSON form"),
    "bytes key": ({b"k": "a"}, "a bytes key has no JSON form"),
    "tuple key": ({(1, 2): "a"}, "a tuple key has no JSON form"),
    "int enum key": ({Size.SMALL: "a"}, 'would arrive as the str "1"'),
    "surrogate key": ({"\udcff": 1}, "lone surrogate"),
    "too deep": (_deep(MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),
}


@SETTINGS
@given(
    case=st.sampled_from(sorted(REFUSED_BY_JSON)),
    keys=_PATH_KEYS,
    where=WHERE,
    codec=st.sampled_from(["json", "signed json"]),
)
def test_json_refuses_what_would_not_arrive_as_sent_and_says_where(
    case: str, keys: Keys, where: str, codec: str
) -> None:
    leaf, says = REFUSED_BY_JSON[case]
    with pytest.raises(SerializationError) as caught:
        through(CODECS[codec](), where, plant(leaf, keys))
    text = str(caught.value)
    where_it_is = path_of(ROOTS[where], keys)
    if case != "too deep":  # its path goes on down into the value (checked below)
        assert text.startswith(f"cannot encode {where_it_is} as JSON: "), text
    assert says in text
    assert "serializer='pickle'" in text  # the other way to send it


def test_a_path_too_long_to_read_keeps_its_ends() -> None:
    with pytest.raises(SerializationError) as caught:
        Codec().encode_message(Message("j", "m:f", args=[1, _deep(MAX_DEPTH + 1)]))
    assert str(caught.value).startswith(
        "cannot encode args[1][0][0][0]…[0][0] as JSON: it is nested"
    )


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 1000, 100_000])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_is_kept_up_to_the_limit_and_refused_past_it_never_a_recursion_error(
    depth: int, kind: str
) -> None:
    value: Any = [] if kind == "list" else {}
    for _ in range(depth - 1):
        value = [value] if kind == "list" else {"k": value}
    for where in ROOTS:
        if depth <= MAX_DEPTH:
            assert same(value, through(Codec(), where, value))
        else:
            with pytest.raises(SerializationError, match=f"nested more than {MAX_DEPTH} levels"):
                through(Codec(), where, value)


def test_a_value_within_the_limit_sent_from_deep_in_a_stack_is_refused_not_a_crash() -> None:
    value = _deep(MAX_DEPTH)
    errors: list[BaseException] = []

    def descend(n: int) -> None:
        if n > 0:
            descend(n - 1)
            return
        try:
            Codec().encode_value(value)
        except BaseException as exc:  # what escapes is the point of the test
            errors.append(exc)

    descend(sys.getrecursionlimit() - 150)  # too little stack left for 200 levels
    assert len(errors) == 1 and isinstance(errors[0], SerializationError), errors
    assert f"values may nest up to {MAX_DEPTH} levels" in str(errors[0])


# -- pickle: keeps what it can pickle; says where it cannot ---------------------------------


@SETTINGS
@given(value=pickle_values, where=WHERE)
def test_pickle_keeps_every_value_it_can_pickle_exactly(value: Any, where: str) -> None:
    assert same(value, through(CODECS["pickle"](), where, value))


# all but a memoryview (pickle refuses it), an object() (equal only to itself) and nesting
# past pickle's recursion (tested below)
@pytest.mark.parametrize(
    "case", sorted(set(REFUSED_BY_JSON) - {"memoryview", "object", "too deep"})
)
def test_pickle_keeps_what_json_refuses(case: str) -> None:
    value, _ = REFUSED_BY_JSON[case]
    got = through(CODECS["pickle"](), "args", value)
    assert type(got) is type(value)
    assert same(value, got) or (isinstance(value, float) and math.isnan(got))


def _local_class_instance() -> object:
    class Local:
        pass

    return Local()


UNPICKLABLE: dict[str, Callable[[], Any]] = {
    "lock": threading.Lock,
    "lambda": lambda: lambda: 1,
    "generator": lambda: (i for i in range(3)),
    "local class": _local_class_instance,
    "module": lambda: sys,
}


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(sorted(UNPICKLABLE)), keys=_PATH_KEYS, where=WHERE)
def test_pickle_says_which_part_it_cannot_pickle(case: str, keys: Keys, where: str) -> None:
    with pytest.raises(SerializationError) as caught:
        through(CODECS["pickle"](), where, plant(UNPICKLABLE[case](), keys))
    text = str(caught.value)
    assert text.startswith(f"cannot pickle {path_of(ROOTS[where], keys)}: "), text
    assert "module-level classes and module-level functions" in text


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_pickle_refuses_deep_nesting_with_a_serialization_error(kind: str) -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value] if kind == "list" else {"k": value}
    for where in ROOTS:
        with pytest.raises(SerializationError, match="nested deeper than pickle can follow"):
            through(CODECS["pickle"](), where, value)


# -- hostile payloads: decoded to a SerializationError, never a crash -----------------------


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_payload_nested_100000_deep_is_a_serialization_error(codec: str) -> None:
    c = CODECS[codec]()
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"id":"j","task":"m:f","args":' + deep + b"}"
    framed = {"json": body, "signed json": _signed(b"J" + body), "pickle": _signed(b"J" + body)}
    for decode, data in ((c.decode_message, framed[codec]), (c.decode_value, deep)):
        with pytest.raises(SerializationError):
            decode(data)
    if codec == "json":
        with pytest.raises(SerializationError, match="nested too deeply"):
            c.decode_message(body)
        with pytest.raises(SerializationError, match="nested too deeply"):
            c.decode_outcome(b'{"value":' + deep + b"}")


def _signed(body: bytes, key: bytes = b"s", purpose: bytes = b"msg") -> bytes:
    """The codec's signed frame (``_codec.py``), signed for ``purpose``: msg, out or val."""
    import hashlib
    import hmac

    return b"CV2" + hmac.digest(key, purpose + b"\0" + body, hashlib.sha256) + body


def test_the_worker_dead_letters_a_hostile_deep_payload_and_goes_on(app: Conveyor) -> None:
    @app.task(name="values.echo")
    def echo(x: Any) -> Any:
        return x

    hostile = new_job_id()
    deep = b"[" * 100_000 + b"]" * 100_000
    payload = b'{"id":"%s","task":"values.echo","args":%s}' % (hostile.encode(), deep)
    app.broker.enqueue([Envelope(hostile, "default", payload)])
    after = echo.delay("after")
    drain(app, timeout=30)
    assert after.result(timeout=30) == "after"
    with pytest.raises(JobDead, match=r"undecodable payload: .* nested too deeply"):
        app.job(hostile).result(timeout=30)


# -- results: stored exactly, or the job fails saying why -----------------------------------


@pytest.mark.parametrize(
    "case", ["nan", "int key", "datetime", "set", "bytes", "dataclass", "too deep"]
)
def test_a_result_json_cannot_keep_fails_the_job_with_the_reason(app: Conveyor, case: str) -> None:
    bad, says = REFUSED_BY_JSON[case]

    @app.task(name="values.returns")
    def returns() -> Any:
        return {"rows": [1, bad]}

    job = returns.delay()
    drain(app, timeout=30)
    assert job.status is JobStatus.FAILED
    with pytest.raises(TaskFailed) as caught:
        job.result(timeout=30)
    assert caught.value.remote_type == "conveyor._errors.SerializationError"
    message = caught.value.remote_message
    assert message.startswith(
        "the task returned a value that cannot be stored as its result: cannot encode "
        'result["rows"][1]'
    ), message
    assert says in message


def test_a_tuple_result_arrives_as_a_list(app: Conveyor) -> None:
    @app.task(name="values.pair")
    def pair() -> tuple[int, tuple[str, float]]:
        return 1, ("a", -0.0)

    job = pair.delay()
    drain(app, timeout=30)
    assert same(job.result(timeout=30), [1, ["a", -0.0]])


# -- an app decodes only its own serializer -------------------------------------------------


def test_a_json_app_with_a_secret_never_unpickles_a_signed_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    message = Message("j", "m:f", args=[Gadget(marker)])
    for codec in (Codec(secret="shared"), Codec()):
        for decode, purpose in (
            (codec.decode_message, b"msg"),
            (codec.decode_outcome, b"out"),
            (codec.decode_value, b"val"),
        ):
            forged = _signed(b"P" + pickle.dumps(message), b"shared", purpose)
            with pytest.raises(SerializationError, match="payload is pickle, but this app is"):
                decode(forged if codec._key else pickle.dumps(message))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Gadget(marker)))
    assert marker.exists()  # the gadget is live: had it been unpickled, the file would be


def test_a_pickle_app_refuses_a_signed_json_payload() -> None:
    json_payload = Codec(secret="shared").encode_message(Message("j", "m:f", args=[1]))
    with pytest.raises(SerializationError) as caught:
        Codec("pickle", secret="shared").decode_message(json_payload)
    assert str(caught.value).startswith(
        "payload is json, but this app is configured for pickle: refusing to decode it"
    )


def test_through_the_public_api_a_json_worker_dead_letters_a_pickled_job(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    json_app = Conveyor("memory://", secret="shared")
    pickle_app = Conveyor(broker=json_app.broker, serializer="pickle", secret="shared")
    ran: list[Any] = []

    def run(x: Any) -> None:
        ran.append(x)

    for app in (json_app, pickle_app):
        app.task(name="values.run")(run)
    pickled = pickle_app.registry["values.run"].delay(Gadget(marker))
    after = json_app.registry["values.run"].delay("after")
    drain(json_app, timeout=30)
    assert after.result(timeout=30) is None and ran == ["after"]
    with pytest.raises(JobDead) as caught:
        json_app.job(pickled.id).result(timeout=30)
    assert "payload is pickle, but this app is configured for json" in caught.value.reason
    assert not marker.exists()
    json_app.close()
