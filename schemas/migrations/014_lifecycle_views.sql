-- 014: a number's lifecycle apart from its device attempts. A device's failures are
-- tallied (one row per client id, code and window), yet an attacker sending a victim's
-- number from many client ids writes many rows: read newest first through
-- audit_log_identifier, they hid the approval, the claims and the releases from the
-- support desk, and an owner's history walked every one of them. These two indexes
-- hold everything but device attempts (the successful activation stays: a tallied row,
-- failure or replay, has last_at), so those reads never pass an attempt.

-- A diagnosis's timeline (bridge/db/diagnosis.py, TIMELINE): the predicate is the
-- statement's word for word, so the planner can prove the index applies.
CREATE INDEX audit_log_lifecycle ON audit_log (identifier, at DESC)
    WHERE action <> 'activate' OR (code = 'ok' AND last_at IS NULL);

-- An owner's history (GET /v1/history): claims, releases, transfers, re-enables, revokes.
CREATE INDEX audit_log_owner_lifecycle ON audit_log (owner, at DESC)
    WHERE owner IS NOT NULL AND action <> 'activate';
