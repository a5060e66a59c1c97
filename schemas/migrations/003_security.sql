-- 003: throttling guessers. Failed activations are counted per client id and per
-- identifier in the database, so the limit holds across bridge replicas and restarts.

-- The client id that activated the device: the username of its broker login (when the
-- bridge gives devices logins), so that revoke and release can disable that login.
ALTER TABLE devices ADD COLUMN client_id text;

-- One fixed window per (scope, subject): `failures` attempts that did not succeed since
-- `window_start`. Rows of closed windows are purged by the bridge's housekeeping.
CREATE TABLE attempt_counters (
    scope         text NOT NULL CHECK (scope IN ('client', 'identifier')),
    subject       text NOT NULL,     -- the client id, or "<model id>/<canonical identifier>"
    window_start  timestamptz NOT NULL,
    failures      integer NOT NULL,
    PRIMARY KEY (scope, subject)
);
CREATE INDEX attempt_counters_window ON attempt_counters (window_start);

-- The throttle's functions: schemas/functions/throttle.sql.
