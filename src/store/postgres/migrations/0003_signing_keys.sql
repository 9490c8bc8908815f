-- liveuser schema version 3: generated signing keys as typed records with a schedule.
--
-- A key is standby before signs_at (published in the JWKS, it verifies nothing yet),
-- signs until a later key's signs_at, then only verifies until retires_at, set by the
-- rotation that replaced it. Every instance reads the same rows and switches at the same
-- signs_at, whichever instance or command made the rotation. The private part is a
-- PKCS#8 document (ES256) or the HMAC secret (HS256): this is a secret_ table, like
-- secret_keys, so that no SELECT * of the other tables shows one.
--
-- A database that signed with a generated HS256 key (secret_keys 'signing_key') keeps
-- that key: the first start of this version copies it here, as the key that signs.

CREATE TABLE secret_signing_keys (
    kid         text COLLATE "C" PRIMARY KEY CHECK (kid ~ '^[0-9a-f]{16}$'),
    algorithm   text NOT NULL CHECK (algorithm IN ('ES256', 'HS256')),
    private_key bytea NOT NULL CHECK (octet_length(private_key) > 0),
    created_at  bigint NOT NULL,
    signs_at    bigint NOT NULL,
    retires_at  bigint CHECK (retires_at > signs_at)
);
