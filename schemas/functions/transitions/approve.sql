-- Approve: identifiers join a model's approval list (state 'approved'), each audited.
-- The window rule decides whether the activation window opens now (a model without a
-- claim step) or at the claim. (canonical, look-alike) pairs arrive as two arrays; an
-- identifier approved before is left as it is and counted in `already`.
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
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    v_window := bridge_window_ends_at(m.claim_required, false, m.window_seconds);
    added := 0;
    FOR v_identifier IN
        INSERT INTO devices (model_id, identifier, lookalike, window_ends_at)
        SELECT m.id, i.identifier, i.lookalike, v_window
          FROM unnest(p_identifiers, p_lookalikes) AS i (identifier, lookalike)
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
