-- Approve: identifiers join a model's approval list (state 'approved'), each audited.
-- The window rule decides whether the activation window opens now (a model without a
-- claim step) or at the claim. (canonical, look-alike) pairs arrive as two arrays; an
-- identifier approved before is left as it is and counted in `already`. An import into
-- the model in progress (bulk_approve.sql) is waited for, up to 5 s (then
-- lock_not_available); identifiers are inserted in order, so that two approvals of
-- one list, each waiting for a row the other inserted and has not committed, cannot
-- deadlock.
CREATE OR REPLACE FUNCTION bridge_approve(
    p_model_id     bigint,
    p_identifiers  text[],
    p_lookalikes   text[],
    p_actor        text,
    p_reason       text
) RETURNS TABLE (added integer, already integer)
LANGUAGE plpgsql AS $$
DECLARE
    m             models%ROWTYPE;
    v_window      timestamptz;
    v_identifier  text;
    v_lock_wait   text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM bridge_lock_imports(p_model_id, false);
    PERFORM set_config('lock_timeout', v_lock_wait, true);
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    v_window := bridge_window_ends_at(m.claim_required, false, m.window_seconds);
    added := 0;
    FOR v_identifier IN
        INSERT INTO devices (model_id, identifier, lookalike, window_ends_at)
        SELECT m.id, i.identifier, i.lookalike, v_window
          FROM unnest(p_identifiers, p_lookalikes) AS i (identifier, lookalike)
         ORDER BY i.identifier
        ON CONFLICT (model_id, identifier) DO NOTHING
        RETURNING devices.identifier
    LOOP
        PERFORM bridge_audit_transition('approve', 'ok', p_actor, m.vendor, m.model,
                                        v_identifier, NULL, NULL, p_reason);
        added := added + 1;
    END LOOP;
    already := (SELECT count(DISTINCT i) FROM unnest(p_identifiers) AS i)::integer - added;
    RETURN NEXT;
END $$;
