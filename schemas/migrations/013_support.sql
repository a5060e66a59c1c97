-- 013: the support desk. A model's support contact (shown where a refusal is explained),
-- and the indexes that keep a diagnosis a handful of index probes at a large vendor's
-- scale (docs/support.md has the plans).

-- Who an owner reaches about this model ("support@acme.example", a URL, a phone
-- number): free text a vendor sets, shown on the pages and in a diagnosis.
ALTER TABLE models ADD COLUMN support_contact text
    CHECK (length(support_contact) BETWEEN 1 AND 200);

-- A device's chain of ownership in order: "claimed by whom, since when" and "did this
-- owner ever hold it" (claims_one_open holds only the open claim).
CREATE INDEX claims_device ON claims (device_id, claimed_at);

-- Activation attempts whose number could not be read as the model's kind (a serial
-- sent where the model expects a MAC address): they carry no canonical identifier, so
-- audit_log_identifier cannot find them; a diagnosis looks for them per model within a
-- claim's window. Small: failures are tallied (one row per client id, code and hour).
CREATE INDEX audit_log_unreadable ON audit_log (vendor, model, at DESC)
    WHERE action = 'activate' AND identifier IS NULL;
