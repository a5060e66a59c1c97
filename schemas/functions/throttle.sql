-- Throttling guessers: failed activations counted per client id, per identifier and
-- per model in the database, so the limits hold across bridge replicas and restarts.
-- Current definitions: migrate applies this file again whenever its text changes.
--
-- A counter is one fixed window per (scope, subject) in attempt_counters: `failures`
-- attempts that did not succeed since `window_start`. Scopes: 'client' (a client id),
-- 'identifier' ("<model id>/<canonical identifier>"), 'model' (a model id), and 'tally'
-- (the audit tally's budget, tally.sql). Rows of closed windows are purged by the
-- bridge's housekeeping.

-- Seconds left in a window that started at p_start (at least 1: "retry now" is never said).
CREATE OR REPLACE FUNCTION bridge_retry_after(p_start timestamptz, p_window integer)
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT greatest(1, ceil(extract(epoch FROM
        p_start + make_interval(secs => p_window) - now()))::integer)
$$;

-- Count one attempt against (scope, subject) and return the new count and the seconds
-- left in its window. The upsert locks the counter row until the transaction ends, so
-- concurrent attempts of one client are counted one after another: no burst slips
-- past the limit however many requests are in flight.
CREATE OR REPLACE FUNCTION bridge_count_attempt(p_scope text, p_subject text, p_window integer,
                                                OUT failures integer, OUT retry_after integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_start timestamptz;
BEGIN
    INSERT INTO attempt_counters AS c (scope, subject, window_start, failures)
         VALUES (p_scope, p_subject, now(), 1)
    ON CONFLICT (scope, subject) DO UPDATE
        SET failures = CASE WHEN c.window_start + make_interval(secs => p_window) <= now()
                            THEN 1 ELSE c.failures + 1 END,
            window_start = CASE WHEN c.window_start + make_interval(secs => p_window) <= now()
                                THEN now() ELSE c.window_start END
    RETURNING c.failures, c.window_start INTO failures, v_start;
    retry_after := bridge_retry_after(v_start, p_window);
END $$;

-- Requests of one client id are counted and tallied one after another, so a burst
-- cannot slip past its limit nor open two tallies; a lock of no row, because a client
-- that never fails has none. Taken first (before any row lock); asking again in the
-- same transaction does not wait.
CREATE OR REPLACE FUNCTION bridge_lock_client(p_client_id text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1668049252, hashtext(p_client_id))  -- "clid"
$$;

-- The failures counted against (scope, subject) in its open window and the seconds
-- left in it; NULLs when no window is open. Reads only. In plpgsql, not SQL: a SQL
-- function that returns a row cannot be inlined, and PostgreSQL plans its query again
-- on every call (a third of bridge_activate's own time, docs/performance.md); plpgsql
-- keeps the plan for the session.
CREATE OR REPLACE FUNCTION bridge_counted(p_scope text, p_subject text, p_window integer,
                                          OUT failures integer, OUT retry_after integer)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT c.failures, bridge_retry_after(c.window_start, p_window)
      INTO failures, retry_after
      FROM attempt_counters c
     WHERE c.scope = p_scope AND c.subject = p_subject
       AND c.window_start + make_interval(secs => p_window) > now();
END $$;

-- Count one failure against a counter that many client ids share (an identifier, a
-- model, a tally budget), and return the count before it and the seconds left in its
-- window. Past the limit nothing is written and no lock is taken: such a row is hot
-- under a flood, so it is written at most p_limit times per window, and then only read.
CREATE OR REPLACE FUNCTION bridge_bump_shared(p_scope text, p_subject text, p_window integer,
                                              p_limit integer,
                                              OUT failures integer, OUT retry_after integer)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.failures, c.retry_after INTO failures, retry_after
      FROM bridge_counted(p_scope, p_subject, p_window) c;
    IF failures >= p_limit THEN
        RETURN;
    END IF;
    SELECT c.failures - 1, c.retry_after INTO failures, retry_after
      FROM bridge_count_attempt(p_scope, p_subject, p_window) c;
END $$;

-- A refusal decided before the database (unknown model, invalid identifier, and any
-- other the bridge decides in Python): counted and tallied in one round trip, with the
-- same limits as an activation (transitions/activate.sql). Returns retry_after and
-- which limit when the answer becomes 'rate_limited', else NULLs.
CREATE OR REPLACE FUNCTION bridge_refuse_throttled(
    p_client_limit      integer,
    p_identifier_limit  integer,
    p_model_limit       integer,
    p_window            integer,
    p_tally_window      integer,
    p_tally_budget      integer,
    p_action            text,
    p_code              text,
    p_actor             text,
    p_client_id         text,
    p_request_id        text,
    p_vendor            text,
    p_model             text,
    p_presented         text,
    p_identifier        text,
    p_detail            text
) RETURNS TABLE (retry_after integer, limited_by text)
LANGUAGE plpgsql AS $$
DECLARE
    v_model_id  bigint;
    v_code      text := p_code;
    v_detail    text := p_detail;
    v_limited   text;
    v_retry     integer;
    v_count     integer;
    v_left      integer;
BEGIN
    IF p_client_id IS NOT NULL THEN
        PERFORM bridge_lock_client(p_client_id);
    END IF;
    SELECT c.failures, c.retry_after INTO v_count, v_left
      FROM bridge_counted('client', p_client_id, p_window) c;
    IF v_count >= p_client_limit THEN
        v_limited := 'client';
        v_retry := v_left;
        v_detail := 'too many failed attempts for this client id (' || p_code || ')';
    ELSE
        IF p_client_id IS NOT NULL THEN
            PERFORM bridge_count_attempt('client', p_client_id, p_window);
        END IF;
        SELECT id INTO v_model_id FROM models WHERE vendor = p_vendor AND model = p_model;
        IF v_model_id IS NOT NULL THEN  -- as in bridge_activate
            SELECT b.failures, b.retry_after INTO v_count, v_left
              FROM bridge_bump_shared('model', v_model_id::text, p_window, p_model_limit) b;
            IF v_count >= p_model_limit THEN
                v_limited := 'model';
                v_retry := v_left;
            ELSIF p_identifier IS NOT NULL THEN
                SELECT b.failures, b.retry_after INTO v_count, v_left
                  FROM bridge_bump_shared('identifier', v_model_id::text || '/' || p_identifier,
                                          p_window, p_identifier_limit) b;
                IF v_count >= p_identifier_limit THEN
                    v_limited := 'identifier';
                    v_retry := v_left;
                END IF;
            END IF;
            IF v_limited IS NOT NULL THEN
                v_detail := 'withheld ' || p_code || coalesce(' (' || p_detail || ')', '')
                            || ': too many failed attempts for this ' || v_limited
                            || ' from all client ids';
            END IF;
        END IF;
    END IF;
    IF v_limited IS NOT NULL THEN
        v_code := 'rate_limited';
    END IF;
    PERFORM bridge_tally(p_tally_window, p_tally_budget, p_action, v_code, p_actor,
                         p_client_id, p_request_id, p_vendor, p_model, p_presented,
                         p_identifier, v_detail, NULL);
    RETURN QUERY SELECT v_retry, v_limited;
END $$;

-- What an older bridge called (003's refusal, later a wrapper of the one above).
DROP FUNCTION IF EXISTS bridge_refuse(integer, integer, text, text, text, text, text, text,
                                      text, text, text, text);
