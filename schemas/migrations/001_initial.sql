-- 001: models, the approval list and device state, owners and claims,
-- encrypted replies for idempotent retry, and the append-only audit log.

CREATE TABLE models (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vendor          text NOT NULL CHECK (length(vendor) BETWEEN 1 AND 64),
    model           text NOT NULL CHECK (length(model) BETWEEN 1 AND 64),
    kind            text NOT NULL CHECK (kind IN ('mac', 'imei', 'meid', 'esn', 'serial')),
    pattern         text,
    window_seconds  integer NOT NULL DEFAULT 86400 CHECK (window_seconds > 0),
    claim_required  boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vendor, model)
);

CREATE TABLE owners (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per approved identifier: the approval list and the device's current state.
CREATE TABLE devices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id        bigint NOT NULL REFERENCES models (id),
    identifier      text NOT NULL,       -- canonical form only
    lookalike       text NOT NULL,       -- look-alike characters folded: "did you mean"
    state           text NOT NULL DEFAULT 'approved'
                    CHECK (state IN ('approved', 'claimed', 'activated', 'revoked')),
    owner_id        bigint REFERENCES owners (id),
    window_ends_at  timestamptz,         -- the open activation window, if any
    key_id          text,                -- which server secret hashed the key
    key_hash        bytea,               -- HMAC-SHA256 of the key; never the key
    activated_at    timestamptz,
    approved_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, identifier)
);
-- An equality lookup keeps "did you mean" an index probe even at 10M approved numbers.
CREATE INDEX devices_lookalike ON devices (model_id, lookalike);
CREATE INDEX devices_owner ON devices (owner_id) WHERE owner_id IS NOT NULL;

-- The chain of ownership: one row per claim, closed by release or transfer.
CREATE TABLE claims (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id    bigint NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    owner_id     bigint NOT NULL REFERENCES owners (id),
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz,
    released_by  text
);
CREATE UNIQUE INDEX claims_one_open ON claims (device_id) WHERE released_at IS NULL;

-- Successful replies kept for idempotent retry, encrypted under the server secret.
CREATE TABLE replies (
    client_id     text NOT NULL,
    request_id    text NOT NULL,
    device_id     bigint NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    sealed_reply  bytea NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (client_id, request_id)
);
CREATE INDEX replies_expiry ON replies (expires_at);
CREATE INDEX replies_device ON replies (device_id);

-- Every activation attempt and administrative action. Never a key.
CREATE TABLE audit_log (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                    timestamptz NOT NULL DEFAULT clock_timestamp(),
    action                text NOT NULL,
    actor                 text,
    client_id             text,
    request_id            text,
    vendor                text,
    model                 text,
    identifier_presented  text,
    identifier            text,
    code                  text NOT NULL,
    detail                text
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_identifier ON audit_log (identifier, at DESC);
CREATE INDEX audit_log_client ON audit_log (client_id, at DESC);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

-- The whole activation decision in one round trip and one transaction.
-- The device row is locked first, so concurrent requests for one identifier
-- (from any replica) are decided one after another: exactly one gets 'ok'.
-- The replay check comes after the lock, so it sees a reply committed by the
-- request that held the lock before us.
CREATE FUNCTION bridge_activate(
    p_client_id   text,
    p_request_id  text,
    p_model_id    bigint,
    p_identifier  text,
    p_presented   text,
    p_key_id      text,
    p_key_hash    bytea,
    p_reply       bytea,
    p_grace       integer
) RETURNS TABLE (code text, replay bytea, window_ends_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    d       devices%ROWTYPE;
    m       models%ROWTYPE;
    v_code  text;
    v_replay bytea;
BEGIN
    SELECT * INTO m FROM models WHERE id = p_model_id;
    SELECT * INTO d FROM devices
        WHERE model_id = p_model_id AND identifier = p_identifier FOR UPDATE;
    IF NOT FOUND THEN
        v_code := 'not_approved';
    ELSE
        SELECT r.sealed_reply INTO v_replay FROM replies r
            WHERE r.client_id = p_client_id AND r.request_id = p_request_id
              AND r.device_id = d.id AND r.expires_at > now();
        IF FOUND THEN
            v_code := 'ok';
        ELSIF d.state = 'revoked' THEN
            v_code := 'revoked';
        ELSIF d.state = 'activated' THEN
            v_code := 'already_activated';
        ELSIF d.state = 'approved' AND m.claim_required THEN
            v_code := 'not_claimed';
        ELSIF d.window_ends_at IS NOT NULL AND d.window_ends_at <= now() THEN
            v_code := 'window_expired';
        ELSE
            v_code := 'ok';
            UPDATE devices SET state = 'activated', key_id = p_key_id, key_hash = p_key_hash,
                   activated_at = now(), window_ends_at = NULL, updated_at = now()
             WHERE id = d.id;
            INSERT INTO replies (client_id, request_id, device_id, sealed_reply, expires_at)
                 VALUES (p_client_id, p_request_id, d.id, p_reply,
                         now() + make_interval(secs => p_grace))
            ON CONFLICT ON CONSTRAINT replies_pkey DO UPDATE
                SET device_id = EXCLUDED.device_id, sealed_reply = EXCLUDED.sealed_reply,
                    expires_at = EXCLUDED.expires_at;
        END IF;
    END IF;
    INSERT INTO audit_log (action, actor, client_id, request_id, vendor, model,
                           identifier_presented, identifier, code, detail)
         VALUES ('activate', 'device', p_client_id, p_request_id, m.vendor, m.model,
                 p_presented, p_identifier, v_code,
                 CASE WHEN v_replay IS NOT NULL THEN 'replayed the stored reply' END);
    RETURN QUERY SELECT v_code, v_replay, d.window_ends_at;
END $$;
