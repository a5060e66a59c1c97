-- Unapprove: identifiers leave a model's approval list, device rows and all. A device
-- in use (claimed, or no longer merely approved) is removed only with p_force; without
-- it, if any is in use, nothing is removed and the refusal is audited for those in use.
-- One row per identifier: those on the list in identifier order, then those not on it
-- (`listed` false) in the order given. `login`: the client id whose broker login held a
-- removed device's key, for the caller to close after commit.
CREATE OR REPLACE FUNCTION bridge_unapprove(
    p_model_id     bigint,
    p_identifiers  text[],
    p_force        boolean,
    p_actor        text,
    p_reason       text
) RETURNS TABLE (identifier text, listed boolean, in_use boolean, removed boolean,
                 owner text, state text, login text)
LANGUAGE plpgsql AS $$
DECLARE
    m          models%ROWTYPE;
    v_locked   devices[];
    v_owners   text[];
    v_in_use   boolean[];
    v_refused  boolean;
    v_started  timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    -- All the devices at once, or none: a batch of activations locks devices in the
    -- order of its client ids (bridge/db/activations.py), so holding some while waiting
    -- for the next could close a cycle with it (PostgreSQL then rolled one back, often
    -- this). While one is busy, this waits holding none (the block's locks go with it),
    -- up to 5 s (then lock_not_available).
    LOOP
        BEGIN
            v_locked := ARRAY(SELECT d FROM devices d
                               WHERE d.model_id = p_model_id
                                 AND d.identifier = ANY(p_identifiers)
                               ORDER BY d.identifier
                                 FOR UPDATE NOWAIT);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF clock_timestamp() > v_started + interval '5 seconds' THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.005 + random() * 0.01);
        END;
    END LOOP;
    -- Names are read after the lock, in a statement of their own (see bridge_lock_device).
    v_owners := ARRAY(SELECT o.name
                        FROM unnest(v_locked) WITH ORDINALITY AS l
                        LEFT JOIN owners o ON o.id = l.owner_id
                       ORDER BY l.ordinality);
    v_in_use := ARRAY(SELECT v_owners[l.ordinality] IS NOT NULL OR l.state <> 'approved'
                        FROM unnest(v_locked) WITH ORDINALITY AS l
                       ORDER BY l.ordinality);
    v_refused := NOT p_force AND true = ANY(v_in_use);
    IF NOT v_refused THEN
        DELETE FROM devices WHERE devices.id IN (SELECT l.id FROM unnest(v_locked) AS l);
    END IF;
    PERFORM bridge_audit_transition(
                'unapprove', CASE WHEN v_refused THEN 'conflict' ELSE 'ok' END, p_actor,
                m.vendor, m.model, l.identifier, v_owners[l.ordinality],
                'was ' || l.state || CASE WHEN p_force THEN ' (forced)' ELSE '' END, p_reason)
       FROM unnest(v_locked) WITH ORDINALITY AS l
      WHERE NOT v_refused OR v_in_use[l.ordinality]
      ORDER BY l.ordinality;
    RETURN QUERY
        SELECT l.identifier, true, v_in_use[l.ordinality], NOT v_refused,
               v_owners[l.ordinality], l.state, CASE WHEN NOT v_refused THEN l.client_id END
          FROM unnest(v_locked) WITH ORDINALITY AS l
         ORDER BY l.ordinality;
    RETURN QUERY
        SELECT g.identifier, false, false, false, NULL::text, NULL::text, NULL::text
          FROM unnest(p_identifiers) WITH ORDINALITY AS g (identifier, n)
         WHERE g.identifier <> ALL (ARRAY(SELECT l.identifier FROM unnest(v_locked) AS l))
         GROUP BY g.identifier
         ORDER BY min(g.n);
END $$;
