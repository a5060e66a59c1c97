-- 010: who revoked a device, so that an owner cannot undo a vendor's revoke (by
-- re-enabling it, or by releasing and claiming it again).
ALTER TABLE devices ADD COLUMN revoked_by text
    CHECK (revoked_by IN ('owner', 'vendor', 'admin'));

-- Every revoke before this migration came from the command line or a vendor's token.
UPDATE devices SET revoked_by = 'vendor' WHERE state = 'revoked';
