-- Re-enable: a new activation window opens (the window rule, for p_window_seconds); the
-- next activation replaces the key. The key hash stays until then: the old key stops
-- being valid at that moment, not before. p_by is who asks (owner, vendor or admin):
-- an owner cannot undo a revoke that was not an owner's.
-- status: ok, not_approved, not_claimed or revoked_by_vendor (audited as 'forbidden').
CREATE OR REPLACE FUNCTION bridge_reenable(
    p_model_id        bigint,
    p_identifier      text,
    p_window_seconds  integer,
    p_by              text,
    p_actor           text,
    p_reason          text
) RETURNS TABLE (status text, owner text, state text, window_ends_at timestamptz,
                 login text)
LANGUAGE plpgsql AS $$
DECLARE
    m         models%ROWTYPE;
    d         record;
    v_window  timestamptz;
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    SELECT * INTO d FROM bridge_lock_device(p_model_id, p_identifier);
    IF FOUND THEN
        v_window := bridge_window_ends_at(m.claim_required, d.owner IS NOT NULL,
                                          p_window_seconds);
    END IF;
    IF d.id IS NULL THEN
        status := 'not_approved';
    ELSIF v_window IS NULL THEN  -- no owner, and the model opens windows at the claim
        status := 'not_claimed';
    ELSIF p_by = 'owner' AND bridge_vendor_revoked(d.state, d.revoked_by) THEN
        status := 'revoked_by_vendor';
    ELSE
        status := 'ok';
        UPDATE devices
           SET state = CASE WHEN d.owner IS NULL THEN 'approved' ELSE 'claimed' END,
               updated_at = now(), revoked_by = NULL, window_ends_at = v_window
         WHERE devices.id = d.id
        RETURNING devices.window_ends_at INTO window_ends_at;
        -- A stored reply would hand the old key to an old request id.
        DELETE FROM replies WHERE replies.device_id = d.id;
    END IF;
    PERFORM bridge_audit_transition(
        'reenable', CASE WHEN status = 'revoked_by_vendor' THEN 'forbidden' ELSE status END,
        p_actor, m.vendor, m.model, p_identifier, d.owner,
        'was ' || d.state || ', window ' || p_window_seconds || 's', p_reason);
    owner := d.owner;
    state := d.state;
    login := d.client_id;
    RETURN NEXT;
END $$;
