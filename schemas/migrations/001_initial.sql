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

-- The append-only guard (function and trigger): schemas/functions/audit_log.sql.
-- The activation decision: schemas/functions/transitions/activate.sql.
