-- Revoke: the key stops being valid now (key and stored replies gone, no window);
-- activation answers 'revoked' until re-enabled. p_by (owner, vendor or admin) is kept
-- in revoked_by: only a vendor or an administrator undoes a revoke that was not an
-- owner's. A device of a model that waits for claims cannot be revoked before one.
-- status: ok, not_approved, not_claimed or already_revoked (audited as 'conflict').
-- `login`: the client id whose broker login held the key, for the caller to close.
CREATE OR REPLACE FUNCTION bridge_revoke(
    p_model_id    bigint,
    p_identifier  text,
    p_by          text,
    p_actor       text,
    p_reason      text
) RETURNS TABLE (status text, owner text, state text, window_ends_at timestamptz,
                 login text)
LANGUAGE plpgsql AS $$
DECLARE
    m  models%ROWTYPE;
    d  record;
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    SELECT * INTO d FROM bridge_lock_device(p_model_id, p_identifier);
    IF NOT FOUND THEN
        status := 'not_approved';
    ELSIF d.state = 'revoked' THEN
        status := 'already_revoked';
    ELSIF d.owner IS NULL AND m.claim_required THEN
        status := 'not_claimed';
    ELSE
        status := 'ok';
        UPDATE devices
           SET state = 'revoked', key_id = NULL, key_hash = NULL, window_ends_at = NULL,
               updated_at = now(), revoked_by = p_by
         WHERE devices.id = d.id;
        DELETE FROM replies WHERE replies.device_id = d.id;
    END IF;
    PERFORM bridge_audit_transition(
        'revoke', CASE WHEN status = 'already_revoked' THEN 'conflict' ELSE status END,
        p_actor, m.vendor, m.model, p_identifier, d.owner,
        'was ' || d.state || ', by ' || p_by, p_reason);
    owner := d.owner;
    state := d.state;
    login := d.client_id;
    RETURN NEXT;
END $$;
