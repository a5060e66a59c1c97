-- 007: bearer tokens of the HTTP API, and the per-token throttle of failed claims.

-- A token is shown once, at creation; only its SHA-256 is kept. `id` is the
-- public handle used to revoke it (it is also the token's own prefix).
CREATE TABLE api_tokens (
    id          text PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('owner', 'vendor', 'admin')),
    -- the owner or vendor name the token speaks for; none for an administrator
    subject     text CHECK (length(subject) BETWEEN 1 AND 128),
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'admin') = (subject IS NULL))
);

-- Failed claim attempts per token in a window that opens at the first failure.
-- Kept in the database so that every API process counts against one limit.
CREATE TABLE api_claim_throttle (
    token_id      text PRIMARY KEY REFERENCES api_tokens (id) ON DELETE CASCADE,
    window_start  timestamptz NOT NULL,
    failures      integer NOT NULL CHECK (failures >= 0)
);
