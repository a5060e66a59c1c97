-- Claim: an owner adds an approved device to their account. The device row lock makes
-- one of two racing owners win; the other is told the device is claimed by another.
-- The claim opens the activation window (the window rule) of a device that waited for
-- it; a device in another state (say, revoked by its vendor) keeps its state.
-- status: ok, already_yours, not_approved or claimed_by_other.
CREATE OR REPLACE FUNCTION bridge_claim(
    p_model_id    bigint,
    p_identifier  text,
    p_owner       text,
    p_actor       text,
    p_reason      text
) RETURNS TABLE (status text, window_ends_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    m           models%ROWTYPE;
    d           record;
    v_owner_id  bigint;
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    SELECT * INTO d FROM bridge_lock_device(p_model_id, p_identifier);
    IF NOT FOUND THEN
        status := 'not_approved';
    ELSIF d.owner IS NOT NULL THEN
        status := CASE WHEN d.owner = p_owner THEN 'already_yours' ELSE 'claimed_by_other' END;
        window_ends_at := d.window_ends_at;
    ELSE
        status := 'ok';
        v_owner_id := bridge_owner_id(p_owner);
        UPDATE devices
           SET owner_id = v_owner_id,
               state = CASE WHEN devices.state = 'approved' THEN 'claimed' ELSE devices.state END,
               window_ends_at = CASE WHEN devices.state = 'approved'
                   THEN bridge_window_ends_at(m.claim_required, true, m.window_seconds)
                   ELSE devices.window_ends_at END,
               updated_at = now()
         WHERE devices.id = d.id
        RETURNING devices.window_ends_at INTO window_ends_at;
        INSERT INTO claims (device_id, owner_id) VALUES (d.id, v_owner_id);
    END IF;
    PERFORM bridge_audit_transition(
        'claim', CASE WHEN status = 'already_yours' THEN 'ok' ELSE status END, p_actor,
        m.vendor, m.model, p_identifier, p_owner,
        'owner=' || p_owner || CASE WHEN status = 'already_yours' THEN ' (already theirs)'
                                    ELSE '' END,
        p_reason);
    RETURN NEXT;
END $$;
