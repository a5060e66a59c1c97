-- 003: throttling guessers. Failed activations are counted per client id and per
-- identifier in the database, so the limit holds across bridge replicas and restarts.

-- The client id that activated the device: the username of its broker login (when the
-- bridge gives devices logins), so that revoke and release can disable that login.
ALTER TABLE devices ADD COLUMN client_id text;

-- One fixed window per (scope, subject): `failures` attempts that did not succeed since
-- `window_start`. Rows of closed windows are purged by the bridge's housekeeping.
CREATE TABLE attempt_counters (
    scope         text NOT NULL CHECK (scope IN ('client', 'identifier')),
    subject       text NOT NULL,     -- the client id, or "<model id>/<canonical identifier>"
    window_start  timestamptz NOT NULL,
    failures      integer NOT NULL,
    PRIMARY KEY (scope, subject)
);
CREATE INDEX attempt_counters_window ON attempt_counters (window_start);

-- Seconds left in a window that started at p_start (at least 1: "retry now" is never said).
CREATE FUNCTION bridge_retry_after(p_start timestamptz, p_window integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT greatest(1, ceil(extract(epoch FROM
        p_start + make_interval(secs => p_window) - now()))::integer)
$$;

-- Count one attempt against (scope, subject) and return the new count and the seconds
-- left in its window. The upsert locks the counter row until the transaction ends, so
-- concurrent attempts of one client are counted one after another: no burst slips
-- past the limit however many requests are in flight.
CREATE FUNCTION bridge_count_attempt(p_scope text, p_subject text, p_window integer,
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

-- Activation with throttling, in the same single round trip: a client id or identifier
-- already past the limit is answered at once; otherwise the attempt is counted against
-- the client id, then against the identifier, before bridge_activate (001) decides; a success takes its counts back, so only failures remain counted. Past the
-- limit the answer is 'rate_limited' with retry_after, and the decision is not taken.
-- Wrapping (rather than replacing) bridge_activate keeps its decision in one place.
CREATE FUNCTION bridge_activate_limited(
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
LANGUAGE plpgsql AS $$
DECLARE
    v_subject   text := p_model_id::text || '/' || p_identifier;
    v_previous  text;
    v_failures  integer;
    v_retry     integer;
    v_limited   integer;
    v_scope     text;
    r           record;
BEGIN
    -- Already past the limit: answer without waiting for the counter's row lock, so a
    -- flood from one client (or on one number) cannot tie up the bridge's connections.
    SELECT bridge_retry_after(c.window_start, p_window),
           CASE c.scope WHEN 'client' THEN 'client id' ELSE 'identifier' END
      INTO v_limited, v_scope
      FROM attempt_counters c
     WHERE (c.scope, c.subject) IN (('client', p_client_id), ('identifier', v_subject))
       AND c.failures >= p_limit
       AND c.window_start + make_interval(secs => p_window) > now()
     ORDER BY 1 DESC LIMIT 1;
    IF v_limited IS NULL THEN
        SELECT * INTO v_failures, v_retry
          FROM bridge_count_attempt('client', p_client_id, p_window);
        IF v_failures > p_limit THEN
            v_limited := v_retry;
            v_scope := 'client id';
        ELSE
            SELECT * INTO v_failures, v_retry
              FROM bridge_count_attempt('identifier', v_subject, p_window);
            IF v_failures > p_limit THEN
                v_limited := v_retry;
                v_scope := 'identifier';
            END IF;
        END IF;
    END IF;
    IF v_limited IS NOT NULL THEN
        INSERT INTO audit_log (action, actor, client_id, request_id, vendor, model,
                               identifier_presented, identifier, code, detail)
             SELECT 'activate', 'device', p_client_id, p_request_id, m.vendor, m.model,
                    p_presented, p_identifier, 'rate_limited',
                    'too many failed attempts for this ' || v_scope
               FROM models m WHERE m.id = p_model_id;
        RETURN QUERY SELECT 'rate_limited'::text, NULL::bytea, NULL::timestamptz, v_limited,
                            NULL::text;
        RETURN;
    END IF;
    SELECT a.code, a.replay, a.window_ends_at INTO r
      FROM bridge_activate(p_client_id, p_request_id, p_model_id, p_identifier, p_presented,
                           p_key_id, p_key_hash, p_reply, p_grace) AS a;
    IF r.code = 'ok' THEN
        UPDATE attempt_counters c SET failures = c.failures - 1
         WHERE (c.scope, c.subject) IN (('client', p_client_id), ('identifier', v_subject));
    END IF;
    IF r.code = 'ok' AND r.replay IS NULL THEN
        -- A new key: remember who holds it, and hand back who held the previous one
        -- (a re-activation from another client id), whose broker login must close.
        -- The device row is still locked by bridge_activate in this transaction.
        SELECT d.client_id INTO v_previous FROM devices d
         WHERE d.model_id = p_model_id AND d.identifier = p_identifier;
        UPDATE devices d SET client_id = p_client_id
         WHERE d.model_id = p_model_id AND d.identifier = p_identifier;
    END IF;
    RETURN QUERY SELECT r.code, r.replay, r.window_ends_at, NULL::integer,
                        NULLIF(v_previous, p_client_id);
END $$;

-- A refusal decided before the database (unknown model, invalid identifier): counted
-- against the client id and audited in one round trip. Returns retry_after when the
-- client is past the limit (the answer becomes 'rate_limited'), else NULL.
CREATE FUNCTION bridge_refuse(
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
LANGUAGE plpgsql AS $$
DECLARE
    v_failures  integer;
    v_left      integer;
    v_retry     integer;
BEGIN
    SELECT bridge_retry_after(c.window_start, p_window) INTO v_retry
      FROM attempt_counters c
     WHERE c.scope = 'client' AND c.subject = p_client_id AND c.failures >= p_limit
       AND c.window_start + make_interval(secs => p_window) > now();
    IF v_retry IS NULL THEN
        SELECT * INTO v_failures, v_left
          FROM bridge_count_attempt('client', p_client_id, p_window);
        IF v_failures > p_limit THEN
            v_retry := v_left;
        END IF;
    END IF;
    INSERT INTO audit_log (action, code, actor, client_id, request_id, vendor, model,
                           identifier_presented, identifier, detail)
         VALUES (p_action, CASE WHEN v_retry IS NULL THEN p_code ELSE 'rate_limited' END,
                 p_actor, p_client_id, p_request_id, p_vendor, p_model, p_presented,
                 p_identifier,
                 CASE WHEN v_retry IS NULL THEN p_detail
                      ELSE 'too many failed attempts for this client id (' || p_code || ')' END);
    RETURN v_retry;
END $$;
