-- The audit log's guard. Current definitions: migrate applies this file again
-- whenever its text changes (see schemas/README.md).

-- Append-only, except that a tallied row may count more repeats of itself.
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.last_at IS NOT NULL
       AND NEW.repeats > OLD.repeats AND NEW.last_at >= OLD.last_at
       AND to_jsonb(NEW) - 'repeats' - 'last_at' = to_jsonb(OLD) - 'repeats' - 'last_at' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$;

-- The trigger lives beside its function: a trigger cannot be created before the
-- function it calls, and functions are created after every migration has run.
DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

-- Databases built by an earlier version filled an activation entry's owner with a trigger; the
-- entry is now written with its owner (transitions/activate.sql, tally.sql).
DROP TRIGGER IF EXISTS audit_log_owner_of_device ON audit_log;
DROP FUNCTION IF EXISTS audit_log_fill_owner();
