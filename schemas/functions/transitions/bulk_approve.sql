-- Bulk approve: a file of identifiers, in one transaction, batch by batch.
--
-- bridge_bulk_approve_begin opens the import: imports into one model take turns (an
-- advisory lock), so two overlapping files cannot deadlock on each other's rows; the
-- temporary tables live until the transaction ends. The caller then streams each
-- batch of (canonical, look-alike) pairs into approve_staging with COPY and calls
-- bridge_bulk_approve, which approves and audits the batch in one statement.

-- The turns of a model's imports (p_import) and approvals (approve.sql), which share
-- them and so do not wait for each other. Each batch of an import is sorted, but a
-- later batch may hold smaller identifiers than an earlier one: an approval beside an
-- import could hold a row the import waits for while waiting for one the import
-- inserted, and PostgreSQL broke the deadlock by rolling one back, often the import.
CREATE OR REPLACE FUNCTION bridge_lock_imports(p_model_id bigint, p_import boolean)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key integer := (p_model_id % 2147483647)::integer;
BEGIN
    IF p_import THEN
        PERFORM pg_advisory_xact_lock(x'62726964'::integer, v_key);  -- "brid"
    ELSE
        PERFORM pg_advisory_xact_lock_shared(x'62726964'::integer, v_key);
    END IF;
END $$;

-- A second import into the model waits for the first up to 5 s, then fails with
-- lock_not_available: the caller says an import is in progress, where a longer wait
-- ran into the driver's timeout and read as "the database cannot be reached".
CREATE OR REPLACE FUNCTION bridge_bulk_approve_begin(p_model_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_lock_wait text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM bridge_lock_imports(p_model_id, true);
    PERFORM set_config('lock_timeout', v_lock_wait, true);
    CREATE TEMPORARY TABLE approve_staging
        (identifier text NOT NULL, lookalike text NOT NULL) ON COMMIT DROP;
    -- What this import has given before: a duplicate costs the database's disk rather
    -- than the importer's memory.
    CREATE TEMPORARY TABLE approve_seen
        (identifier text PRIMARY KEY, lookalike text NOT NULL) ON COMMIT DROP;
END $$;

-- One batch: first what this import has not given before ("fresh"), then of those what
-- is new to the model. Each step goes through a unique index (ON CONFLICT), never a join
-- the planner could turn quadratic on tables that grow inside the transaction. The
-- window rule is the one approve follows. A dry run writes nothing to devices: of the
-- fresh values, it counts those the model does not have yet (one index probe each).
-- Returns how many were fresh and how many were added.
CREATE OR REPLACE FUNCTION bridge_bulk_approve(
    p_model_id  bigint,
    p_actor     text,
    p_detail    text,
    p_reason    text,
    p_dry_run   boolean
) RETURNS TABLE (fresh bigint, added bigint)
LANGUAGE plpgsql AS $$
DECLARE
    m         models%ROWTYPE;
    v_window  timestamptz;
BEGIN
    SELECT * INTO m FROM models WHERE models.id = p_model_id;
    v_window := bridge_window_ends_at(m.claim_required, false, m.window_seconds);
    IF p_dry_run THEN
        WITH f AS (
            INSERT INTO approve_seen (identifier, lookalike)
            SELECT DISTINCT ON (s.identifier) s.identifier, s.lookalike
              FROM approve_staging s ORDER BY s.identifier
            ON CONFLICT DO NOTHING
            RETURNING approve_seen.identifier)
        SELECT (SELECT count(*) FROM f),
               (SELECT count(*) FROM f
                 WHERE NOT EXISTS (SELECT FROM devices d
                                    WHERE d.model_id = m.id AND d.identifier = f.identifier))
          INTO fresh, added;
    ELSE
        -- Sorted, so that rows are locked in one order. The audit rows are written set
        -- by set (a file may hold millions), with the columns bridge_audit_transition
        -- writes.
        WITH f AS (
            INSERT INTO approve_seen (identifier, lookalike)
            SELECT DISTINCT ON (s.identifier) s.identifier, s.lookalike
              FROM approve_staging s ORDER BY s.identifier
            ON CONFLICT DO NOTHING
            RETURNING approve_seen.identifier, approve_seen.lookalike),
        a AS (
            INSERT INTO devices (model_id, identifier, lookalike, window_ends_at)
            SELECT m.id, f.identifier, f.lookalike, v_window
              FROM f
             ORDER BY f.identifier
            ON CONFLICT (model_id, identifier) DO NOTHING
            RETURNING devices.identifier),
        audited AS (
            INSERT INTO audit_log (action, code, actor, vendor, model, identifier, detail)
            SELECT 'approve', 'ok', p_actor, m.vendor, m.model, a.identifier,
                   bridge_audit_detail(p_detail, p_reason)
              FROM a)
        SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM a) INTO fresh, added;
    END IF;
    TRUNCATE approve_staging;
    RETURN NEXT;
END $$;
