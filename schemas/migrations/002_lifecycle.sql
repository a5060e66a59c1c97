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

-- Activation entries name the device's owner: schemas/functions/tally.sql and
-- transitions/activate.sql write it (a trigger filled it in before).

-- Keyset paging of `bridge list --owner`: (owner, identifier) in index order.
CREATE INDEX devices_owner_identifier ON devices (model_id, owner_id, identifier)
    WHERE owner_id IS NOT NULL;
