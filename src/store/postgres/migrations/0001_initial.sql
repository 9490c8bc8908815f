-- liveuser schema version 1: users, WeChat identities, sessions, keys.
--
-- Times are Unix seconds (bigint) unless the column says _ms. Identifiers that liveuser
-- pages through (uid, openid) use the "C" collation, so their order is byte order, the
-- same order the sled backend lists them in.
--
-- Sensitive columns live in tables whose names start with secret_, so that no
-- `SELECT * FROM users`, identities or sessions ever shows one:
--   secret_wechat_session_keys.session_key   WeChat's session_key of an identity
--   secret_keys.key                          signing and refresh-derivation keys
--   secret_retired_keys.key                  signing keys kept until they retire
-- sessions.current_hash / previous_hash are SHA-256 hashes of refresh tokens: not
-- tokens, but what the database needs to accept one (as sensitive as the database
-- itself, like an export with --sessions).

CREATE TABLE users (
    uid       text COLLATE "C" PRIMARY KEY
              CONSTRAINT users_uid_format CHECK (uid ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name      text NOT NULL DEFAULT '' CHECK (char_length(name) <= 64),
    agent     text NOT NULL DEFAULT '' CHECK (char_length(agent) <= 64),
    avatar    text NOT NULL DEFAULT '' CHECK (char_length(avatar) <= 1024),
    update_at bigint NOT NULL CHECK (update_at >= 0)
) WITH (fillfactor = 90);

-- openid → uid. A user's record exists before (or with) its identity.
CREATE TABLE identities (
    openid  text COLLATE "C" PRIMARY KEY CHECK (openid <> '' AND char_length(openid) <= 128),
    uid     text COLLATE "C" NOT NULL REFERENCES users (uid),
    unionid text CHECK (char_length(unionid) <= 128)
);
CREATE INDEX identities_uid ON identities (uid);

CREATE TABLE secret_wechat_session_keys (
    openid      text COLLATE "C" PRIMARY KEY REFERENCES identities (openid) ON DELETE CASCADE,
    session_key text NOT NULL
);

-- One row per login, the whole state of its refresh-token family: the current token's
-- hash, the one the last rotation retired (for the retry grace) and the generation
-- (older tokens are recognised by it). sid = SHA-256 of the tokens' shared seed, so a
-- token finds its row by hashing. A renewal rewrites the row in place: fillfactor
-- leaves room on the page so the update is a HOT update (no indexed column moves).
CREATE TABLE sessions (
    sid             bytea PRIMARY KEY CHECK (octet_length(sid) = 16),
    uid             text COLLATE "C" NOT NULL REFERENCES users (uid),
    created_at      bigint NOT NULL,
    last_used_at    bigint NOT NULL,
    expires_at      bigint NOT NULL,
    idle_expires_at bigint NOT NULL CHECK (idle_expires_at <= expires_at),
    revoked         boolean NOT NULL DEFAULT false,
    generation      bigint NOT NULL DEFAULT 0 CHECK (generation BETWEEN 0 AND 4294967295),
    current_hash    bytea NOT NULL CHECK (octet_length(current_hash) = 32),
    previous_hash   bytea CHECK (octet_length(previous_hash) = 32),
    rotated_at_ms   bigint,
    -- Login order, for the logins of one user within one second (created_at is seconds).
    login_seq       bigint GENERATED ALWAYS AS IDENTITY,
    CONSTRAINT sessions_previous_complete CHECK ((previous_hash IS NULL) = (rotated_at_ms IS NULL))
) WITH (fillfactor = 70);
-- A user's sessions in creation order: the session cap at login, `session list --uid`.
CREATE INDEX sessions_uid_created ON sessions (uid, created_at, login_seq);

-- Small records about the database itself (e.g. how the servers sign: `generated`, or
-- `configured:<kid>`, never a secret).
CREATE TABLE meta (
    name  text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE secret_keys (
    name text COLLATE "C" PRIMARY KEY,
    key  bytea NOT NULL
);

CREATE TABLE secret_retired_keys (
    name      text COLLATE "C" NOT NULL,
    key       bytea NOT NULL,
    retire_at bigint NOT NULL,
    PRIMARY KEY (name, key)
);
