-- liveuser schema version 2: a notification channel that only liveuser's role can name.
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
