-- What every device transition shares: locking the device row, the activation window
-- rule, who revoked, claims and owners, and the audit row. Current definitions: migrate
-- applies this file again whenever its text changes (see schemas/README.md).
--
-- One file a transition, named after it; each function decides, changes the rows and
-- writes the audit row in one call (one round trip, one transaction). A change of a
-- function's arguments or result columns adds, in the same file, a DROP FUNCTION IF
-- EXISTS of the old signature: CREATE OR REPLACE would otherwise keep the old one
-- beside the new (another arity) or refuse (other columns).

-- Lock one device row, and read its owner's name. The name is read in a statement of
-- its own, after the lock: under READ COMMITTED a join in the locking statement would
-- use the snapshot taken before waiting for the lock, and miss an owner row inserted by
-- the transaction we waited for (the device would look unclaimed). No row: not approved.
CREATE OR REPLACE FUNCTION bridge_lock_device(p_model_id bigint, p_identifier text)
RETURNS TABLE (id bigint, state text, owner_id bigint, owner text,
               window_ends_at timestamptz, client_id text, revoked_by text)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT d.id, d.state, d.owner_id, d.window_ends_at, d.client_id, d.revoked_by
      INTO id, state, owner_id, window_ends_at, client_id, revoked_by
      FROM devices d
     WHERE d.model_id = p_model_id AND d.identifier = p_identifier
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    owner := (SELECT o.name FROM owners o WHERE o.id = owner_id);
    RETURN NEXT;
END $$;

-- The activation window rule, the one place it is written: a window opens once the
-- device has an owner, or already at approval when the model needs no claim. NULL: no
-- window opens (the device waits for a claim).
CREATE OR REPLACE FUNCTION bridge_window_ends_at(p_claim_required boolean, p_owned boolean,
                                                 p_seconds integer)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_owned OR NOT p_claim_required
                THEN now() + make_interval(secs => p_seconds) END
$$;

-- Revoked by its vendor or an administrator: only they undo it, never the owner (by
-- re-enabling, or by releasing and claiming again). A revoke recorded before 010
-- (revoked_by NULL) came from a vendor or the command line.
CREATE OR REPLACE FUNCTION bridge_vendor_revoked(p_state text, p_revoked_by text)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_state = 'revoked' AND p_revoked_by IS DISTINCT FROM 'owner'
$$;

-- The owner's row, made on first use.
CREATE OR REPLACE FUNCTION bridge_owner_id(p_name text) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO owners (name) VALUES (p_name)
    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
    RETURNING id
$$;

-- The chain of ownership: the device's open claim ends (release, transfer).
CREATE OR REPLACE FUNCTION bridge_close_claim(p_device_id bigint, p_actor text) RETURNS void
LANGUAGE sql AS $$
    UPDATE claims SET released_at = now(), released_by = p_actor
     WHERE device_id = p_device_id AND released_at IS NULL
$$;

-- The audit row of a transition. A reason given by the person who asked (say, a
-- support desk) is kept in the detail, after what the transition itself says.
CREATE OR REPLACE FUNCTION bridge_audit_detail(p_detail text, p_reason text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT nullif(concat_ws('; ', p_detail, 'reason: ' || p_reason), '')
$$;

CREATE OR REPLACE FUNCTION bridge_audit_transition(
    p_action      text,
    p_code        text,
    p_actor       text,
    p_vendor      text,
    p_model       text,
    p_identifier  text,
    p_owner       text,
    p_detail      text,
    p_reason      text
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO audit_log (action, code, actor, vendor, model, identifier, owner, detail)
    VALUES (p_action, p_code, p_actor, p_vendor, p_model, p_identifier, p_owner,
            bridge_audit_detail(p_detail, p_reason))
$$;
