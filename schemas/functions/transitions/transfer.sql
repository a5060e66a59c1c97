-- Transfer: an administrator moves a claimed device to another owner; the chain of
-- ownership gets a new link. The previous owner's key is revoked with it (the key is
-- the device's identity, and the previous owner may hold a copy): the new owner's
-- activation window opens (the window rule), and the device activates again for a new
-- key. A revoked device stays revoked.
-- `p_from`, when given, is the holder the caller saw (the support desk diagnosed, then
-- acts): if the device changed hands meanwhile the transfer is refused (not_owner) rather
-- than taking it from someone the caller never saw.
-- status: ok, not_approved, not_claimed, not_owner or already_theirs. `owner`: the previous
-- owner; `login`: the client id whose broker login held the key, for the caller to close.
DROP FUNCTION IF EXISTS bridge_transfer(bigint, text, text, text, text);
CREATE OR REPLACE FUNCTION bridge_transfer(
    p_model_id    bigint,
    p_identifier  text,
    p_to          text,
    p_actor       text,
    p_reason      text,
    p_from        text
) RETURNS TABLE (status text, owner text, state text, window_ends_at timestamptz,
                 login text)
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
    ELSIF d.owner IS NULL THEN
        status := 'not_claimed';
    ELSIF p_from IS NOT NULL AND d.owner <> p_from THEN
        status := 'not_owner';
    ELSIF d.owner = p_to THEN
        status := 'already_theirs';
    ELSE
        status := 'ok';
        PERFORM bridge_close_claim(d.id, p_actor);
        v_owner_id := bridge_owner_id(p_to);
        UPDATE devices
           SET owner_id = v_owner_id, key_id = NULL, key_hash = NULL, activated_at = NULL,
               updated_at = now(),
               state = CASE WHEN devices.state = 'revoked' THEN 'revoked' ELSE 'claimed' END,
               window_ends_at = CASE WHEN devices.state = 'revoked' THEN NULL
                   ELSE bridge_window_ends_at(m.claim_required, true, m.window_seconds) END
         WHERE devices.id = d.id
        RETURNING devices.window_ends_at INTO window_ends_at;
        INSERT INTO claims (device_id, owner_id) VALUES (d.id, v_owner_id);
        DELETE FROM replies WHERE replies.device_id = d.id;
    END IF;
    PERFORM bridge_audit_transition(
        'transfer', CASE WHEN status = 'already_theirs' THEN 'conflict' ELSE status END,
        p_actor, m.vendor, m.model, p_identifier, p_to, 'from ' || d.owner, p_reason);
    owner := d.owner;
    state := d.state;
    login := d.client_id;
    RETURN NEXT;
END $$;
