-- The audit tally: device failures (and replays) cannot grow the audit log without
-- bound. Current definitions: migrate applies this file again whenever its text changes.
--
-- A tallied row (last_at set) stands for 1 + repeats attempts of one client id, action
-- and code in one window, the first at `at`, the last at `last_at`.

-- Take one of the tally rows a code may open in a window for a client id of its own:
-- false past the budget, and also while another transaction holds the budget's counter
-- (never waited for: every failure of every client passes here while the budget lasts;
-- at worst a client id is counted in the shared row sooner than it had to be).
CREATE OR REPLACE FUNCTION bridge_take_tally(p_code text, p_window integer, p_budget integer)
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

-- The signature before the owner was passed in (an older bridge's, with a trigger
-- filling the owner).
DROP FUNCTION IF EXISTS bridge_tally(integer, integer, text, text, text, text, text, text,
                                     text, text, text, text);

-- Audit one device failure (or replay) as a tally: the open row of (client id, action,
-- code) in the last p_window seconds counts one more repeat; without one, a new row
-- is opened. At most p_budget rows are opened per code and window for distinct client
-- ids; beyond that, and for requests without a client id, the attempts are counted in
-- a shared row whose client id is '*' (never a valid client id). So the audit log
-- grows with windows, not with requests nor with client ids. A client's own tally is
-- taken under its client lock; the shared one with SKIP LOCKED: when it is busy in
-- another transaction a second one is opened, so a flood never queues on one row.
--
-- A new activation row names the device's owner: p_owner when the caller read it
-- already, else the owner of the device the entry names, if any.
CREATE OR REPLACE FUNCTION bridge_tally(
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
    p_detail     text,
    p_owner      text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key     text := coalesce(p_client_id, '*');
    v_id      bigint;
    v_owner   text := p_owner;
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
    IF v_owner IS NULL AND p_action = 'activate' AND p_identifier IS NOT NULL THEN
        SELECT o.name INTO v_owner
          FROM models m
          JOIN devices d ON d.model_id = m.id AND d.identifier = p_identifier
          JOIN owners o ON o.id = d.owner_id
         WHERE m.vendor = p_vendor AND m.model = p_model;
    END IF;
    INSERT INTO audit_log (action, code, actor, client_id, request_id, vendor, model,
                           identifier_presented, identifier, detail, last_at, owner)
         VALUES (p_action, p_code, p_actor, v_key, p_request_id, p_vendor, p_model,
                 p_presented, p_identifier,
                 CASE WHEN v_key = '*' AND p_client_id IS NOT NULL
                      THEN concat_ws('; ', p_detail, 'first from client id ' || p_client_id
                                     || '; counts the client ids past the window''s budget')
                      ELSE p_detail END,
                 clock_timestamp(), v_owner);
END $$;
