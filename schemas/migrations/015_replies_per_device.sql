-- 015: a stored reply belongs to its device as well as to (client id, request id).
-- One client id may activate several devices (a gateway, without device logins), and
-- nothing stops it from sending one request id for two of them: keyed by client id and
-- request id alone, the second success overwrote the first's stored reply, and the
-- identical retry of the first was answered 'already_activated' (its key lost). The
-- retry lookups (transitions/activate.sql) already name the device.
ALTER TABLE replies
    DROP CONSTRAINT replies_pkey,
    ADD CONSTRAINT replies_pkey PRIMARY KEY (client_id, request_id, device_id);

-- Where devices get broker logins, the login is opened after the key's commit: a bridge
-- killed in between left an issued key that opened nothing, and a replay cannot open it
-- (a sealed reply is the device's to read). The key, encrypted under the server secret,
-- waits here until its login is open, and is then forgotten; so does the client id whose
-- login held the device's previous key (a re-activation from another client id), which
-- must close.
ALTER TABLE replies ADD COLUMN login_key bytea, ADD COLUMN login_replaces text;
