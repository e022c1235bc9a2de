"""The PostgreSQL broker on databases whose encoding is not UTF8 (docs/postgres.md, "Database
encoding"): it works on SQL_ASCII and LATIN1 databases; a unique key or store key the
database cannot store is refused at enqueue, through the broker and through a caller's
connection alike, and nothing queued is lost; text a worker writes from what its tasks
produced (a failure reason, a progress note) never blocks the outcomes of a batch.

Each encoding gets a database of its own on the machine's PostgreSQL, dropped after; each
test a schema of its own in it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor, InvalidName, JobStatus, TaskFailed, current_job
from conveyor.testing import drain
from postgres_server import ADMIN_URL, _admin_connect, _with_database, schema_url

pytestmark = pytest.mark.postgres

EXOTIC = "boom 💥 中文 naïve"  # an emoji and CJK: no LATIN1; "ï": LATIN1, not ASCII


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """A database in each encoding, created on first use (URL by encoding)."""
    admin = _admin_connect()
    made: dict[str, str] = {}
    try:
        yield made
    finally:
        for url in made.values():
            name = url.rpartition("/")[2]
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _database(databases: dict[str, str], encoding: str) -> str:
    if encoding not in databases:
        name = f"conveyor_test_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
        with _admin_connect() as admin:
            admin.execute(
                f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' "
                "LC_CTYPE 'C' TEMPLATE template0"
            )
        databases[encoding] = _with_database(ADMIN_URL, name)
    return databases[encoding]


@pytest.fixture(params=["SQL_ASCII", "LATIN1", "UTF8"])
def encoded(request: pytest.FixtureRequest, databases: dict[str, str]) -> tuple[str, str]:
    """(encoding, a schema of the test's own in a database in it, dropped with it)."""
    encoding = str(request.param)
    return encoding, schema_url(_database(databases, encoding))


@pytest.fixture
def latin1(databases: dict[str, str]) -> str:
    return _database(databases, "LATIN1")


def _app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task(name="echo")
    def echo(text: str) -> str:
        current_job().progress(0.5, f"at {text}")
        return text

    @app.task(name="fail", retries=0)
    def fail(text: str) -> None:
        raise ValueError(text)

    return app


@pytest.mark.timeout(60)
def test_jobs_run_and_fail_with_any_text_on_a_database_not_in_utf8(
    encoded: tuple[str, str],
) -> None:
    """A failure reason or progress note the database cannot hold (LATIN1: the emoji; any
    database: a NUL) is stored with those characters replaced, in the same batch as other
    jobs' outcomes; the result keeps the exact text. (Before: on SQL_ASCII every id came
    back as bytes; on LATIN1, and on UTF8 for the NUL, the finisher retried the whole
    batch forever.)"""
    encoding, url = encoded
    app = _app(url)
    try:
        fine = app.registry["echo"].delay("plain")
        odd = app.registry["echo"].delay(EXOTIC)
        failed = app.registry["fail"].delay(EXOTIC + " \x00 nul")
        keyed = app.registry["echo"].options(key="clé").delay("keyed")  # in LATIN1 too
        again = app.registry["echo"].options(key="clé").delay("again")
        assert again.id == keyed.id  # deduplicated: the key reads back as it was written

        report = drain(app, timeout=15)

        assert report.ran == 4
        assert fine.result(timeout=5) == "plain"
        assert odd.result(timeout=5) == EXOTIC
        assert keyed.result(timeout=5) == "keyed"
        assert isinstance(odd.id, str) and odd.status is JobStatus.SUCCEEDED
        with pytest.raises(TaskFailed) as caught:
            failed.result(timeout=5)
        assert caught.value.remote_message == EXOTIC + " \x00 nul"  # the result: exact
        note = odd.progress[1]
        record = app.broker.get([failed.id])[0]
        assert record is not None and record.status is JobStatus.FAILED
        if encoding == "LATIN1":
            assert note == "at boom ? ?? naïve"
            assert "boom ? ?? naïve ? nul" in record.reason
        else:
            assert note == f"at {EXOTIC}"
            assert f"{EXOTIC} ? nul" in record.reason
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_a_key_a_latin1_database_cannot_store_is_refused_and_nothing_queued_is_lost(
    latin1: str,
) -> None:
    app = _app(schema_url(latin1))
    try:
        kept = app.registry["echo"].delay("kept")
        with pytest.raises(InvalidName, match=r"encoding is LATIN1.*ENCODING 'UTF8'"):
            app.registry["echo"].options(key="key 💥").delay("refused")
        sigs = [app.registry["echo"].s("a"), app.registry["echo"].options(key="中").s("b")]
        with pytest.raises(InvalidName, match="unique key '中'"):
            app.enqueue_many(sigs)
        with pytest.raises(InvalidName, match=r"store key '.*cache:💥'.*LATIN1"):
            app.store.set("cache:💥", 1)
        app.store.set("cache:é", 1)
        assert app.store.get("cache:é") == 1

        assert drain(app, timeout=15).ran == 1  # the refused batch wrote nothing
        assert kept.result(timeout=5) == "kept"
    finally:
        app.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client", ["LATIN1", "UTF8"])
def test_a_callers_connection_gets_the_same_refusal_and_keeps_its_transaction(
    latin1: str, client: str
) -> None:
    """Through the caller's own connection, in its encoding (left as it was): refused before
    anything is sent, so the caller's transaction goes on and commits its other jobs."""
    url = schema_url(latin1)
    app = _app(url)
    app.open()
    conn = psycopg.connect(latin1, client_encoding=client)
    try:
        echo = app.registry["echo"].options(connection=conn)
        first = echo.delay("first")
        with pytest.raises(InvalidName, match="LATIN1"):
            app.registry["echo"].options(connection=conn, key="k 💥").delay("refused")
        latin = app.registry["echo"].options(connection=conn, key="clé").delay("latin")
        conn.commit()
        assert conn.info.parameter_status("client_encoding") == client

        assert drain(app, timeout=15).ran == 2
        assert first.result(timeout=5) == "first"
        assert latin.result(timeout=5) == "latin"
    finally:
        conn.close()
        app.close()


@pytest.mark.timeout(60)
def test_a_key_written_through_an_sql_ascii_connection_reads_back_as_the_brokers(
    databases: dict[str, str],
) -> None:
    """On SQL_ASCII the server stores the bytes it is sent: a caller's connection (SQL_ASCII:
    psycopg sends UTF-8) and the broker's write the same key alike; a connection in another
    client encoding may only send ASCII keys there."""
    database = _database(databases, "SQL_ASCII")
    app = _app(schema_url(database))
    app.open()
    conn = psycopg.connect(database)
    other = psycopg.connect(database, client_encoding="LATIN1")
    try:
        assert conn.info.encoding == "ascii"
        theirs = app.registry["echo"].options(connection=conn, key="clé 💥").delay("theirs")
        conn.commit()
        mine = app.registry["echo"].options(key="clé 💥").delay("mine")
        assert mine.id == theirs.id
        with pytest.raises(InvalidName, match="client_encoding LATIN1"):
            app.registry["echo"].options(connection=other, key="clé").delay("refused")
        assert drain(app, timeout=15).ran == 1
        assert theirs.result(timeout=5) == "theirs"
    finally:
        other.close()
        conn.close()
        app.close()


# Where Python's codec and the server disagree (EUC_JP: "〜" is in Python's euc_jp but not in
# PostgreSQL's; "髙", "①" the other way round; EUC_KR: "똠" is in Python's euc_kr only).
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("encoding", "text"), [("EUC_JP", "期限切れ〜再試行 💥"), ("EUC_KR", "똠 실패 💥")]
)
def test_a_reason_the_server_refuses_never_blocks_the_batch(
    databases: dict[str, str], encoding: str, text: str
) -> None:
    """A failure reason or progress note with a character Python's codec holds and the
    server refuses is still written (made ASCII-safe), with the other outcomes of its batch.
    (Before: the finisher retried the batch forever, the jobs stayed running.)"""
    app = _app(schema_url(_database(databases, encoding)))
    try:
        fine = app.registry["echo"].delay("plain")
        noted = app.registry["echo"].delay(text)
        failed = app.registry["fail"].delay(text)

        assert drain(app, timeout=20).ran == 3

        assert fine.result(timeout=5) == "plain"
        assert noted.result(timeout=5) == text  # the result: exact
        with pytest.raises(TaskFailed) as caught:
            failed.result(timeout=5)
        assert caught.value.remote_message == text
        record = app.broker.get([failed.id])[0]
        assert record is not None and record.status is JobStatus.FAILED
        assert record.reason is not None and "ValueError" in record.reason
        assert noted.progress[0] == 0.5 and (noted.progress[1] or "").startswith("at ")
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_keys_are_held_to_what_the_server_stores_not_what_python_encodes(
    databases: dict[str, str],
) -> None:
    """EUC_JP stores "髙" and "①" (Python's euc_jp has neither); EUC_KR refuses "똠"
    (Python's euc_kr has it): the server decides, before anything is written, through the
    broker and through a caller's connection, whose transaction goes on."""
    jp = _database(databases, "EUC_JP")
    app = _app(schema_url(jp))
    try:
        keyed = app.registry["echo"].options(key="髙橋①").delay("keyed")
        assert app.registry["echo"].options(key="髙橋①").delay("again").id == keyed.id
        app.store.set("手順①", 1)
        assert app.store.get("手順①") == 1
        assert drain(app, timeout=15).ran == 1
    finally:
        app.close()
    kr = _database(databases, "EUC_KR")
    app = _app(schema_url(kr))
    app.open()
    conn = psycopg.connect(kr)
    try:
        with pytest.raises(InvalidName, match=r"unique key '똠'.*EUC_KR"):
            app.registry["echo"].options(key="똠").delay("refused")
        with pytest.raises(InvalidName, match=r"store key '.*똠'.*EUC_KR"):
            app.store.set("똠", 1)
        first = app.registry["echo"].options(connection=conn).delay("first")
        with pytest.raises(InvalidName, match="EUC_KR"):
            app.registry["echo"].options(connection=conn, key="똠").delay("refused")
        conn.commit()
        assert drain(app, timeout=15).ran == 1
        assert first.result(timeout=5) == "first"
    finally:
        conn.close()
        app.close()


@pytest.mark.timeout(60)
def test_an_sql_ascii_connection_may_send_only_ascii_keys_to_a_latin1_database(
    latin1: str,
) -> None:
    """A LATIN1 server converts nothing from an SQL_ASCII client: the UTF-8 bytes psycopg
    sends would be stored as other characters ("clÃ©"), a key that never matches the
    broker's. Refused with the advice to set the connection's client_encoding; ASCII goes."""
    app = _app(schema_url(latin1))
    app.open()
    conn = psycopg.connect(latin1, client_encoding="SQL_ASCII")
    try:
        with pytest.raises(InvalidName, match=r"client_encoding SQL_ASCII.*SET client_encoding"):
            app.registry["echo"].options(connection=conn, key="clé").delay("refused")
        plain = app.registry["echo"].options(connection=conn, key="cle").delay("plain")
        conn.commit()
        assert app.registry["echo"].options(key="cle").delay("again").id == plain.id
        assert drain(app, timeout=15).ran == 1
    finally:
        conn.close()
        app.close()


@pytest.mark.timeout(60)
def test_a_rate_key_the_database_cannot_store_is_refused_at_enqueue(latin1: str) -> None:
    app = _app(schema_url(latin1))

    @app.task(name="limited", rate="10/s")
    def limited(text: str) -> str:
        return text

    try:
        with pytest.raises(InvalidName, match=r"rate key 'tenant:💥'.*LATIN1"):
            limited.options(rate_key="tenant:💥").delay("refused")
        kept = limited.options(rate_key="tenant:é").delay("kept")
        assert drain(app, timeout=15).ran == 1
        assert kept.result(timeout=5) == "kept"
    finally:
        app.close()


def _server_checks(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each time the broker asks the server whether it holds a text: whether it asked
    from the thread running an event loop (where the round trip would stall it)."""
    import asyncio

    db = app.broker._db  # type: ignore[attr-defined]
    asked: list[bool] = []
    real = db.connection

    def connection() -> Any:
        try:
            asyncio.get_running_loop()
            asked.append(True)
        except RuntimeError:
            asked.append(False)
        return real()

    monkeypatch.setattr(db, "connection", connection)
    return asked


@pytest.mark.timeout(90)
def test_keys_the_server_decides_on_are_asked_about_once_and_never_on_the_event_loop(
    databases: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EUC_JP: Python's codec is not exact, so the server is asked about non-ASCII keys.
    Once per distinct text (its answer does not change), and from the async paths in a
    thread, not inside the event loop."""
    import asyncio

    jp = _database(databases, "EUC_JP")
    app = _app(schema_url(jp))

    @app.task(name="limited", rate="100/s")
    def limited(i: int) -> int:
        return i

    app.open()
    asked = _server_checks(app, monkeypatch)
    try:
        app.enqueue_many([limited.options(rate_key="髙橋①").s(i) for i in range(20)])
        assert asked == [False]

        async def produce() -> None:
            await app.enqueue_many_async(
                [limited.options(rate_key="手順①").s(i) for i in range(20)]
            )
            conn = await psycopg.AsyncConnection.connect(jp, client_encoding="UTF8")
            try:
                for key in ("鈴木①", "鈴木①", "佐藤①"):
                    await app.registry["echo"].options(connection=conn, key=key).delay_async(key)
                await conn.commit()
            finally:
                await conn.close()

        asyncio.run(produce())
        assert asked.count(True) == 0 and len(asked) == 4  # 髙橋①, 手順①, 鈴木①, 佐藤①
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_only_the_reason_the_server_refuses_is_made_ascii(databases: dict[str, str]) -> None:
    """EUC_KR refuses "똠" (Python's euc_kr has it): a batch of outcomes with such a reason
    is written again with that reason made ASCII-safe, the others of the batch as they are."""
    from conveyor._message import Envelope
    from conveyor.brokers._port import Finish

    app = _app(schema_url(_database(databases, "EUC_KR")))
    app.open()
    broker = app.broker
    try:
        broker.enqueue([Envelope(id=i, queue="q", payload=b"x") for i in ("a", "b", "c")])
        got = {d.id: d for d in broker.fetch(["q"], "c", 10, 30.0, 0.0)}
        broker.finish(
            [
                Finish(got["a"], JobStatus.FAILED, b"r", reason="ValueError: 똠 실패"),
                Finish(got["b"], JobStatus.FAILED, b"r", reason="ValueError: 결제 실패"),
                Finish(got["c"], JobStatus.FAILED, b"r", reason="ValueError: 결제 실패"),
            ]
        )
        reasons = {r.id: r.reason for r in broker.get(["a", "b", "c"]) if r is not None}
        assert reasons == {
            "a": "ValueError: ? ??",
            "b": "ValueError: 결제 실패",
            "c": "ValueError: 결제 실패",
        }
    finally:
        app.close()
