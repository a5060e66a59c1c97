-- Activation: the whole decision, in one round trip and one transaction. The bridge
-- calls bridge_activate with named arguments (p_<name> => ...), one per field of
-- bridge.records.Activation plus the audit tally's two settings; the batcher
-- (bridge/db/activations.py) calls it once per row of a batch. Current definition:
-- migrate applies this file again whenever its text changes.
--
-- The decision, in this order:
--   1. an identical retry (same client id, request id and device) within the grace
--      period gets its stored reply, whatever the counters say;
--   2. a client id past its own failure limit gets 'rate_limited', whatever it asks;
--   3. where devices get broker logins (p_device_logins), a client id that is another
--      device's login gets 'client_id_reserved';
--   4. the device row is locked, then: not approved, revoked, already activated, not
--      claimed (a model that requires a claim), window expired, else 'ok': the key hash
--      is stored, the reply kept for retries, the client id recorded as the login
--      holding the key;
--   5. a failure only: counted against the client id, the identifier and the model
--      (throttle.sql). Past the identifier's or the model's limit (failures from all
--      client ids) the failure is answered 'rate_limited' instead of its reason; a
--      request that would succeed is never refused by those two counters. A success
--      writes no counter.
-- Every attempt is audited with the device's owner: a success as a row of its own,
-- failures and replays as a tally (tally.sql).

-- Every earlier signature goes first (the parameters change when an argument is
-- added), and so do the names an older bridge called: bridge_activate_throttled (008)
-- and bridge_activate_limited (003). All definition files apply in one transaction, so
-- a bridge never finds none.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = current_schema()::regnamespace
                AND p.proname IN ('bridge_activate', 'bridge_activate_throttled',
                                  'bridge_activate_limited')
    LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END $$;

CREATE FUNCTION bridge_activate(
    p_client_id             text,
    p_client_limit          integer,
    p_device_logins         boolean,
    p_grace_seconds         integer,
    p_identifier            text,
    p_identifier_limit      integer,
    p_key_hash              bytea,
    p_key_id                text,
    p_login_key             bytea,
    p_model_id              bigint,
    p_model_limit           integer,
    p_presented             text,
    p_reply                 bytea,
    p_request_id            text,
    p_tally_clients         integer,
    p_tally_window_seconds  integer,
    p_window_seconds        integer
) RETURNS TABLE (code text, replay bytea, window_ends_at timestamptz, retry_after integer,
                 replaced_client_id text, limited_by text, login_key bytea)
LANGUAGE plpgsql AS $$
DECLARE
    m          models%ROWTYPE;
    d          devices%ROWTYPE;
    v_owner    text;
    v_code     text;
    v_replay   bytea;
    v_login    bytea;
    v_replaces text;
    v_detail   text;
    v_limited  text;
    v_retry    integer;
    v_count    integer;
    v_left     integer;
BEGIN
    SELECT * INTO m FROM models WHERE id = p_model_id;

    -- 1. Retry beats throttle.
    SELECT r.sealed_reply, r.login_key, r.login_replaces, o.name
      INTO v_replay, v_login, v_replaces, v_owner
      FROM replies r JOIN devices rd ON rd.id = r.device_id
      LEFT JOIN owners o ON o.id = rd.owner_id
     WHERE r.client_id = p_client_id AND r.request_id = p_request_id
       AND rd.model_id = p_model_id AND rd.identifier = p_identifier
       AND r.expires_at > now();
    IF FOUND THEN
        PERFORM bridge_tally(p_tally_window_seconds, p_tally_clients, 'activate', 'ok',
                             'device', p_client_id, p_request_id, m.vendor, m.model,
                             p_presented, p_identifier, 'replayed the stored reply', v_owner);
        RETURN QUERY SELECT 'ok'::text, v_replay, NULL::timestamptz, NULL::integer,
                            v_replaces, NULL::text, v_login;
        RETURN;
    END IF;

    PERFORM bridge_lock_client(p_client_id);

    -- 2. A client id past its own limit.
    SELECT c.failures, c.retry_after INTO v_count, v_left
      FROM bridge_counted('client', p_client_id, p_window_seconds) c;
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
            SELECT r.sealed_reply, r.login_key, r.login_replaces
              INTO v_replay, v_login, v_replaces FROM replies r
             WHERE r.client_id = p_client_id AND r.request_id = p_request_id
               AND r.device_id = d.id AND r.expires_at > now();
            -- Read after the lock, in a statement of its own: it sees the owner of a
            -- claim committed by the transaction the lock waited for.
            IF d.owner_id IS NOT NULL THEN
                SELECT o.name INTO v_owner FROM owners o WHERE o.id = d.owner_id;
            END IF;
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
            -- With device logins, the key and the login it replaces wait here until the
            -- login is open (bridge.provisioner, _open_login_of): a bridge killed before
            -- then leaves them to the replay.
            INSERT INTO replies (client_id, request_id, device_id, sealed_reply, expires_at,
                                 login_key, login_replaces)
                 VALUES (p_client_id, p_request_id, d.id, p_reply,
                         now() + make_interval(secs => p_grace_seconds), p_login_key,
                         CASE WHEN p_login_key IS NOT NULL
                              THEN NULLIF(d.client_id, p_client_id) END)
            -- Keyed by device too (migration 015): a request id that this client id
            -- sent for another device leaves that device's stored reply alone.
            ON CONFLICT ON CONSTRAINT replies_pkey DO UPDATE
                SET sealed_reply = EXCLUDED.sealed_reply, expires_at = EXCLUDED.expires_at,
                    login_key = EXCLUDED.login_key, login_replaces = EXCLUDED.login_replaces;
            INSERT INTO audit_log (action, actor, client_id, request_id, vendor, model,
                                   identifier_presented, identifier, code, owner)
                 VALUES ('activate', 'device', p_client_id, p_request_id, m.vendor, m.model,
                         p_presented, p_identifier, 'ok', v_owner);
            -- A new key: hand back who held the previous one (a re-activation from
            -- another client id), whose broker login must close.
            RETURN QUERY SELECT 'ok'::text, NULL::bytea, d.window_ends_at, NULL::integer,
                                NULLIF(d.client_id, p_client_id), NULL::text, NULL::bytea;
            RETURN;
        END IF;

        -- 5. A failure (a replay is none).
        IF v_code <> 'ok' THEN
            PERFORM bridge_count_attempt('client', p_client_id, p_window_seconds);
            IF v_code <> 'client_id_reserved' THEN  -- says nothing about the number
                -- The model first: past its limit every failure is answered alike, so
                -- the number's own counter is not needed (nor written: a sweep of
                -- fresh numbers adds no row per number).
                SELECT b.failures, b.retry_after INTO v_count, v_left
                  FROM bridge_bump_shared('model', p_model_id::text, p_window_seconds,
                                          p_model_limit) b;
                IF v_count >= p_model_limit THEN
                    v_limited := 'model';
                    v_retry := v_left;
                ELSE
                    SELECT b.failures, b.retry_after INTO v_count, v_left
                      FROM bridge_bump_shared('identifier',
                                              p_model_id::text || '/' || p_identifier,
                                              p_window_seconds, p_identifier_limit) b;
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
    PERFORM bridge_tally(p_tally_window_seconds, p_tally_clients, 'activate', v_code,
                         'device', p_client_id, p_request_id, m.vendor, m.model,
                         p_presented, p_identifier, v_detail, v_owner);
    RETURN QUERY SELECT v_code, v_replay, d.window_ends_at, v_retry, v_replaces, v_limited,
                        v_login;
END $$;
