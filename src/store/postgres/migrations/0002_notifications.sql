-- liveuser schema version 2: a notification channel that only liveuser's role can name,
-- and every revocation notified, whoever makes it.
--
-- Any role of the server may LISTEN or NOTIFY on any channel whose name it knows, with no
-- grant at all. The channel was `liveuser:<schema>`, which anyone who saw the schema's
-- name knew, and which PostgreSQL could not notify on at all for a schema name of 55
-- bytes or more (LISTEN truncated it, pg_notify refused it). It is now a random name,
-- fixed in length, kept in a secret_ table: a role that may not read secret_channel
-- cannot learn it, so it can neither hear which sessions are revoked nor make the
-- instances drop their caches. The name is nowhere else — not in a function body (every
-- role reads pg_proc), not in a statement text (it is always a parameter).
--
-- gen_random_uuid() draws from the server's strong random source; 122 of its bits are
-- random.

CREATE TABLE secret_channel (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    name     text NOT NULL CHECK (name ~ '^liveuser_[0-9a-f]{32}$')
);
INSERT INTO secret_channel (name) VALUES ('liveuser_' || replace(gen_random_uuid()::text, '-', ''));

-- A session revoked, cut short, moved or deleted by any means — liveuser's own
-- statements, an import, or an operator's UPDATE, DELETE or TRUNCATE in psql — is
-- notified by these triggers within the changing statement's transaction, so every
-- instance drops its cached copy when it commits. The UPDATE trigger lists only columns
-- that a renewal never sets, so a renewal does not even consider it: a notification in
-- every renewal would serialise their commits (listen.rs says why). A deleted row that was
-- revoked was notified when it was revoked. The channel is read at each firing from the
-- changed table's own schema, so its name is in no function body and the caller's
-- search_path does not matter; the function runs with the caller's rights, so a role
-- that may change sessions but not read secret_channel has its change refused rather
-- than left unannounced.

CREATE FUNCTION liveuser_sessions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- "<table oid> <channel>", kept for the rest of the transaction: a statement that
    -- revokes many sessions looks the channel up once, not once per row (25 µs each).
    known text := current_setting('liveuser.channel', true);
    channel text;
BEGIN
    IF split_part(known, ' ', 1) = TG_RELID::text THEN
        channel := split_part(known, ' ', 2);
    ELSE
        EXECUTE format('SELECT name FROM %I.secret_channel', TG_TABLE_SCHEMA) INTO STRICT channel;
        PERFORM set_config('liveuser.channel', TG_RELID::text || ' ' || channel, true);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify(channel, 's' || encode(OLD.sid, 'hex'));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(channel, 's' || encode(sid, 'hex')) FROM gone WHERE NOT revoked;
    ELSE
        PERFORM pg_notify(channel, '*');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_changed
    AFTER UPDATE OF sid, uid, expires_at, revoked ON sessions
    FOR EACH ROW
    WHEN (OLD.revoked IS DISTINCT FROM NEW.revoked OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.uid IS DISTINCT FROM NEW.uid OR OLD.sid IS DISTINCT FROM NEW.sid)
    EXECUTE FUNCTION liveuser_sessions_notify();

CREATE TRIGGER sessions_deleted
    AFTER DELETE ON sessions REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION liveuser_sessions_notify();

CREATE TRIGGER sessions_truncated
    AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION liveuser_sessions_notify();
