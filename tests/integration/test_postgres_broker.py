"""What the PostgreSQL broker promises beyond the conformance suites: bounded tables,
migrations, tools that only look, and an event log no late commit can slip into behind a
reader's cursor. On the machine's PostgreSQL (``tests/postgres_server.py``)."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor._clock import FakeClock
from conveyor._errors import ConfigurationError
from conveyor._message import Delivery, Envelope, JobStatus, new_job_id
from conveyor.brokers._port import EVENTS_SLACK, Finish, LeaseState
from conveyor.brokers.postgres import PostgresBroker, _schema
from conveyor.cli import cli
from postgres_server import drop_schema, schema_url, unique_schema

pytestmark = pytest.mark.postgres


def _rows(url: str, schema: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".{table}').fetchone()
    assert row is not None
    return int(row[0])


def test_ended_jobs_are_deleted_in_batches_once_their_records_expire(
    postgres_url: str, schema: str
) -> None:
    clock = FakeClock()
    broker = PostgresBroker(schema_url(postgres_url, schema), clock=clock)
    try:
        for _ in range(3):
            envs = [Envelope(new_job_id(), "default", b"p") for _ in range(1500)]
            broker.enqueue(envs)
            done = broker.fetch(["default"], "c", 1500, 60, 0)
            broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=10) for d in done])
        assert _rows(postgres_url, schema, "jobs") == 4500
        clock.advance(31)  # past every record's expiry and the next sweep
        assert broker.fetch(["default"], "c", 1, 60, 0) == []
        assert _rows(postgres_url, schema, "jobs") == 0  # 5 batches of 1000, in one sweep
    finally:
        broker.close()


def test_first_users_racing_on_a_new_schema_migrate_it_once(postgres_url: str, schema: str) -> None:
    url = schema_url(postgres_url, schema)
    opened: list[PostgresBroker] = []
    threads = [
        threading.Thread(target=lambda: opened.append(PostgresBroker(url))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    v = _schema.SCHEMA_VERSION
    assert sorted(b.migrated for b in opened) == [(0, v), (v, v), (v, v), (v, v)]
    assert len({b.instance for b in opened}) == 1
    for b in opened:
        b.close()


def test_tools_that_only_look_create_nothing_and_migrate_says_what_it_did(
    postgres_url: str, schema: str
) -> None:
    url = schema_url(postgres_url, schema)
    runner = CliRunner()
    looked = runner.invoke(cli, ["jobs", "failed", "--url", url])
    assert looked.exit_code != 0
    assert f"no Conveyor tables in schema {schema!r}" in str(looked.exception)
    with pytest.raises(ConfigurationError):
        PostgresBroker(url, create=False)
    migrated = runner.invoke(cli, ["migrate", "--url", url, "--json"])
    assert migrated.exit_code == 0, migrated.output
    document = json.loads(migrated.output)
    v = _schema.SCHEMA_VERSION
    assert (document["schema"], document["from_version"], document["to_version"]) == (schema, 0, v)
    again = runner.invoke(cli, ["migrate", "--url", url])
    assert f"schema {schema} is up to date (version {v})" in again.output
    assert runner.invoke(cli, ["jobs", "failed", "--url", url]).exit_code == 0


@pytest.mark.parametrize("version", range(1, _schema.SCHEMA_VERSION))
def test_a_schema_of_an_older_version_migrates_forward_with_its_jobs_and_events(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    url = schema_url(postgres_url, schema)
    with monkeypatch.context() as m:
        m.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:version])
        m.setattr(_schema, "SCHEMA_VERSION", version)
        old = PostgresBroker(url)
        waiting = [Envelope(new_job_id(), "default", b"old") for _ in range(3)]
        old.enqueue(waiting, [b"e1", b"e2", b"e3"])
        read = old.read_events(None, 0.0, 2)  # numbered by the old version, then the rest
        old.publish([b"p1"])
        old.close()
    broker = PostgresBroker(url)
    try:
        assert broker.migrated == (version, _schema.SCHEMA_VERSION)
        added = [Envelope(new_job_id(), "default", b"new")]
        assert broker.enqueue(added) == [added[0].id]
        done = broker.fetch(["default"], "c", 10, 60, 0)
        assert [d.id for d in done] == [e.id for e in (*waiting, *added)]
        outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r", event=b"f") for d in done]
        assert broker.finish(outcomes, [b"s1", b"s2"]) == [True] * 4
        assert [r.status if r else None for r in broker.get([e.id for e in waiting])] == [
            JobStatus.SUCCEEDED
        ] * 3
        assert [e for _, e in read] == [b"e1", b"e2"]
        rest = broker.read_events(read[-1][0], 0.0, 100)
        assert [e for _, e in rest] == [b"e3", b"p1", b"s1", b"s2", *[b"f"] * 4]
        numbers = [int(n) for n, _ in read + rest]
        assert numbers == sorted(set(numbers))
        assert broker.events_tail() == str(numbers[-1])
    finally:
        broker.close()
    with psycopg.connect(postgres_url) as conn:  # version 4's table settings
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (f'"{schema}".jobs',)
        ).fetchone()
        assert options is not None and "fillfactor=50" in options[0]
        compression = conn.execute(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'bodies'", (f'"{schema}".events',)
        ).fetchone()  # fmt: skip
        assert compression is not None and compression[0] == "l"  # lz4 (PostgreSQL 15 here)


def test_a_notification_names_every_item_in_payloads_under_the_limit(
    postgres_url: str, schema: str
) -> None:
    """One payload when the items fit (version 4 joins them in one call), chunks of at
    most 7,000 characters when they do not, every item once, in order."""
    url = schema_url(postgres_url, schema)
    PostgresBroker(url).close()
    short = ["a1", "b2", "c3"]
    long = [new_job_id() for _ in range(500)]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'LISTEN "{schema}_wake"')
        for items in (short, long, []):
            conn.execute(f'SELECT "{schema}".notify(%s, %s::text[])', ("d", items))
        payloads = [n.payload for n in conn.notifies(timeout=1.0, stop_after=100)]
    assert payloads[0] == "d:a1,b2,c3"
    chunks = payloads[1:]
    assert len(chunks) > 1 and all(len(c) <= 7002 and c.startswith("d:") for c in chunks)
    assert [i for c in chunks for i in c[2:].split(",")] == long


def test_a_schema_written_by_a_newer_conveyor_is_refused(postgres_url: str, schema: str) -> None:
    url = schema_url(postgres_url, schema)
    PostgresBroker(url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = 99 WHERE name = 'schema_version'")
    with pytest.raises(ConfigurationError, match="written by a newer Conveyor"):
        PostgresBroker(url)


def test_an_event_committed_late_is_read_after_the_cursor_that_passed_it(
    postgres_url: str, schema: str
) -> None:
    """A transaction that wrote its event first but commits last: a reader that read the
    events committed meanwhile still gets it, after them."""
    app = Conveyor(schema_url(postgres_url, schema))
    broker = app.broker
    with psycopg.connect(postgres_url) as conn:
        with conn.transaction():
            late = app.options(connection=conn).enqueue(print, "late")  # its job.enqueued
            broker.publish([b"committed first"])
            seen = broker.read_events(None, 0.0, 10)
            assert [e for _, e in seen] == [b"committed first"]
        after = broker.read_events(seen[-1][0], 0.0, 10)
    assert len(after) == 1 and late.id.encode() in after[0][1]
    app.close()


def test_the_log_shows_the_newest_kept_events_and_holds_a_bounded_few_more(
    postgres_url: str, schema: str
) -> None:
    """Since version 5 the log is trimmed once every 1,024 events: a reader still gets the
    newest ``events_kept`` and fewer than ``EVENTS_SLACK`` more (whole rows of up to 32),
    and the table holds at most about 1,024 + 32 + 63 events more."""
    broker = PostgresBroker(schema_url(postgres_url, schema), events_kept=50)
    try:
        sent = [f"e{i}".encode() for i in range(5000)]
        for at in range(0, len(sent), 70):  # a finish's worth of events at a time
            broker.publish(sent[at : at + 70])
        broker.publish([b"last"])
        seen = [e for _, e in broker.read_events(None, 0.0, 10_000)]
        assert 50 <= len(seen) < 50 + EVENTS_SLACK
        assert seen == [*sent, b"last"][-len(seen) :]
        with psycopg.connect(postgres_url) as conn:
            held = conn.execute(f'SELECT sum(count) FROM "{schema}".events').fetchone()
            # an older Conveyor's readers still read (with the default events_kept)
            old = conn.execute(f'SELECT body FROM "{schema}".read_events(0, 3)').fetchall()
        assert held is not None and 50 <= held[0] <= 50 + 1024 + 32 + 63
        assert len(old) == 3
        numbers = [int(n) for n, _ in broker.read_events(None, 0.0, 10_000)]
        later = broker.read_events(str(numbers[-3]), 0.0, 10)  # a cursor inside the window
        assert [e for _, e in later] == seen[-2:]
    finally:
        broker.close()


def test_an_append_of_many_events_is_cut_into_rows_and_readers_number_every_event(
    postgres_url: str, schema: str
) -> None:
    """An append of more than 32 events (a worker's finish) goes in as rows of up to 32,
    each row's ``seq`` the value of its last event (one value of ``events_seq_seq`` per
    event, so the trim counts events); the readers number every event, one after the
    other, in the order appended, lone rows and grouped ones."""
    broker = PostgresBroker(schema_url(postgres_url, schema))
    value = f'SELECT last_value FROM "{schema}".events_seq_seq'
    rows = f'SELECT seq, count FROM "{schema}".events ORDER BY seq'
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            broker.publish([b"first"])
            before = conn.execute(value).fetchone()
            sent = [f"e{i}".encode() for i in range(65)]  # rows of 32, 32 and 1
            broker.publish(sent)
            after = conn.execute(value).fetchone()
            assert before is not None and after is not None
            assert after[0] - before[0] == 65
            start = before[0]
            assert conn.execute(rows).fetchall()[1:] == [
                (start + 32, 32), (start + 64, 32), (start + 65, 1)
            ]  # fmt: skip
        broker.publish([b"a", b"b"])
        read = broker.read_events(None, 0.0, 100)
        assert [e for _, e in read] == [b"first", *sent, b"a", b"b"]
        assert [int(n) for n, _ in read] == list(range(1, 69))
        assert broker.read_events(read[40][0], 0.0, 100) == read[41:]
    finally:
        broker.close()


def test_appends_of_many_events_among_lone_ones_still_trim_the_log_every_1024_events(
    postgres_url: str, schema: str
) -> None:
    """A worker's finish (40 events: 2 rows) while a producer enqueues 30 jobs one at a
    time (30 lone events): the table still holds at most about 1,024 + 32 + 63 events
    more than ``events_kept``, whichever append takes the values that trim."""
    broker = PostgresBroker(schema_url(postgres_url, schema), events_kept=50)
    value = f'SELECT last_value FROM "{schema}".events_seq_seq'
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            broker.publish([b"first"])
            while (row := conn.execute(value).fetchone()) is not None and row[0] % 32:
                broker.publish([b"align"])
            sent = 0
            for cycle in range(30):
                broker.publish([b"f%d" % cycle] * 40)
                for i in range(30):
                    broker.publish([b"e%d" % i])
                sent += 70
            held = conn.execute(f'SELECT sum(count) FROM "{schema}".events').fetchone()
        assert sent == 2100 and held is not None
        assert 50 <= held[0] <= 50 + 1024 + 32 + 63
        seen = broker.read_events(None, 0.0, 10_000)
        assert 50 <= len(seen) < 50 + EVENTS_SLACK
    finally:
        broker.close()


@pytest.mark.parametrize(("query", "claim", "finish"), [
    ("", "off", "off"),
    ("&worker_commit=sync", "on", "on"),
    ("&worker_commit=sync&options=-c%20conveyor.claim_commit%3Dasync", "off", "on"),
])  # fmt: skip
def test_a_workers_claim_and_finish_commit_without_waiting_for_the_disk_unless_told(
    postgres_url: str, schema: str, query: str, claim: str, finish: str
) -> None:
    """Version 5: ``synchronous_commit`` is off for the fetch's and the finish's own
    transactions (``?worker_commit=sync``: on); other transactions are left as they were."""
    broker = PostgresBroker(schema_url(postgres_url, schema) + query)
    s = f'"{schema}"'
    try:
        broker.enqueue([Envelope(new_job_id(), "default", b"p") for _ in range(3)])
        seen = []
        with broker._db.connection() as conn:
            with conn.transaction():
                rows = conn.execute(
                    f"SELECT id, 'tk' FROM {s}.fetch(%s, 3, 60, 'tk', true, NULL)", (["default"],)
                ).fetchall()
                seen.append(conn.execute("SHOW synchronous_commit").fetchone())
            seen.append(conn.execute("SHOW synchronous_commit").fetchone())
            for ids in ([rows[0][0]], [r[0] for r in rows[1:]]):  # finish, then finish_ended
                with conn.transaction():
                    n = len(ids)
                    conn.execute(
                        f"SELECT {s}.finish(%s::text[], %s::text[], %s::text[], %s::bytea[], "
                        "%s::float8[], %s::text[], %s::bytea[], %s::boolean[], %s::text[], "
                        "%s::bytea[], %s::int[], %s::float8[], '{}', 100, 0, NULL)",
                        (ids, ["tk"] * n, ["succeeded"] * n, [b"r"] * n, [60.0] * n, [""] * n,
                         [None] * n, [False] * n, [None] * n, [None] * n, [None] * n,
                         [None] * n),
                    )  # fmt: skip
                    seen.append(conn.execute("SHOW synchronous_commit").fetchone())
        assert seen == [(claim,), ("on",), (finish,), (finish,)]
        assert [r.status if r else None for r in broker.get([r[0] for r in rows])] == [
            JobStatus.SUCCEEDED
        ] * 3
    finally:
        broker.close()


@pytest.mark.parametrize("where", ["database", "options"])
def test_a_worker_commit_setting_of_neither_async_nor_sync_is_refused_and_read_as_sync(
    postgres_url: str, where: str
) -> None:
    """``conveyor.worker_commit`` set by a database, a role or the URL's options to
    anything but async or sync (``SYNC``, ``on``): the broker refuses to open, saying so,
    and a claim made on such a connection anyway waits for the disk."""
    database = "conveyor_wc_" + unique_schema()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        try:
            url = postgres_url.rpartition("/")[0] + f"/{database}"
            PostgresBroker(url).close()  # migrated
            if where == "database":
                admin.execute(f"ALTER DATABASE \"{database}\" SET conveyor.worker_commit = 'SYNC'")
                opened = url
            else:
                opened = f"{url}?options=-c%20conveyor.worker_commit%3DSYNC"
            with pytest.raises(ConfigurationError, match=r"conveyor\.worker_commit is 'SYNC'"):
                PostgresBroker(opened)
            with psycopg.connect(url, options="-c conveyor.worker_commit=on") as conn:
                conn.execute("SELECT * FROM conveyor.fetch('{default}', 1, 60, 't', true, NULL)")
                shown = conn.execute("SHOW synchronous_commit").fetchone()
            assert shown == ("on",)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_a_claim_planned_while_the_table_was_small_still_updates_its_rows_by_ctid(
    postgres_url: str, schema: str
) -> None:
    """The fetch keeps its statements' generic plans (version 3): one planned while
    ``jobs`` held a page or two must not scan the whole table on every claim once it is
    large (it takes the rows it locked by ``ctid``, a TID scan, never a sequential one)."""
    url = schema_url(postgres_url, schema)
    broker = PostgresBroker(url)
    s = f'"{schema}"'
    fetch = f"SELECT id FROM {s}.fetch(%s, 10, 60, 'tk', true, NULL)"
    scans = (
        "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = %s::regclass",
        (f"{s}.jobs",),
    )
    try:
        broker.enqueue([Envelope(new_job_id(), "default", b"p")])
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            assert len(conn.execute(fetch, (["default"],)).fetchall()) == 1  # planned now
            for _ in range(3):
                broker.enqueue([Envelope(new_job_id(), "default", b"p" * 200) for _ in range(1000)])
            with conn.transaction():
                assert len(conn.execute(fetch, (["default"],)).fetchall()) == 10
                assert conn.execute(*scans).fetchone() == (0,)
    finally:
        broker.close()


def _batches(broker: PostgresBroker, clock: FakeClock) -> list[object]:
    """Batches with a repeated id, an eta, events or none, a producer's retry, a unique
    key, and an id whose record expired: what each call answered, and the log."""
    batch = [
        Envelope("a1", "q", b"1"),
        Envelope("a2", "r", b"2", priority=1),
        Envelope("a1", "q", b"repeated"),
        Envelope("a3", "q", b"3", eta=clock.time() + 5),
    ]
    seen: list[object] = [broker.enqueue(batch, [b"e1", b"e2", b"e3", b"e4"])]
    seen.append(broker.enqueue(batch[:2], [b"x1", b"x2"]))  # a retry publishes nothing
    seen.append(broker.enqueue([Envelope("k1", "q", b"k", key="K")], [b"ek"]))
    seen.append(broker.enqueue([Envelope("n1", "q", b"n"), Envelope("n2", "q", b"n")]))
    done = broker.fetch(["q", "r"], "c", 10, 60, 0)
    seen.append([(d.id, d.payload) for d in done])
    broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=1) for d in done])
    clock.advance(2)
    seen.append(broker.enqueue([Envelope("a1", "q", b"again")], [b"e5"]))
    clock.advance(4)
    seen.append([(d.id, d.payload, d.deliveries) for d in broker.fetch(["q"], "c", 10, 60, 0)])
    seen.append([event for _, event in broker.read_events(None, 0, 100)])
    return seen


def test_a_batch_without_keys_or_dependencies_is_written_as_the_first_version_wrote_it(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Since version 2 such a batch is one INSERT; the answers, the hand-out order and
    the event log are those of version 1's row-by-row writes."""
    seen = {}
    for version in (1, _schema.SCHEMA_VERSION):
        with monkeypatch.context() as m:
            m.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:version])
            m.setattr(_schema, "SCHEMA_VERSION", version)
            clock = FakeClock()
            broker = PostgresBroker(schema_url(postgres_url, f"{schema}_{version}"), clock=clock)
        try:
            seen[version] = _batches(broker, clock)
        finally:
            broker.close()
            drop_schema(postgres_url, f"{schema}_{version}")
    assert seen[1][0] == ["a1", "a2", "a1", "a3"]
    assert seen[1][-1] == [b"e1", b"e2", b"e4", b"ek", b"e5"]
    assert seen[_schema.SCHEMA_VERSION] == seen[1]


def _finishes(broker: PostgresBroker) -> list[object]:
    """Finish batches with a job twice, a stale token, a repeat of a written call, a
    failure and events: what each call answered, the records, and the log."""
    jobs = [Envelope(f"j{i}", "q", b"p") for i in range(4)]
    broker.enqueue(jobs)
    done = {d.id: d for d in broker.fetch(["q"], "c", 10, 60, 0)}
    stale = Delivery(id="j3", queue="q", payload=b"p", token="stale", deliveries=1, priority=0)
    ok = lambda i, **kw: Finish(done[f"j{i}"], JobStatus.SUCCEEDED, b"r%d" % i, **kw)  # noqa: E731
    seen: list[object] = []
    refused = Finish(stale, JobStatus.SUCCEEDED, event=b"x")
    first = [ok(1, event=b"o1"), ok(0, event=b"o0"), ok(1, event=b"again"), refused]
    seen.append(broker.finish(first, [b"s1", b"s2"]))
    seen.append(broker.finish([ok(0, event=b"repeat")]))
    failed = Finish(done["j2"], JobStatus.FAILED, b"e", reason="boom", event=b"f2")
    seen.append(broker.finish([failed, ok(3)]))
    records = broker.get([j.id for j in jobs])
    seen.append([(r.status, r.result, r.reason) if r else None for r in records])
    seen.append([event for _, event in broker.read_events(None, 0, 100)])
    return seen


def test_a_batch_without_retries_is_finished_as_the_first_version_finished_it(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Since version 3 such a batch is one UPDATE; the answers, records and events are
    those of version 1's row-by-row writes."""
    seen = {}
    for version in (1, _schema.SCHEMA_VERSION):
        with monkeypatch.context() as m:
            m.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:version])
            m.setattr(_schema, "SCHEMA_VERSION", version)
            broker = PostgresBroker(schema_url(postgres_url, f"{schema}_{version}"))
        try:
            seen[version] = _finishes(broker)
        finally:
            broker.close()
            drop_schema(postgres_url, f"{schema}_{version}")
    assert seen[1][:3] == [[True, True, True, False], [True], [True, True]]
    assert seen[1][-1] == [b"s1", b"s2", b"o1", b"o0", b"f2"]
    assert seen[_schema.SCHEMA_VERSION] == seen[1]


def test_the_finish_arrays_encode_text_as_psycopg_does_on_an_sql_ascii_connection() -> None:
    """psycopg encodes text in UTF-8 where the client encoding is SQL_ASCII (no conversion
    there); the finish's own text[] dumper must too, not raise UnicodeEncodeError."""
    from conveyor.brokers.postgres._db import TextArray, _adapters
    from postgres_server import ADMIN_URL, _admin_connect, _with_database

    admin = _admin_connect()
    name = "conveyor_test_ascii_" + new_job_id()[:8].lower()
    admin.execute(
        f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 "
        "LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    try:
        url = _with_database(ADMIN_URL, name)
        with psycopg.connect(url, context=_adapters()) as conn:
            assert conn.info.encoding == "ascii"
            sql = "SELECT octet_length(x) FROM unnest(%b::text[]) x"
            mine = conn.execute(sql, (TextArray(["naïve", "€"]),)).fetchall()
            theirs = conn.execute(sql, (["naïve", "€"],)).fetchall()
        assert mine == theirs == [(6,), (3,)]
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_a_renewal_rewrites_a_lease_only_once_a_third_of_it_is_gone(
    postgres_url: str, schema: str
) -> None:
    # A worker renews each second (its answer carries cancels); writing lease_until each
    # time left a dead row version per held job per second, ten times a 30 s lease's third.
    clock = FakeClock()
    broker = PostgresBroker(schema_url(postgres_url, schema), clock=clock)
    try:
        broker.enqueue([Envelope(new_job_id(), "default", b"p")])
        [held] = broker.fetch(["default"], "c", 1, 30, 0)

        def version() -> tuple[str, float]:
            with psycopg.connect(postgres_url) as conn:
                row = conn.execute(
                    f'SELECT xmin::text, lease_until FROM "{schema}".jobs WHERE id = %s',
                    [held.id],
                ).fetchone()
            assert row is not None
            return row[0], row[1]

        first = version()
        for _ in range(5):  # a second apart: the answer, but no new row version
            clock.advance(1)
            assert broker.renew([held], 30) == [LeaseState.OK]
        assert version() == first
        broker.cancel(held.id)
        clock.advance(1)
        assert broker.renew([held], 30) == [LeaseState.CANCELLED]  # read all the same
        clock.advance(5)  # 11 s into the lease: under two thirds left, so written again
        assert broker.renew([held], 30) == [LeaseState.CANCELLED]
        written = version()
        assert written[0] != first[0] and written[1] == first[1] + 11  # now + 30
    finally:
        broker.close()
