-- 002: the lifecycle and its history: who owned what in the audit log, and the
-- indexes behind `bridge audit` filters. bridge_activate is left as it is.

-- The owner concerned by an entry (claim, release, transfer, activation of an
-- owned device), so one account's history is one index range.
ALTER TABLE audit_log ADD COLUMN owner text;

-- Only activation entries have a client id: the index of 001 also held one NULL
-- entry per administrative action (a million for a million-row import).
DROP INDEX audit_log_client;
CREATE INDEX audit_log_client ON audit_log (client_id, at DESC) WHERE client_id IS NOT NULL;

CREATE INDEX audit_log_owner ON audit_log (owner, at DESC) WHERE owner IS NOT NULL;
CREATE INDEX audit_log_model ON audit_log (vendor, model, at DESC);
-- Refusals are what support looks for; successful bulk approvals (millions of
-- 'ok' rows) would only make this index big, so it holds everything but 'ok'.
CREATE INDEX audit_log_code ON audit_log (code, at DESC) WHERE code <> 'ok';

-- Activation entries are written by bridge_activate, which knows the device but
-- not its owner's name; this fills it in without changing that function. The
-- WHEN clause keeps bulk approvals (no owner) from paying for the call.
CREATE FUNCTION audit_log_fill_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT o.name INTO NEW.owner
      FROM models m
      JOIN devices d ON d.model_id = m.id AND d.identifier = NEW.identifier
      JOIN owners o ON o.id = d.owner_id
     WHERE m.vendor = NEW.vendor AND m.model = NEW.model;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_owner_of_device BEFORE INSERT ON audit_log
    FOR EACH ROW WHEN (NEW.action = 'activate' AND NEW.owner IS NULL AND NEW.identifier IS NOT NULL)
    EXECUTE FUNCTION audit_log_fill_owner();

-- Keyset paging of `bridge list --owner`: (owner, identifier) in index order.
CREATE INDEX devices_owner_identifier ON devices (model_id, owner_id, identifier)
    WHERE owner_id IS NOT NULL;
