-- Release: the owner gives the device up. Their claim closes, the key and the stored
-- replies are gone, and the device goes back to what approval gave it (the window
-- rule: an open window for a model without a claim step; the others wait for the next
-- owner's claim). A device its vendor revoked stays revoked: releasing and claiming it
-- again must not undo the vendor's decision.
-- status: ok, not_approved, not_claimed or not_owner. The audit row names p_owner, the
-- owner the release is asked for (for 'ok': the previous owner, whose history shows it).
-- `login`: the client id whose broker login held the key, for the caller to close.
CREATE OR REPLACE FUNCTION bridge_release(
    p_model_id    bigint,
    p_identifier  text,
    p_owner       text,
    p_actor       text,
    p_reason      text
) RETURNS TABLE (status text, owner text, state text, window_ends_at timestamptz,
                 login text)
LANGUAGE plpgsql AS $$
DECLARE
    m                 models%ROWTYPE;
    d                 record;
    v_vendor_revoked  boolean;
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    SELECT * INTO d FROM bridge_lock_device(p_model_id, p_identifier);
    IF NOT FOUND THEN
        status := 'not_approved';
    ELSIF d.owner IS NULL THEN
        status := 'not_claimed';
    ELSIF d.owner <> p_owner THEN
        status := 'not_owner';
    ELSE
        status := 'ok';
        PERFORM bridge_close_claim(d.id, p_actor);
        v_vendor_revoked := bridge_vendor_revoked(d.state, d.revoked_by);
        UPDATE devices
           SET owner_id = NULL, key_id = NULL, key_hash = NULL, activated_at = NULL,
               updated_at = now(),
               state = CASE WHEN v_vendor_revoked THEN 'revoked' ELSE 'approved' END,
               revoked_by = CASE WHEN v_vendor_revoked THEN devices.revoked_by END,
               window_ends_at = CASE WHEN v_vendor_revoked THEN NULL
                   ELSE bridge_window_ends_at(m.claim_required, false, m.window_seconds) END
         WHERE devices.id = d.id;
        DELETE FROM replies WHERE replies.device_id = d.id;
    END IF;
    PERFORM bridge_audit_transition(
        'release', status, p_actor, m.vendor, m.model, p_identifier, p_owner,
        CASE WHEN status = 'ok' OR d.id IS NULL THEN NULL
             WHEN d.owner IS NOT NULL THEN 'held by ' || d.owner
             ELSE 'not claimed' END,
        p_reason);
    owner := d.owner;
    state := d.state;
    login := d.client_id;
    RETURN NEXT;
END $$;
