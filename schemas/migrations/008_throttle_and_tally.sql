-- 008: a throttle that protects devices instead of locking them out, and device
-- failures that cannot grow the database without bound (issues 12 and 13).
--
-- The order of the activation's decision: schemas/functions/transitions/activate.sql.

-- Counters per model, and the tally budget (tally rows opened per code and window).
ALTER TABLE attempt_counters DROP CONSTRAINT attempt_counters_scope_check;
ALTER TABLE attempt_counters ADD CONSTRAINT attempt_counters_scope_check
    CHECK (scope IN ('client', 'identifier', 'model', 'tally'));

-- A tallied row (last_at set) stands for 1 + repeats attempts, the first at `at`, the
-- last at `last_at`. Both columns are metadata-only additions (no table rewrite).
ALTER TABLE audit_log ADD COLUMN repeats integer NOT NULL DEFAULT 0,
                      ADD COLUMN last_at timestamptz;
-- Room on each new page for the repeat updates of tallied rows, so they stay
-- heap-only (no new index entries) and are pruned in place.
ALTER TABLE audit_log SET (fillfactor = 90);

-- The append-only guard that lets a tally count: schemas/functions/audit_log.sql.

-- "Is this client id another device's broker login?" is asked on every activation.
CREATE INDEX devices_client_id ON devices (client_id) WHERE client_id IS NOT NULL;

-- The functions (activation, throttle, tally): schemas/functions/transitions/activate.sql,
-- throttle.sql and tally.sql.
