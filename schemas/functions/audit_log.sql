-- The audit log's guards. Current definitions: migrate applies this file again
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

-- Activation entries name the device but not its owner; this fills the owner in.
-- The trigger's WHEN clause keeps bulk approvals (no owner) from paying for the call.
CREATE OR REPLACE FUNCTION audit_log_fill_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT o.name INTO NEW.owner
      FROM models m
      JOIN devices d ON d.model_id = m.id AND d.identifier = NEW.identifier
      JOIN owners o ON o.id = d.owner_id
     WHERE m.vendor = NEW.vendor AND m.model = NEW.model;
    RETURN NEW;
END $$;
