-- 008: a throttle that protects devices instead of locking them out, and device
-- failures that cannot grow the database without bound (issues 12 and 13).
--
-- bridge_activate_throttled decides an activation in one round trip, in this order:
--   1. an identical retry (same client id, request id and device) within the grace
--      period gets its stored reply, whatever the counters say;
--   2. a client id past its own failure limit gets 'rate_limited', whatever it asks;
--   3. where devices get broker logins (p_device_logins), a client id that is another
--      device's login gets 'client_id_reserved';
--   4. the decision of 001 (device row locked);
--   5. a failure only: counted against the client id, the identifier and the model.
--      Past the identifier's or the model's limit (failures from all client ids) the
--      failure is answered 'rate_limited' instead of its reason; a request that would
--      succeed is never refused by those two counters. A success writes no counter.
-- Device failures (and replays) are tallied in the audit log: one row per client id,
-- action and code per tally window, with a repeat count (see bridge_tally).

-- Counters per model, and the tally budget (tally rows opened per code and window).
ALTER TABLE attempt_counters DROP CONSTRAINT attempt_counters_scope_check;
ALTER TABLE attempt_counters ADD CONSTRAINT attempt_counters_scope_check
    CHECK (scope IN ('client', 'identifier', 'model', 'tally'));

-- A tallied row (last_at set) stands for 1 + repeats attempts, the first at `at`, the
-- last at `last_at`. Both columns are metadata-only additions (no table rewrite).
ALTER TABLE audit_log ADD COLUMN repeats integer NOT NULL DEFAULT 0,
                      ADD COLUMN last_at timestamptz;
-- Room on each new page for the repeat updates of tallied rows, so they stay
-- heap-only (no new index entries) and are pruned in place.
ALTER TABLE audit_log SET (fillfactor = 90);

-- Still append-only, except that a tallied row may count more repeats of itself.
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.last_at IS NOT NULL
       AND NEW.repeats > OLD.repeats AND NEW.last_at >= OLD.last_at
       AND to_jsonb(NEW) - 'repeats' - 'last_at' = to_jsonb(OLD) - 'repeats' - 'last_at' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$;

-- "Is this client id another device's broker login?" is asked on every activation.
CREATE INDEX devices_client_id ON devices (client_id) WHERE client_id IS NOT NULL;

-- Requests of one client id are counted and tallied one after another, so a burst
-- cannot slip past its limit nor open two tallies; a lock of no row, because a client
-- that never fails has none. Taken first (before any row lock); asking again in the
-- same transaction does not wait.
CREATE FUNCTION bridge_lock_client(p_client_id text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1668049252, hashtext(p_client_id))  -- "clid"
$$;

-- The failures counted against (scope, subject) in its open window and the seconds
-- left in it; NULLs when no window is open. Reads only.
CREATE FUNCTION bridge_counted(p_scope text, p_subject text, p_window integer,
                               OUT failures integer, OUT retry_after integer)
LANGUAGE sql STABLE AS $$
    SELECT c.failures, bridge_retry_after(c.window_start, p_window)
      FROM attempt_counters c
     WHERE c.scope = p_scope AND c.subject = p_subject
       AND c.window_start + make_interval(secs => p_window) > now()
$$;

-- Count one failure against a counter that many client ids share (an identifier, a
-- model, a tally budget), and return the count before it and the seconds left in its
-- window. Past the limit nothing is written and no lock is taken: such a row is hot
-- under a flood, so it is written at most p_limit times per window, and then only read.
CREATE FUNCTION bridge_bump_shared(p_scope text, p_subject text, p_window integer,
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

-- Take one of the tally rows a code may open in a window for a client id of its own:
-- false past the budget, and also while another transaction holds the budget's counter
-- (never waited for: every failure of every client passes here while the budget lasts;
-- at worst a client id is counted in the shared row sooner than it had to be).
CREATE FUNCTION bridge_take_tally(p_code text, p_window integer, p_budget integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    SELECT c.failures INTO v_count FROM bridge_counted('tally', p_code, p_window) c;
    IF v_count >= p_budget THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM attempt_counters k WHERE k.scope = 'tally' AND k.subject = p_code
        FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        PERFORM 1 FROM attempt_counters k WHERE k.scope = 'tally' AND k.subject = p_code;
        IF FOUND THEN
            RETURN false;  -- busy
        END IF;
    END IF;
    PERFORM bridge_count_attempt('tally', p_code, p_window);
    RETURN true;
END $$;

-- Audit one device failure (or replay) as a tally: the open row of (client id, action,
-- code) in the last p_window seconds counts one more repeat; without one, a new row
-- is opened. At most p_budget rows are opened per code and window for distinct client
-- ids; beyond that, and for requests without a client id, the attempts are counted in
-- a shared row whose client id is '*' (never a valid client id). So the audit log
-- grows with windows, not with requests nor with client ids. A client's own tally is
-- taken under its client lock; the shared one with SKIP LOCKED: when it is busy in
-- another transaction a second one is opened, so a flood never queues on one row.
CREATE FUNCTION bridge_tally(
    p_window     integer,
    p_budget     integer,
    p_action     text,
    p_code       text,
    p_actor      text,
    p_client_id  text,
    p_request_id text,
    p_vendor     text,
    p_model      text,
    p_presented  text,
    p_identifier text,
    p_detail     text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key     text := coalesce(p_client_id, '*');
    v_id      bigint;
BEGIN
    IF p_client_id IS NOT NULL THEN
        PERFORM bridge_lock_client(p_client_id);
    END IF;
    LOOP
        SELECT a.id INTO v_id FROM audit_log a
         WHERE a.client_id = v_key AND a.code = p_code AND a.action = p_action
           AND a.last_at IS NOT NULL
           AND a.at > now() - make_interval(secs => p_window)
         ORDER BY a.at DESC LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE audit_log SET repeats = repeats + 1, last_at = clock_timestamp()
             WHERE id = v_id;
            RETURN;
        END IF;
        EXIT WHEN v_key = '*';
        EXIT WHEN bridge_take_tally(p_code, p_window, p_budget);
        v_key := '*';
    END LOOP;
    INSERT INTO audit_log (action, code, actor, client_id, request_id, vendor, model,
                           identifier_presented, identifier, detail, last_at)
         VALUES (p_action, p_code, p_actor, v_key, p_request_id, p_vendor, p_model,
                 p_presented, p_identifier,
                 CASE WHEN v_key = '*' AND p_client_id IS NOT NULL
                      THEN concat_ws('; ', p_detail, 'first from client id ' || p_client_id
                                     || '; counts the client ids past the window''s budget')
                      ELSE p_detail END,
                 clock_timestamp());
END $$;

-- The activation, throttled (see the top of this file). Replaces bridge_activate (001)
-- and bridge_activate_limited (003), which now delegate here: one decision.
CREATE FUNCTION bridge_activate_throttled(
    p_client_id         text,
    p_request_id        text,
    p_model_id          bigint,
    p_identifier        text,
    p_presented         text,
    p_key_id            text,
    p_key_hash          bytea,
    p_reply             bytea,
    p_grace             integer,
    p_client_limit      integer,
    p_identifier_limit  integer,
    p_model_limit       integer,
    p_window            integer,
    p_tally_window      integer,
    p_tally_budget      integer,
    p_device_logins     boolean
) RETURNS TABLE (code text, replay bytea, window_ends_at timestamptz, retry_after integer,
                 replaced_client_id text, limited_by text)
LANGUAGE plpgsql AS $$
DECLARE
    m          models%ROWTYPE;
    d          devices%ROWTYPE;
    v_code     text;
    v_replay   bytea;
    v_detail   text;
    v_limited  text;
    v_retry    integer;
    v_count    integer;
    v_left     integer;
BEGIN
    SELECT * INTO m FROM models WHERE id = p_model_id;

    -- 1. Retry beats throttle.
    SELECT r.sealed_reply INTO v_replay
      FROM replies r JOIN devices rd ON rd.id = r.device_id
     WHERE r.client_id = p_client_id AND r.request_id = p_request_id
       AND rd.model_id = p_model_id AND rd.identifier = p_identifier
       AND r.expires_at > now();
    IF FOUND THEN
        PERFORM bridge_tally(p_tally_window, p_tally_budget, 'activate', 'ok', 'device',
                             p_client_id, p_request_id, m.vendor, m.model, p_presented,
                             p_identifier, 'replayed the stored reply');
        RETURN QUERY SELECT 'ok'::text, v_replay, NULL::timestamptz, NULL::integer,
                            NULL::text, NULL::text;
        RETURN;
    END IF;

    PERFORM bridge_lock_client(p_client_id);

    -- 2. A client id past its own limit.
    SELECT c.failures, c.retry_after INTO v_count, v_left
      FROM bridge_counted('client', p_client_id, p_window) c;
    IF v_count >= p_client_limit THEN
        v_code := 'rate_limited';
        v_limited := 'client';
        v_retry := v_left;
        v_detail := 'too many failed attempts for this client id';
    ELSE
        -- 4 (lock first). Concurrent requests for one identifier, from any replica, are
        -- decided one after another: exactly one gets 'ok'. The replay check is made
        -- again after the lock, to see a reply committed by the request we waited for.
        SELECT * INTO d FROM devices
         WHERE model_id = p_model_id AND identifier = p_identifier FOR UPDATE;
        IF FOUND THEN
            SELECT r.sealed_reply INTO v_replay FROM replies r
             WHERE r.client_id = p_client_id AND r.request_id = p_request_id
               AND r.device_id = d.id AND r.expires_at > now();
        END IF;
        IF v_replay IS NOT NULL THEN
            v_code := 'ok';
            v_detail := 'replayed the stored reply';
        -- 3. The client id is the broker login of a device that still holds a key
        -- (activated, or re-enabled and not yet activated again): not this one's.
        -- Without device logins there is no login to take, and one client id may
        -- activate many devices (a gateway, a factory station).
        ELSIF p_device_logins
              AND EXISTS (SELECT 1 FROM devices o
                           WHERE o.client_id = p_client_id AND o.key_hash IS NOT NULL
                             AND o.id IS DISTINCT FROM d.id) THEN
            v_code := 'client_id_reserved';
        ELSIF d.id IS NULL THEN
            v_code := 'not_approved';
        ELSIF d.state = 'revoked' THEN
            v_code := 'revoked';
        ELSIF d.state = 'activated' THEN
            v_code := 'already_activated';
        ELSIF d.state = 'approved' AND m.claim_required THEN
            v_code := 'not_claimed';
        ELSIF d.window_ends_at IS NOT NULL AND d.window_ends_at <= now() THEN
            v_code := 'window_expired';
        ELSE
            v_code := 'ok';
            UPDATE devices SET state = 'activated', key_id = p_key_id, key_hash = p_key_hash,
                   activated_at = now(), window_ends_at = NULL, updated_at = now(),
                   client_id = p_client_id
             WHERE id = d.id;
            INSERT INTO replies (client_id, request_id, device_id, sealed_reply, expires_at)
                 VALUES (p_client_id, p_request_id, d.id, p_reply,
                         now() + make_interval(secs => p_grace))
            ON CONFLICT ON CONSTRAINT replies_pkey DO UPDATE
                SET device_id = EXCLUDED.device_id, sealed_reply = EXCLUDED.sealed_reply,
                    expires_at = EXCLUDED.expires_at;
            INSERT INTO audit_log (action, actor, client_id, request_id, vendor, model,
                                   identifier_presented, identifier, code)
                 VALUES ('activate', 'device', p_client_id, p_request_id, m.vendor, m.model,
                         p_presented, p_identifier, 'ok');
            -- A new key: hand back who held the previous one (a re-activation from
            -- another client id), whose broker login must close.
            RETURN QUERY SELECT 'ok'::text, NULL::bytea, d.window_ends_at, NULL::integer,
                                NULLIF(d.client_id, p_client_id), NULL::text;
            RETURN;
        END IF;

        -- 5. A failure (a replay is none).
        IF v_code <> 'ok' THEN
            PERFORM bridge_count_attempt('client', p_client_id, p_window);
            IF v_code <> 'client_id_reserved' THEN  -- says nothing about the number
                -- The model first: past its limit every failure is answered alike, so
                -- the number's own counter is not needed (nor written: a sweep of
                -- fresh numbers adds no row per number).
                SELECT b.failures, b.retry_after INTO v_count, v_left
                  FROM bridge_bump_shared('model', p_model_id::text, p_window,
                                          p_model_limit) b;
                IF v_count >= p_model_limit THEN
                    v_limited := 'model';
                    v_retry := v_left;
                ELSE
                    SELECT b.failures, b.retry_after INTO v_count, v_left
                      FROM bridge_bump_shared('identifier',
                                              p_model_id::text || '/' || p_identifier,
                                              p_window, p_identifier_limit) b;
                    IF v_count >= p_identifier_limit THEN
                        v_limited := 'identifier';
                        v_retry := v_left;
                    END IF;
                END IF;
                IF v_limited IS NOT NULL THEN
                    v_detail := 'withheld ' || v_code || ': too many failed attempts for this '
                                || v_limited || ' from all client ids';
                    v_code := 'rate_limited';
                END IF;
            END IF;
        END IF;
    END IF;
    PERFORM bridge_tally(p_tally_window, p_tally_budget, 'activate', v_code, 'device',
                         p_client_id, p_request_id, m.vendor, m.model, p_presented,
                         p_identifier, v_detail);
    RETURN QUERY SELECT v_code, v_replay, d.window_ends_at, v_retry, NULL::text, v_limited;
END $$;

-- A refusal decided before the database (unknown model, invalid identifier, and any
-- other the bridge decides in Python): counted and tallied in one round trip, with the
-- same limits as an activation. Returns retry_after and which limit when the answer
-- becomes 'rate_limited', else NULLs.
CREATE FUNCTION bridge_refuse_throttled(
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
        IF v_model_id IS NOT NULL THEN  -- as in bridge_activate_throttled
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
                         p_identifier, v_detail);
    RETURN QUERY SELECT v_retry, v_limited;
END $$;

-- The functions of 001 and 003, for a bridge of an earlier version still running
-- during an upgrade: they now decide through the ones above (identifier limit = the
-- client limit, model limit = ten times it, tallies by the hour, 1,000 client ids;
-- client ids not reserved, as before).
DROP FUNCTION bridge_activate(text, text, bigint, text, text, text, bytea, bytea, integer);

CREATE OR REPLACE FUNCTION bridge_activate_limited(
    p_client_id   text,
    p_request_id  text,
    p_model_id    bigint,
    p_identifier  text,
    p_presented   text,
    p_key_id      text,
    p_key_hash    bytea,
    p_reply       bytea,
    p_grace       integer,
    p_limit       integer,
    p_window      integer
) RETURNS TABLE (code text, replay bytea, window_ends_at timestamptz, retry_after integer,
              replaced_client_id text)
LANGUAGE sql AS $$
    SELECT a.code, a.replay, a.window_ends_at, a.retry_after, a.replaced_client_id
      FROM bridge_activate_throttled(p_client_id, p_request_id, p_model_id, p_identifier,
                                     p_presented, p_key_id, p_key_hash, p_reply, p_grace,
                                     p_limit, p_limit, 10 * p_limit, p_window, 3600, 1000,
                                     false) a
$$;

CREATE OR REPLACE FUNCTION bridge_refuse(
    p_limit      integer,
    p_window     integer,
    p_action     text,
    p_code       text,
    p_actor      text,
    p_client_id  text,
    p_request_id text,
    p_vendor     text,
    p_model      text,
    p_presented  text,
    p_identifier text,
    p_detail     text
) RETURNS integer
LANGUAGE sql AS $$
    SELECT r.retry_after
      FROM bridge_refuse_throttled(p_limit, p_limit, 10 * p_limit, p_window, 3600, 1000,
                                   p_action, p_code, p_actor, p_client_id, p_request_id,
                                   p_vendor, p_model, p_presented, p_identifier, p_detail) r
$$;
