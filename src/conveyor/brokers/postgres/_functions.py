"""The PL/pgSQL functions of the PostgreSQL broker (migrations 1 to 5, see ``_schema``).

The hot paths are one round trip each, one function call doing every step of the
contract's atomic step on the server: ``enqueue`` (dependencies checked before anything is
written, unique keys, events, the wake-up), ``fetch`` (due scheduled jobs promoted, expired
leases reclaimed, a batch claimed ``FOR UPDATE SKIP LOCKED``), ``finish`` (fenced, results,
retries, dependents, events, wake-ups). ``{s}`` is the schema and ``{channel}`` its
notification channel; the payloads sent on it (``_listen``):

* ``q:<queue>,<queue>`` (``q:*``: any) -- work was added to these queues;
* ``d:<job id>,<job id>`` (``d:*``: any) -- these jobs ended (or were purged);
* ``e`` -- events were appended (they get their numbers when read).

Notifications are sent when the transaction commits, so a job enqueued inside a caller's
transaction wakes workers only once it is visible to them.
"""

from __future__ import annotations

from ..._message import JobStatus
from .._base import CANCELLED_TTL, CANCELLED_WORKER_STOPPED, EVENTS_KEPT

_TERMINAL = ", ".join(f"'{s.value}'" for s in JobStatus if s.terminal)

# -- small helpers ---------------------------------------------------------------------------

_CLOCK = """
CREATE FUNCTION {s}.clock(p_now float8) RETURNS float8 LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_now, extract(epoch FROM statement_timestamp())::float8)
$$"""

# An eta from a client: on an injected clock as it is; on real time moved onto the
# server's clock by the time left until it on the client's, as Redis does: a producer whose
# clock is off still delays a job by what it asked.
_AT = """
CREATE FUNCTION {s}.at(p_eta float8, p_client_now float8, p_now float8, now_ float8)
RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_eta IS NULL OR p_eta = 'Infinity' OR p_now IS NOT NULL THEN p_eta
                ELSE now_ + (p_eta - p_client_now) END
$$"""

# Notify in chunks well under the 8000-byte payload limit.
_NOTIFY = """
CREATE FUNCTION {s}.notify(p_kind text, p_items text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    line text := '';
    item text;
BEGIN
    FOREACH item IN ARRAY coalesce(p_items, '{}') LOOP
        IF length(line) + length(item) > 7000 THEN
            PERFORM pg_notify('{channel}', p_kind || ':' || line);
            line := '';
        END IF;
        line := CASE WHEN line = '' THEN item ELSE line || ',' || item END;
    END LOOP;
    IF line <> '' THEN
        PERFORM pg_notify('{channel}', p_kind || ':' || line);
    END IF;
END $$"""

# Events are inserted unnumbered by the transaction they describe; the oldest beyond
# p_kept are dropped about once every 64 events.
_APPEND_EVENTS = """
CREATE FUNCTION {s}.append_events(p_events bytea[], p_kept int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_events, 1), 0);
    last_seq bigint;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    INSERT INTO {s}.events(body)
        SELECT e FROM unnest(p_events) WITH ORDINALITY AS t(e, o) ORDER BY o;
    last_seq := currval('{s}.events_seq_seq');
    IF n >= 64 OR last_seq % 64 < n THEN
        DELETE FROM {s}.events WHERE seq <= (
            SELECT seq FROM {s}.events ORDER BY seq DESC OFFSET p_kept LIMIT 1);
    END IF;
    PERFORM pg_notify('{channel}', 'e');
END $$"""

# Readers number the committed events that have no number yet, one reader at a time
# (an advisory lock), in insertion order: a number is only ever given after every smaller
# one, so a reader's cursor never has an event slip in behind it, however late the
# transaction that wrote it commits.
_NUMBER_EVENTS = """
CREATE FUNCTION {s}.number_events() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {s}.events WHERE number IS NULL LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('conveyor.events'), hashtext('{s}'));
    UPDATE {s}.events e SET number = n.number
    FROM (SELECT x.seq, nextval('{s}.event_numbers') AS number FROM (
            SELECT seq FROM {s}.events WHERE number IS NULL
            ORDER BY seq FOR UPDATE SKIP LOCKED) x) n
    WHERE e.seq = n.seq;
END $$"""

_READ_EVENTS = """
CREATE FUNCTION {s}.read_events(p_after bigint, p_limit int)
RETURNS TABLE(number bigint, body bytea) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM {s}.number_events();
    RETURN QUERY SELECT e.number, e.body FROM {s}.events e WHERE e.number > p_after
        ORDER BY e.number LIMIT p_limit;
END $$"""

_EVENTS_TAIL = """
CREATE FUNCTION {s}.events_tail() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.number_events();
    RETURN coalesce((SELECT max(number) FROM {s}.events), 0);
END $$"""

# Jobs that ended take their dependents along; each is counted down, the last makes it
# due. Children in id order, so two transactions ending parents of the same children
# lock them in one order. Returns the queues of the jobs that became due.
_RELEASE_DEPENDENTS = """
CREATE FUNCTION {s}.release_dependents(p_ids text[]) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    r record;
    due text[] := '{}';
    q text;
BEGIN
    FOR r IN
        WITH taken AS (DELETE FROM {s}.dependents WHERE parent = ANY(p_ids) RETURNING child)
        SELECT child, count(*)::int AS c FROM taken GROUP BY child ORDER BY child
    LOOP
        UPDATE {s}.jobs SET waiting = 0, status = 'queued', seq = nextval('{s}.seq')
        WHERE id = r.child AND status = 'scheduled' AND waiting > 0 AND waiting <= r.c
        RETURNING queue INTO q;
        IF FOUND THEN
            due := due || q;
        ELSE
            UPDATE {s}.jobs SET waiting = waiting - r.c
            WHERE id = r.child AND status = 'scheduled' AND waiting > r.c;
        END IF;
    END LOOP;
    RETURN due;
END $$"""

# -- enqueue ---------------------------------------------------------------------------------

# Returns the ids (the existing holder's where a unique key deduplicated a job), or, for an
# unknown dependency, nothing written and the job and dependency named: the caller's own
# transaction (transactional enqueue) is not aborted by it.
_ENQUEUE = """
CREATE FUNCTION {s}.enqueue(
    p_ids text[], p_queues text[], p_payloads bytea[], p_priorities int[], p_etas float8[],
    p_keys text[], p_deps text[], p_events bytea[], p_kept int, p_client_now float8,
    p_now float8, OUT ids text[], OUT missing_job text, OUT missing_dep text)
LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {s}.clock(p_now);
    n int := coalesce(array_length(p_ids, 1), 0);
    earlier text[] := '{}';
    published bytea[] := '{}';
    queues text[] := '{}';
    deps text[];
    dep text;
    got text;
    st text;
    eta_ float8;
    rc int;
    waiting_ int;
BEGIN
    ids := '{}';
    FOR i IN 1..n LOOP
        FOREACH dep IN ARRAY coalesce(string_to_array(nullif(p_deps[i], ''), ','), '{}') LOOP
            IF NOT dep = ANY(earlier) THEN
                PERFORM 1 FROM {s}.jobs
                WHERE id = dep AND (expires_at IS NULL OR expires_at > now_) FOR SHARE;
                IF NOT FOUND THEN
                    ids := '{}';
                    missing_job := p_ids[i];
                    missing_dep := dep;
                    RETURN;
                END IF;
            END IF;
        END LOOP;
        earlier := earlier || p_ids[i];
    END LOOP;
    FOR i IN 1..n LOOP
        deps := coalesce(string_to_array(nullif(p_deps[i], ''), ','), '{}');
        eta_ := {s}.at(p_etas[i], p_client_now, p_now, now_);
        got := NULL;
        FOR attempt IN 1..3 LOOP
            DELETE FROM {s}.jobs WHERE id = p_ids[i] AND expires_at <= now_;
            INSERT INTO {s}.jobs(id, queue, payload, priority, status, seq, eta, key,
                                 updated_at, depends_on)
            VALUES (p_ids[i], p_queues[i], p_payloads[i], p_priorities[i],
                    CASE WHEN eta_ > now_ THEN 'scheduled' ELSE 'queued' END,
                    nextval('{s}.seq'), eta_, p_keys[i], now_, deps)
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS rc = ROW_COUNT;
            EXIT WHEN rc = 1;
            -- Written already (a producer's retry), or the key is held by a pending job.
            SELECT id INTO got FROM {s}.jobs
            WHERE id = p_ids[i] AND (expires_at IS NULL OR expires_at > now_);
            IF got IS NULL AND p_keys[i] IS NOT NULL THEN
                SELECT id INTO got FROM {s}.jobs
                WHERE key = p_keys[i] AND status IN ('queued', 'scheduled', 'running');
            END IF;
            EXIT WHEN got IS NOT NULL;
        END LOOP;
        IF rc = 0 THEN
            ids := ids || coalesce(got, p_ids[i]);
            CONTINUE;
        END IF;
        ids := ids || p_ids[i];
        queues := queues || p_queues[i];
        IF p_events[i] IS NOT NULL THEN
            published := published || p_events[i];
        END IF;
        waiting_ := 0;
        FOREACH dep IN ARRAY deps LOOP
            SELECT status INTO st FROM {s}.jobs
            WHERE id = dep AND (expires_at IS NULL OR expires_at > now_) FOR SHARE;
            IF FOUND AND st NOT IN ({terminal}) THEN
                INSERT INTO {s}.dependents(parent, child) VALUES (dep, p_ids[i])
                ON CONFLICT DO NOTHING;
                GET DIAGNOSTICS rc = ROW_COUNT;
                waiting_ := waiting_ + rc;
            END IF;
        END LOOP;
        IF waiting_ > 0 THEN
            UPDATE {s}.jobs SET status = 'scheduled', eta = NULL, waiting = waiting_
            WHERE id = p_ids[i];
        END IF;
    END LOOP;
    PERFORM {s}.append_events(published, p_kept);
    IF array_length(queues, 1) > 0 THEN
        PERFORM {s}.notify('q', ARRAY(SELECT DISTINCT unnest(queues)));
    END IF;
END $$"""

# -- fetch -----------------------------------------------------------------------------------

# Due scheduled jobs, then expired leases, go to the back of their queue in that order (a
# job cancelled while it ran is not run again once its worker is gone: it ends cancelled);
# then the head of each live queue is claimed. Rows another fetch holds are skipped. With
# p_due, a fetch that claims nothing returns instead one row with a NULL id, saying when the
# next scheduled job or lease comes due (parked jobs never do) and what time it is: how
# long a blocked fetch may sleep.
_FETCH = f"""
CREATE FUNCTION {{s}}.fetch(p_queues text[], p_count int, p_lease float8, p_token text,
                           p_due boolean, p_now float8)
RETURNS TABLE(id text, queue text, payload bytea, deliveries int, priority int, seq bigint,
              next_due float8, clock float8)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    now_ float8 := {{s}}.clock(p_now);
    live text[];
    ended text[];
    due text[];
BEGIN
    UPDATE {{s}}.jobs j SET status = 'queued', seq = d.n
    FROM (SELECT x.id, nextval('{{s}}.seq') AS n FROM (
            SELECT id FROM {{s}}.jobs WHERE status = 'scheduled' AND eta <= now_
            ORDER BY eta, seq LIMIT 1000 FOR UPDATE SKIP LOCKED) x) d
    WHERE j.id = d.id;
    WITH reclaimed AS (
        UPDATE {{s}}.jobs j SET
            status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
            expires_at = CASE WHEN j.cancel_requested THEN now_ + {CANCELLED_TTL} END,
            updated_at = CASE WHEN j.cancel_requested THEN now_ ELSE j.updated_at END,
            result = CASE WHEN j.cancel_requested THEN NULL ELSE j.result END,
            reason = CASE WHEN j.cancel_requested THEN '{CANCELLED_WORKER_STOPPED}'
                          ELSE j.reason END,
            token = '', lease_until = NULL, cancel_requested = false, seq = d.n
        FROM (SELECT x.id, nextval('{{s}}.seq') AS n FROM (
                SELECT id FROM {{s}}.jobs WHERE status = 'running' AND lease_until <= now_
                ORDER BY lease_until, seq LIMIT 1000 FOR UPDATE SKIP LOCKED) x) d
        WHERE j.id = d.id
        RETURNING j.id, j.status)
    SELECT array_agg(r.id) FILTER (WHERE r.status = 'cancelled') INTO ended FROM reclaimed r;
    IF ended IS NOT NULL THEN
        due := {{s}}.release_dependents(ended);
        PERFORM {{s}}.notify('d', ended);
        PERFORM {{s}}.notify('q', due);
    END IF;
    SELECT array_agg(q) INTO live FROM unnest(p_queues) AS q
    WHERE q NOT IN (SELECT queue FROM {{s}}.paused);
    IF live IS NOT NULL AND p_count > 0 THEN
        RETURN QUERY
        WITH picked AS (
            SELECT h.id FROM unnest(live) AS q(name), LATERAL (
                SELECT j.id, j.priority, j.seq FROM {{s}}.jobs j
                WHERE j.status = 'queued' AND j.queue = q.name
                ORDER BY j.priority DESC, j.seq LIMIT p_count FOR UPDATE SKIP LOCKED) h
            ORDER BY h.priority DESC, h.seq LIMIT p_count)
        UPDATE {{s}}.jobs j SET status = 'running', token = p_token,
            deliveries = j.deliveries + 1, lease_until = now_ + p_lease, updated_at = now_
        FROM picked WHERE j.id = picked.id
        RETURNING j.id, j.queue, j.payload, j.deliveries, j.priority::int, j.seq,
            NULL::float8, now_;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF p_due THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::bytea, NULL::int, NULL::int,
            NULL::bigint, least(
                (SELECT min(j.eta) FROM {{s}}.jobs j
                 WHERE j.status = 'scheduled' AND j.eta < 'Infinity'),
                (SELECT min(j.lease_until) FROM {{s}}.jobs j WHERE j.status = 'running')),
            now_;
    END IF;
END $$"""

# -- finish ----------------------------------------------------------------------------------

_OWNED = "id = p_ids[i] AND status = 'running' AND token = p_tokens[i]"
_FINISH = f"""
CREATE FUNCTION {{s}}.finish(
    p_ids text[], p_tokens text[], p_statuses text[], p_results bytea[], p_ttls float8[],
    p_reasons text[], p_outcome_events bytea[], p_retry boolean[], p_retry_queues text[],
    p_retry_payloads bytea[], p_retry_priorities int[], p_retry_etas float8[],
    p_events bytea[], p_kept int, p_client_now float8, p_now float8)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {{s}}.clock(p_now);
    n int := coalesce(array_length(p_ids, 1), 0);
    done boolean[] := '{{}}';
    ended text[] := '{{}}';
    woken text[] := '{{}}';
    published bytea[] := coalesce(p_events, '{{}}');
    eta_ float8;
    st text;
    rc int;
BEGIN
    FOR i IN 1..n LOOP
        IF NOT p_retry[i] THEN
            UPDATE {{s}}.jobs SET status = p_statuses[i], result = p_results[i],
                reason = p_reasons[i], expires_at = now_ + p_ttls[i], lease_until = NULL,
                cancel_requested = false, updated_at = now_
            WHERE {_OWNED};
            GET DIAGNOSTICS rc = ROW_COUNT;
            IF rc = 1 AND p_statuses[i] IN ({_TERMINAL}) THEN
                ended := ended || p_ids[i];
            END IF;
        ELSE
            -- A retry keeps the job's key: it is still pending under it.
            eta_ := {{s}}.at(p_retry_etas[i], p_client_now, p_now, now_);
            st := CASE WHEN eta_ > now_ THEN 'scheduled' ELSE 'queued' END;
            UPDATE {{s}}.jobs SET status = st, queue = p_retry_queues[i],
                payload = p_retry_payloads[i], priority = p_retry_priorities[i], eta = eta_,
                seq = nextval('{{s}}.seq'), result = p_results[i], deliveries = 0,
                lease_until = NULL, cancel_requested = false, updated_at = now_
            WHERE {_OWNED};
            GET DIAGNOSTICS rc = ROW_COUNT;
            IF rc = 1 THEN
                woken := woken || p_retry_queues[i];
            END IF;
        END IF;
        IF rc = 1 THEN
            done := done || true;
            IF p_outcome_events[i] IS NOT NULL THEN
                published := published || p_outcome_events[i];
            END IF;
        ELSE  -- refused, unless this very delivery already settled the job (a repeat)
            done := done || EXISTS (
                SELECT 1 FROM {{s}}.jobs WHERE id = p_ids[i] AND token = p_tokens[i]
                AND status <> 'running' AND (expires_at IS NULL OR expires_at > now_));
        END IF;
    END LOOP;
    IF array_length(ended, 1) > 0 THEN
        woken := woken || {{s}}.release_dependents(ended);
        PERFORM {{s}}.notify('d', ended);
    END IF;
    PERFORM {{s}}.notify('q', ARRAY(SELECT DISTINCT unnest(woken)));
    PERFORM {{s}}.append_events(published, p_kept);
    RETURN done;
END $$"""

# -- housekeeping ----------------------------------------------------------------------------

# Ended jobs whose record expired, in batches that skip rows others hold; returns how many
# were deleted (the caller repeats while a whole batch went).
_SWEEP = """
CREATE FUNCTION {s}.sweep(p_batch int, p_now float8) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {s}.clock(p_now);
    rc int;
BEGIN
    DELETE FROM {s}.jobs WHERE id IN (
        SELECT id FROM {s}.jobs WHERE expires_at <= now_
        ORDER BY expires_at LIMIT p_batch FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS rc = ROW_COUNT;
    DELETE FROM {s}.kv WHERE key IN (
        SELECT key FROM {s}.kv WHERE expires_at <= now_ LIMIT p_batch FOR UPDATE SKIP LOCKED);
    DELETE FROM {s}.workers WHERE expires_at <= now_;
    RETURN rc;
END $$"""

# -- the key-value store ---------------------------------------------------------------------

# Add to a counter (absent or expired: created at p_amount, with the ttl); NULL when the
# value is not an integer (the caller says so, as every adapter does). Digits are ASCII, so
# the 'escape' text of a counter is the counter, and anything else fails the pattern.
_KV_INCR = """
CREATE FUNCTION {s}.kv_incr(p_key text, p_amount numeric, p_ttl float8, p_now float8)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {s}.clock(p_now);
    v bytea;
    x float8;
    new text;
BEGIN
    LOOP
        SELECT value, expires_at INTO v, x FROM {s}.kv WHERE key = p_key FOR UPDATE;
        IF FOUND AND (x IS NULL OR x > now_) THEN
            IF encode(v, 'escape') !~ '^[+-]?[0-9]+$' THEN
                RETURN NULL;
            END IF;
            new := (encode(v, 'escape')::numeric + p_amount)::text;
            UPDATE {s}.kv SET value = convert_to(new, 'UTF8'),
                version = nextval('{s}.kv_version') WHERE key = p_key;
            RETURN new;
        END IF;
        new := p_amount::text;
        INSERT INTO {s}.kv(key, value, expires_at, version)
        VALUES (p_key, convert_to(new, 'UTF8'), now_ + p_ttl, nextval('{s}.kv_version'))
        ON CONFLICT (key) DO UPDATE SET value = excluded.value,
            expires_at = excluded.expires_at, version = excluded.version
        WHERE {s}.kv.expires_at <= now_;
        IF FOUND THEN
            RETURN new;
        END IF;
    END LOOP;
END $$"""

FUNCTIONS_V1: tuple[str, ...] = tuple(
    f.replace("{terminal}", _TERMINAL)
    for f in (
        _CLOCK,
        _AT,
        _NOTIFY,
        _APPEND_EVENTS,
        _NUMBER_EVENTS,
        _READ_EVENTS,
        _EVENTS_TAIL,
        _RELEASE_DEPENDENTS,
        _ENQUEUE,
        _FETCH,
        _FINISH,
        _SWEEP,
        _KV_INCR,
    )
)

# -- migration 2 -----------------------------------------------------------------------------


def _replacing(function: str, after_begin: str) -> str:
    """A migration-1 function redefined with ``after_begin`` as its first statements."""
    head, begin, body = function.partition("\nBEGIN\n")
    assert begin and head.lstrip().startswith("CREATE FUNCTION"), function[:60]
    return (
        head.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        + begin
        + after_begin
        + body
    )


# With the setting ``conveyor.claim_commit`` at ``async`` (for the database, the role, or
# the connection: ``?options=-c conveyor.claim_commit=async``) the claim commits without
# waiting for the disk; the enqueue before it and the finish after it still wait. A fetch
# a server crash loses only leaves its jobs as they were before it: queued (or scheduled,
# or running under a lease already expired), so they are handed out again, which
# at-least-once allows, and the lost delivery's token fences its finish, renew and release
# out. What the fetch did besides (promotions, reclaims, a reclaimed job whose cancel was
# asked for ending cancelled) the next fetch does again. Whatever is written next about a
# claimed job commits synchronously later in the same write-ahead log, so once that is on
# disk the claim is too.
_FETCH_V2 = _replacing(
    _FETCH,
    """    IF current_setting('conveyor.claim_commit', true) = 'async' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
""",
)

# A batch of several jobs without unique keys or dependencies is written set-wise, one
# INSERT for all its jobs (migration 1's enqueue writes row by row, and still writes a job
# alone: measured, the set was no faster for one): expired records under the same ids are
# deleted first; a job whose id is already written (a producer's retry, or twice in the
# batch) is left as it is and publishes nothing; the answer is the ids as given.
_ENQUEUE_PLAIN = """
CREATE FUNCTION {s}.enqueue_plain(
    p_ids text[], p_queues text[], p_payloads bytea[], p_priorities int[], p_etas float8[],
    p_events bytea[], p_kept int, p_client_now float8, p_now float8)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ float8 := {s}.clock(p_now);
    queues text[];
    published bytea[];
BEGIN
    DELETE FROM {s}.jobs WHERE id = ANY(p_ids) AND expires_at <= now_;
    WITH given AS (
        SELECT x.id, x.queue, x.payload, x.priority, x.o,
               {s}.at(x.eta, p_client_now, p_now, now_) AS eta
        FROM unnest(p_ids, p_queues, p_payloads, p_priorities, p_etas)
            WITH ORDINALITY AS x(id, queue, payload, priority, eta, o)),
    written AS (
        INSERT INTO {s}.jobs(id, queue, payload, priority, status, seq, eta, updated_at)
        SELECT g.id, g.queue, g.payload, g.priority,
               CASE WHEN g.eta > now_ THEN 'scheduled' ELSE 'queued' END,
               nextval('{s}.seq'), g.eta, now_
        FROM (SELECT * FROM given ORDER BY o) g
        ON CONFLICT DO NOTHING
        RETURNING id, queue)
    SELECT (SELECT array_agg(DISTINCT w.queue) FROM written w),
           (SELECT array_agg(f.e ORDER BY f.o) FROM (
                SELECT DISTINCT ON (v.id) v.e, v.o
                FROM unnest(p_ids, p_events) WITH ORDINALITY AS v(id, e, o)
                JOIN written w ON w.id = v.id ORDER BY v.id, v.o) f
            WHERE f.e IS NOT NULL)
    INTO queues, published;
    PERFORM {s}.append_events(published, p_kept);
    PERFORM {s}.notify('q', queues);
END $$"""

_ENQUEUE_V2 = _replacing(
    _ENQUEUE.replace("{terminal}", _TERMINAL),
    """    IF n > 1 AND array_remove(p_keys, NULL) = '{}'
            AND array_remove(array_remove(p_deps, NULL), '') = '{}' THEN
        PERFORM {s}.enqueue_plain(p_ids, p_queues, p_payloads, p_priorities, p_etas,
                                  p_events, p_kept, p_client_now, p_now);
        ids := p_ids;
        RETURN;
    END IF;
""",
)

FUNCTIONS_V2: tuple[str, ...] = (_FETCH_V2, _ENQUEUE_PLAIN, _ENQUEUE_V2)

# -- migration 3 -----------------------------------------------------------------------------

# The fetch's statements keep one plan for every call. Left to choose, the plan cache
# planned the claim afresh on each call (for a LIMIT it cannot see, the generic plan's
# estimate is higher than a custom plan's, so the custom one always won): about 0.2 ms of
# the server's time per fetch, more than running it. The generic plans read the same
# partial indexes (bench/pg_profile.py, docs/postgres.md).
_FETCH_GENERIC = (
    "ALTER FUNCTION {s}.fetch(text[], int, float8, text, boolean, float8) "
    "SET plan_cache_mode = force_generic_plan"
)

# The events of one append share rows, up to _GROUP to a row (``bodies``, and how many in
# ``count``; a lone event stays in ``body``, as every event did before): a worker's finish
# of 70 jobs appends 140 events in 5 rows, not 140. Each event still takes a value of
# ``events_seq_seq``, the row the greatest of its events', so "about once every 64 events"
# is still counted in events: the append whose values hold a multiple of 64 trims. The
# trim keeps the newest rows that hold ``p_kept`` events (the oldest of them whole: fewer
# than _GROUP more), counting rows, not events (by ``count``: no body is read). It was the
# costliest step of a finish: it read the newest ``p_kept`` index entries once every 64
# events, about 40 us of the server's time per job in a drain. Kept at most: p_kept +
# _GROUP - 1 + 63 events, under ``EVENTS_SLACK``.
_GROUP = 32
_EVENTS_GROUPED = (
    "ALTER TABLE {s}.events ALTER COLUMN body DROP NOT NULL, ADD COLUMN bodies bytea[], "
    "ADD COLUMN count int NOT NULL DEFAULT 1"
)
_APPEND_EVENTS_V3 = f"""
CREATE OR REPLACE FUNCTION {{s}}.append_events(p_events bytea[], p_kept int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_events, 1), 0);
    counted bigint[];
    first_ bigint;
    last_ bigint;
BEGIN
    IF n = 0 THEN
        RETURN;
    ELSIF n <= {_GROUP} THEN  -- one row (an enqueue's, a lone finish's), simple statements
        FOR i IN 1..n LOOP
            last_ := nextval('{{s}}.events_seq_seq');
            first_ := coalesce(first_, last_);
        END LOOP;
        INSERT INTO {{s}}.events(seq, count, body, bodies) VALUES (
            last_, n, CASE WHEN n = 1 THEN p_events[1] END, CASE WHEN n > 1 THEN p_events END);
    ELSE
        counted := ARRAY(SELECT nextval('{{s}}.events_seq_seq') FROM generate_series(1, n));
        first_ := counted[1];
        last_ := counted[n];
        INSERT INTO {{s}}.events(seq, count, body, bodies)
            SELECT max(counted[t.o]), count(*),
                   CASE WHEN count(*) = 1 THEN (array_agg(t.e))[1] END,
                   CASE WHEN count(*) > 1 THEN array_agg(t.e ORDER BY t.o) END
            FROM unnest(p_events) WITH ORDINALITY AS t(e, o) GROUP BY (t.o - 1) / {_GROUP};
    END IF;
    IF last_ / 64 > (first_ - 1) / 64 THEN
        DELETE FROM {{s}}.events WHERE seq < (
            SELECT k.seq FROM (
                SELECT e.seq, sum(e.count) OVER (
                    ORDER BY e.seq DESC) AS total
                FROM {{s}}.events e) k
            WHERE k.total >= p_kept ORDER BY k.seq DESC LIMIT 1);
    END IF;
    PERFORM pg_notify('{{channel}}', 'e');
END $$"""

# A row is numbered by its last event (as the other adapters key a record); the numbers
# of its events run up to it.
_NUMBER_EVENTS_V3 = """
CREATE OR REPLACE FUNCTION {s}.number_events() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    base bigint;
    last bigint;
BEGIN
    PERFORM 1 FROM {s}.events WHERE number IS NULL LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('conveyor.events'), hashtext('{s}'));
    base := nextval('{s}.event_numbers') - 1;
    WITH todo AS (
        SELECT seq, count AS k FROM {s}.events
        WHERE number IS NULL ORDER BY seq FOR UPDATE SKIP LOCKED),
    numbered AS (SELECT seq, base + sum(k) OVER (ORDER BY seq) AS number FROM todo),
    done AS (
        UPDATE {s}.events e SET number = n.number FROM numbered n WHERE e.seq = n.seq
        RETURNING e.number)
    SELECT max(number) INTO last FROM done;
    IF last IS NOT NULL THEN
        PERFORM setval('{s}.event_numbers', last);
    END IF;
END $$"""

_READ_EVENTS_V3 = """
CREATE OR REPLACE FUNCTION {s}.read_events(p_after bigint, p_limit int)
RETURNS TABLE(number bigint, body bytea) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.number_events();
    RETURN QUERY SELECT x.n, x.b FROM (
        SELECT r.last - cardinality(r.bs) + t.o AS n, t.b
        FROM (SELECT e.number AS last, coalesce(e.bodies, ARRAY[e.body]) AS bs
              FROM {s}.events e WHERE e.number > p_after
              ORDER BY e.number LIMIT p_limit) r,
             unnest(r.bs) WITH ORDINALITY AS t(b, o)) x
    WHERE x.n > p_after ORDER BY x.n LIMIT p_limit;
END $$"""

# A batch of several jobs without retries (a drain's every batch) is written set-wise: one
# UPDATE for all its jobs, where migration 1's finish updates them one by one (each a
# statement of its own, about half the server's time of a finish; a job alone is still
# written so: the set was slower for one). The same answers and events: a job's
# outcome is recorded for the delivery whose token it holds, once (a repeat in the batch,
# or of a call that was written, answers True); the events given, then the outcomes' own
# of the recorded ones, in the order given.
_FINISH_ENDED = f"""
CREATE FUNCTION {{s}}.finish_ended(
    p_ids text[], p_tokens text[], p_statuses text[], p_results bytea[], p_ttls float8[],
    p_reasons text[], p_outcome_events bytea[], p_events bytea[], p_kept int, now_ float8)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    written int[];
    ended text[];
    woken text[];
BEGIN
    WITH given AS (
        SELECT DISTINCT ON (x.id, x.token) x.*
        FROM unnest(p_ids, p_tokens, p_statuses, p_results, p_ttls, p_reasons)
            WITH ORDINALITY AS x(id, token, status, result, ttl, reason, o)
        ORDER BY x.id, x.token, x.o),
    changed AS (
        UPDATE {{s}}.jobs j SET status = g.status, result = g.result, reason = g.reason,
            expires_at = now_ + g.ttl, lease_until = NULL, cancel_requested = false,
            updated_at = now_
        FROM given g WHERE j.id = g.id AND j.status = 'running' AND j.token = g.token
        RETURNING g.o, g.id, g.status)
    SELECT coalesce(array_agg(c.o::int ORDER BY c.o), '{{}}'),
           array_agg(c.id ORDER BY c.id) FILTER (WHERE c.status IN ({_TERMINAL}))
    INTO written, ended FROM changed c;
    IF ended IS NOT NULL THEN
        woken := {{s}}.release_dependents(ended);
        PERFORM {{s}}.notify('d', ended);
        PERFORM {{s}}.notify('q', ARRAY(SELECT DISTINCT unnest(woken)));
    END IF;
    PERFORM {{s}}.append_events(coalesce(p_events, '{{}}') || ARRAY(
        SELECT p_outcome_events[w] FROM unnest(written) AS w
        WHERE p_outcome_events[w] IS NOT NULL ORDER BY w), p_kept);
    IF cardinality(written) = cardinality(p_ids) THEN  -- all written: nothing to look up
        RETURN array_fill(true, ARRAY[cardinality(p_ids)]);
    END IF;
    RETURN ARRAY(
        SELECT w.o IS NOT NULL OR EXISTS (
            SELECT 1 FROM {{s}}.jobs j WHERE j.id = p_ids[g.o] AND j.token = p_tokens[g.o]
            AND j.status <> 'running' AND (j.expires_at IS NULL OR j.expires_at > now_))
        FROM generate_series(1, coalesce(array_length(p_ids, 1), 0)) AS g(o)
        LEFT JOIN unnest(written) AS w(o) ON w.o = g.o
        ORDER BY g.o);
END $$"""

_FINISH_V3 = _replacing(
    _FINISH,
    """    IF n > 1 AND NOT true = ANY(p_retry) THEN
        RETURN {s}.finish_ended(p_ids, p_tokens, p_statuses, p_results, p_ttls, p_reasons,
                                p_outcome_events, p_events, p_kept, now_);
    END IF;
""",
)

FUNCTIONS_V3: tuple[str, ...] = (
    _FETCH_GENERIC,
    _FINISH_ENDED,
    _FINISH_V3,
    _EVENTS_GROUPED,
    _APPEND_EVENTS_V3,
    _NUMBER_EVENTS_V3,
    _READ_EVENTS_V3,
)

# -- migration 4 -----------------------------------------------------------------------------

# A notification's items joined by one call (``array_to_string``) when they fit in one
# payload, as a finish's ended ids do: migration 1's loop built the line item by item in
# PL/pgSQL, about 2.4 us of the server's time per job in a drain. Longer lists are still
# cut into chunks by that loop.
_NOTIFY_V4 = _replacing(
    _NOTIFY,
    """    line := array_to_string(p_items, ',');
    IF line IS NULL OR line = '' THEN
        RETURN;
    ELSIF length(line) <= 7000 THEN
        PERFORM pg_notify('{channel}', p_kind || ':' || line);
        RETURN;
    END IF;
    line := '';
""",
)

# A row of grouped events (up to 32, a few KB) is compressed with lz4 where the server
# has it (PostgreSQL 14 or later, built with lz4): pglz, the default, cost about a fifth of
# the server's time of a finish's append.
_EVENTS_LZ4 = """
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE {s}.events ALTER COLUMN bodies SET COMPRESSION lz4';
    END IF;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;  -- a server built without lz4 keeps pglz
END $$"""

# When every job of a batch was written (a drain's every batch), its outcome events are
# the given ones less the NULLs: migration 3 looked each up by its position in the array
# (each lookup walks the array from its start).
_FINISH_ENDED_V4 = _FINISH_ENDED.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
for _old, _new in (
    (
        """coalesce(p_events, '{}') || ARRAY(
        SELECT p_outcome_events[w]""",
        """coalesce(p_events, '{}') || CASE
        WHEN cardinality(written) = cardinality(p_ids) THEN array_remove(p_outcome_events, NULL)
        ELSE ARRAY(SELECT p_outcome_events[w]""",
    ),
    (
        "WHERE p_outcome_events[w] IS NOT NULL ORDER BY w), p_kept);",
        "WHERE p_outcome_events[w] IS NOT NULL ORDER BY w) END, p_kept);",
    ),
):
    assert _old in _FINISH_ENDED, _old
    _FINISH_ENDED_V4 = _FINISH_ENDED_V4.replace(_old, _new)

# A job's row is written three times (enqueue, claim, finish), and no update can be HOT
# (each changes ``status``, which every partial index's predicate reads). With half of
# each page left free at insert, the claim's and the finish's new versions go on the page
# of the old one, which lets the server log only the bytes that changed and prune the dead
# versions in place: in a drain, the claim's write-ahead log per job 598 -> 368 bytes, the
# finish's 714 -> 535, the server's time per fetch 0.83x (bench/pg_profile.py). The price:
# a backlog of queued jobs takes about twice the pages. For pages written from now on.
_JOBS_FILLFACTOR = "ALTER TABLE {s}.jobs SET (fillfactor = 50)"

FUNCTIONS_V4: tuple[str, ...] = (_NOTIFY_V4, _EVENTS_LZ4, _JOBS_FILLFACTOR, _FINISH_ENDED_V4)

# -- migration 5 -----------------------------------------------------------------------------

# The worker's claim and finish commit without waiting for the disk (``synchronous_commit``
# off for their own transactions), unless the setting ``conveyor.worker_commit`` is
# ``sync`` (the URL's ``?worker_commit=sync`` sets it for the broker's connections; a
# database or a role may set it too). A server crash may then undo the last claims and
# finishes whose write-ahead log was not flushed yet (the WAL writer flushes at least every
# 200 ms by default): their jobs are as they were before, queued or running under a lease,
# and run again once that lease is out, which at-least-once delivery allows; a delivery
# whose claim was undone is fenced out by its token. Whatever commits later is later in the
# same log, so a synchronous commit after them (an enqueue, a release) makes them durable
# too. Enqueue, release, renewal and the store still wait for the disk.
# ``conveyor.claim_commit = 'async'`` (version 2) still makes the claim async. A value of
# the setting other than async or sync (``SYNC``, ``on``: the broker refuses to open on
# one, ``_db``) is read as sync: a typo never makes a commit wait less.
_ASYNC = "coalesce(current_setting('conveyor.worker_commit', true), '') IN ('', 'async')"
_WORKER_COMMIT = """    IF {async_} THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
"""

# The claim updates the rows it locked where they are (by ``ctid``, a TID scan): migration
# 1's joined them back by id, a descent of ``jobs_pkey`` per job. A row another transaction
# changed after this statement's snapshot was taken is locked in its newest version, which
# the snapshot cannot see: that job is left out of this claim (it stays as it is, and the
# next fetch finds it), as a row another fetch holds is.
_CLAIM_BY_ID = """
            SELECT h.id FROM unnest(live) AS q(name), LATERAL (
                SELECT j.id, j.priority, j.seq FROM {s}.jobs j"""
_CLAIM_BY_TID = """
            SELECT h.tid FROM unnest(live) AS q(name), LATERAL (
                SELECT j.ctid AS tid, j.priority, j.seq FROM {s}.jobs j"""
assert _CLAIM_BY_ID in _FETCH and "FROM picked WHERE j.id = picked.id" in _FETCH
# The plan of that update is kept (``_FETCH_GENERIC``), and the planner prefers to read
# a table of a few pages whole than by ``ctid``: a plan made while ``jobs`` was small
# (a new schema, a quiet queue) then read the whole table on every claim once it was large
# (a claim of 10 with 100,000 jobs queued: 20-35 ms instead of 1.2-1.7), until something
# invalidated it (an autovacuum). Sequential scans are off in the fetch: every other
# statement of it reads a partial index already (``paused`` is read by its own).
_FETCH_NO_SEQSCAN = (
    "ALTER FUNCTION {s}.fetch(text[], int, float8, text, boolean, float8) SET enable_seqscan = off"
)
_FETCH_V5 = _replacing(
    _FETCH.replace(_CLAIM_BY_ID, _CLAIM_BY_TID).replace(
        "FROM picked WHERE j.id = picked.id", "WHERE j.ctid = ANY(ARRAY(SELECT tid FROM picked))"
    ),
    _WORKER_COMMIT.format(
        async_=f"{_ASYNC}\n            OR current_setting('conveyor.claim_commit', true) = 'async'"
    ),
)

# The log is trimmed once every _TRIM events (1,024), not every 64: the trim counts the
# events of the newest rows back to ``p_kept`` (about 320 rows at the default 10,000), which
# a drain paid on every finish, about a tenth of the server's time per job. What readers
# see stays within the contract's bound: ``read_events`` reads only the rows that hold the
# newest ``p_kept`` numbered events (the oldest of them whole: fewer than _GROUP more),
# whatever the table holds besides until the next trim (at most _TRIM + _GROUP + 63 more).
# Its two-argument form stays for readers of an older Conveyor while a deployment upgrades
# (the default ``events_kept``).
_TRIM = 1024
_APPEND_EVENTS_V5 = _APPEND_EVENTS_V3.replace(
    "IF last_ / 64 > (first_ - 1) / 64 THEN", f"IF last_ / {_TRIM} > (first_ - 1) / {_TRIM} THEN"
)
assert _APPEND_EVENTS_V5 != _APPEND_EVENTS_V3
_READ_EVENTS_V5 = _READ_EVENTS_V3
for _old, _new in (
    ("CREATE OR REPLACE FUNCTION {s}.read_events(p_after bigint, p_limit int)",
     "CREATE FUNCTION {s}.read_events(p_after bigint, p_limit int, p_kept int)"),
    ("""BEGIN
    PERFORM {s}.number_events();
""", """DECLARE
    after_ bigint;
BEGIN
    PERFORM {s}.number_events();
    after_ := greatest(p_after, coalesce((SELECT max(e.number) FROM {s}.events e), 0) - p_kept);
"""),
    ("WHERE e.number > p_after", "WHERE e.number > after_"),
):  # fmt: skip
    assert _old in _READ_EVENTS_V5, _old
    _READ_EVENTS_V5 = _READ_EVENTS_V5.replace(_old, _new)

_FINISH_V5, _FINISH_ENDED_V5 = (
    f.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
        "\nBEGIN\n", "\nBEGIN\n" + _WORKER_COMMIT.format(async_=_ASYNC), 1
    )
    for f in (_FINISH_V3, _FINISH_ENDED_V4)
)

_READ_EVENTS_TWO = f"""
CREATE OR REPLACE FUNCTION {{s}}.read_events(p_after bigint, p_limit int)
RETURNS TABLE(number bigint, body bytea) LANGUAGE sql AS $$
    SELECT * FROM {{s}}.read_events(p_after, p_limit, {EVENTS_KEPT})
$$"""

FUNCTIONS_V5: tuple[str, ...] = (
    _FETCH_V5,
    _FETCH_GENERIC,
    _FETCH_NO_SEQSCAN,
    _FINISH_V5,
    _FINISH_ENDED_V5,
    _APPEND_EVENTS_V5,
    _READ_EVENTS_V5,
    _READ_EVENTS_TWO,
)

# -- migration 6 -----------------------------------------------------------------------------

# The trim takes only the rows no other transaction holds (``SKIP LOCKED``): it runs in
# whichever transaction crosses a multiple of _TRIM events, which may be a caller's own
# (a transactional enqueue) that stays open as long as the caller likes, and the rows it
# deleted stay locked until then; the next trim (a worker's finish) used to wait for them,
# its job left running meanwhile. Rows skipped are taken by a later trim.
_TRIM_WAITING = """
        DELETE FROM {s}.events WHERE seq < (
            SELECT k.seq FROM (
                SELECT e.seq, sum(e.count) OVER (
                    ORDER BY e.seq DESC) AS total
                FROM {s}.events e) k
            WHERE k.total >= p_kept ORDER BY k.seq DESC LIMIT 1);"""
_TRIM_SKIPPING = """
        DELETE FROM {s}.events WHERE seq IN (
            SELECT t.seq FROM {s}.events t WHERE t.seq < (
                SELECT k.seq FROM (
                    SELECT e.seq, sum(e.count) OVER (ORDER BY e.seq DESC) AS total
                    FROM {s}.events e) k
                WHERE k.total >= p_kept ORDER BY k.seq DESC LIMIT 1)
            FOR UPDATE OF t SKIP LOCKED);"""
assert _APPEND_EVENTS_V5.count(_TRIM_WAITING) == 1
_APPEND_EVENTS_V6 = _APPEND_EVENTS_V5.replace(_TRIM_WAITING, _TRIM_SKIPPING)

FUNCTIONS_V6: tuple[str, ...] = (_APPEND_EVENTS_V6,)
