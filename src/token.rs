//! Tokens: access tokens (JWT, ES256 or HS256) and refresh tokens.
//!
//! Access tokens are short-lived JWTs signed by the key of the [`KeyRing`] that signs at
//! that moment; the algorithm is pinned per key (RFC 8725): a token verifies only with
//! the header liveuser writes for its key, so its `alg` must be that key's. `iss`, `aud`
//! and `exp` are checked here against the injected clock; tokens verified once are kept
//! in a bounded cache (`verified`) so the same token is not verified again on every
//! call. Whether the session behind the token is still live is checked by the service,
//! on every call, not here. The ES256 public keys are published as a JWKS
//! ([`AccessTokens::jwks`]); `signing` holds one key's cryptography.
//!
//! A refresh token (format 2) is [`REFRESH_PREFIX`] + base64url of 52 bytes:
//! `F[32] ‖ generation[4, big-endian] ‖ tag[16]`. `F` is drawn from the OS CSPRNG at
//! login and shared by every token of the session; the generation counts rotations; the
//! tag is HMAC-SHA256(refresh key, F ‖ generation) cut to 16 bytes. From a token follow:
//!
//! - its session: `sid = SHA-256(F)[..16]`, so a session is found by hashing the token,
//!   and the database holds only the hash of `F`, never `F`;
//! - its stored form: SHA-256 of the 52 bytes ([`TokenHash`]);
//! - its successor: `(F, generation + 1, tag)`, deterministic, so a retry within the
//!   grace period gets the same successor without anything secret being stored;
//! - whether it is authentic: the tag, which only the refresh key can produce. An
//!   authentic token older than the session's current one is reuse; one at or past the
//!   session's generation that is not its current token was made by no rotation, only by
//!   whoever holds the key (it leaked); a corrupted or invented one is not authentic and
//!   revokes nothing.
//!
//! The refresh key rotates ([`RefreshKeys`]): the current key tags every new token, a
//! login's and a rotation's successor alike, and the keys it replaced verify tags for as
//! long as a session they tagged can live. A token carries no key id: a presented token's
//! tag is compared with each key in force (a handful at most), which only the rare
//! presentations that are not a session's current token need — the current token is
//! recognised by its stored hash, whichever key tagged it, so a rotation changes neither
//! the token format nor what is stored per session.
//!
//! Format-1 tokens (32 random bytes, 43 characters after the prefix, issued before
//! format 2) still parse: `F` is their 32 bytes, their generation 0, and they have no
//! tag; renewing one returns a format-2 successor. Only their SHA-256 is stored.

use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::model::{KeyAlgorithm, Sid, SigningKeyRecord, TokenHash, Uid};
use crate::primitives::{hex, random_bytes, sha256};

mod signing;
mod verified;

use self::signing::SigningKey;
pub(crate) use self::signing::generate as generate_key;
pub use self::signing::{KeyMaterialError, es256_kid, kid_of, kid_of_private};
use self::verified::{Verified, VerifiedTokens};

/// Prefix of every refresh token ("liveuser refresh token").
pub const REFRESH_PREFIX: &str = "lvrt_";

/// Bytes of a format-2 refresh token: seed, generation, tag.
const PAYLOAD_LEN: usize = 32 + 4 + 16;
/// Base64url characters of a format-2 token after the prefix.
const WIRE_LEN: usize = 70;
/// Base64url characters of a format-1 token after the prefix.
const LEGACY_WIRE_LEN: usize = 43;

/// A refresh token in plaintext. Held only in memory, on its way to or from a client.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// `F`: the session's secret seed.
    seed: [u8; 32],
    form: Form,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Format 1: the seed alone, generation 0, no tag.
    Legacy,
    /// Format 2.
    Chained { generation: u32, tag: [u8; 16] },
}

impl RefreshToken {
    /// The first token of a new session: a fresh seed, generation 0.
    pub fn issue(key: &RefreshKey) -> Self {
        Self::chained(random_bytes(), 0, key)
    }

    fn chained(seed: [u8; 32], generation: u32, key: &RefreshKey) -> Self {
        RefreshToken {
            seed,
            form: Form::Chained {
                generation,
                tag: key.tag(&seed, generation),
            },
        }
    }

    /// Parses the wire form (format 2 or format 1); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(REFRESH_PREFIX)?;
        match body.len() {
            WIRE_LEN => {
                let bytes: [u8; PAYLOAD_LEN] =
                    URL_SAFE_NO_PAD.decode(body).ok()?.try_into().ok()?;
                let token = RefreshToken {
                    seed: bytes[..32].try_into().ok()?,
                    form: Form::Chained {
                        generation: u32::from_be_bytes(bytes[32..36].try_into().ok()?),
                        tag: bytes[36..].try_into().ok()?,
                    },
                };
                // Base64 has spare bits in its last character: only the canonical
                // spelling is a token, so one token has exactly one wire form.
                (token.encode() == s).then_some(token)
            }
            LEGACY_WIRE_LEN => {
                let seed: [u8; 32] = URL_SAFE_NO_PAD.decode(body).ok()?.try_into().ok()?;
                let token = RefreshToken {
                    seed,
                    form: Form::Legacy,
                };
                (token.encode() == s).then_some(token)
            }
            _ => None,
        }
    }

    /// The bytes behind the prefix.
    fn payload(&self) -> Vec<u8> {
        match self.form {
            Form::Legacy => self.seed.to_vec(),
            Form::Chained { generation, tag } => {
                let mut out = Vec::with_capacity(PAYLOAD_LEN);
                out.extend_from_slice(&self.seed);
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&tag);
                out
            }
        }
    }

    /// The wire form: prefix + base64url.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(REFRESH_PREFIX.len() + WIRE_LEN);
        s.push_str(REFRESH_PREFIX);
        URL_SAFE_NO_PAD.encode_string(self.payload(), &mut s);
        s
    }

    /// The session the token belongs to: SHA-256 of the seed, cut to 16 bytes.
    pub fn sid(&self) -> Sid {
        let digest = sha256(&self.seed);
        let mut sid = [0u8; 16];
        sid.copy_from_slice(&digest[..16]);
        Sid(sid)
    }

    /// The form in which it is stored: SHA-256 of the token's bytes.
    pub fn hash(&self) -> TokenHash {
        TokenHash(sha256(&self.payload()))
    }

    /// How many rotations led to this token (0 for the first one and for format 1).
    pub fn generation(&self) -> u32 {
        match self.form {
            Form::Legacy => 0,
            Form::Chained { generation, .. } => generation,
        }
    }

    /// The key in force at `now` whose tag the token carries, if any (each compared in
    /// constant time).
    pub fn tagged_by<'k>(&self, keys: &'k RefreshKeys, now: u64) -> Option<&'k RefreshKey> {
        keys.in_force(now).find(|key| self.is_authentic(key))
    }

    /// Whether the tag is the refresh key's (constant time). Format-1 tokens have no tag
    /// and are never authentic: they are recognised only by their stored hash.
    pub fn is_authentic(&self, key: &RefreshKey) -> bool {
        match self.form {
            Form::Legacy => false,
            Form::Chained { generation, tag } => {
                subtle::ConstantTimeEq::ct_eq(&key.tag(&self.seed, generation)[..], &tag[..]).into()
            }
        }
    }

    /// The token that replaces this one on rotation: same seed, next generation, its
    /// tag. `None` once the generation counter is exhausted (four billion rotations).
    pub fn successor(&self, key: &RefreshKey) -> Option<RefreshToken> {
        let next = self.generation().checked_add(1)?;
        Some(Self::chained(self.seed, next, key))
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

/// The key that tags refresh tokens. Separate from the signing key, so rotating the
/// signing key leaves every refresh token valid.
#[derive(Clone)]
pub struct RefreshKey {
    /// HMAC-SHA256 with the key already absorbed, cloned for each tag.
    mac: Hmac<Sha256>,
    id: String,
}

impl fmt::Debug for RefreshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshKey(***)")
    }
}

impl RefreshKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        RefreshKey {
            mac: Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes any key"),
            id: refresh_key_id(&bytes),
        }
    }

    /// The key's id, for operators and logs (see [`refresh_key_id`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256(key, seed ‖ generation), cut to 16 bytes.
    fn tag(&self, seed: &[u8; 32], generation: u32) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(seed);
        mac.update(&generation.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }
}

/// The id of a refresh key: a short hash of it, stable, revealing nothing about the key
/// (and unlike any signing key's kid, which hashes under another label).
pub fn refresh_key_id(key: &[u8]) -> String {
    let mut tagged = b"liveuser-refresh-key:".to_vec();
    tagged.extend_from_slice(key);
    hex(&sha256(&tagged)[..8])
}

/// Most retired refresh keys kept in force beside the current one: a presented token that
/// is not its session's current one is checked against each.
pub const MAX_RETIRED_REFRESH_KEYS: usize = 4;

/// The refresh keys in force: the current key tags; the keys it replaced only verify,
/// each until its retire time.
///
/// A key is retired `token.refresh_ttl_secs` after the rotation that replaced it, the
/// longest a session it tagged can live. Until then a session's older tokens tagged with
/// it are still known as the session's (reuse), and a token made with it by whoever
/// stole it is still recognised as such. Beyond [`MAX_RETIRED_REFRESH_KEYS`] (several
/// rotations within one session lifetime) the ones retiring first are dropped: their
/// sessions renew as before, but an older token of theirs is then refused without
/// revoking.
#[derive(Clone)]
pub struct RefreshKeys {
    current: RefreshKey,
    retired: Vec<(RefreshKey, u64)>,
}

impl fmt::Debug for RefreshKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshKeys")
            .field("current", &self.current.id)
            .field("retired", &self.retired_ids())
            .finish()
    }
}

impl RefreshKeys {
    /// `current` with the keys it replaced and their retire times; keys equal to the
    /// current one or given twice count once, and only the
    /// [`MAX_RETIRED_REFRESH_KEYS`] that retire last are kept.
    pub fn new(current: RefreshKey, retired: Vec<(RefreshKey, u64)>) -> Self {
        let mut retired = retired;
        retired.sort_by_key(|(_, retire_at)| std::cmp::Reverse(*retire_at));
        let mut kept: Vec<(RefreshKey, u64)> = Vec::new();
        for (key, retire_at) in retired {
            if key.id != current.id && !kept.iter().any(|(k, _)| k.id == key.id) {
                kept.push((key, retire_at));
            }
        }
        kept.truncate(MAX_RETIRED_REFRESH_KEYS);
        RefreshKeys {
            current,
            retired: kept,
        }
    }

    /// The key that tags new tokens.
    pub fn current(&self) -> &RefreshKey {
        &self.current
    }

    /// The ids of the retired keys kept, with their retire times, latest first.
    pub fn retired_ids(&self) -> Vec<(String, u64)> {
        self.retired
            .iter()
            .map(|(k, retire_at)| (k.id.clone(), *retire_at))
            .collect()
    }

    /// The keys that verify at `now`: the current one first, then the retired ones not
    /// yet retired.
    pub fn in_force(&self, now: u64) -> impl Iterator<Item = &RefreshKey> {
        std::iter::once(&self.current).chain(
            self.retired
                .iter()
                .filter(move |(_, retire_at)| now < *retire_at)
                .map(|(key, _)| key),
        )
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer (`token.issuer`).
    pub iss: String,
    /// Audience (`token.audience`).
    pub aud: String,
    /// The uid.
    pub sub: String,
    /// The session id, as hex.
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before; liveuser never sets it, but honours it when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why an access token was refused. Callers answer every case with the same
/// `unauthenticated`; the detail is for debug logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenError {
    /// Not a JWT, wrong algorithm, bad signature, unknown key, wrong `iss`/`aud`, bad claims.
    Invalid,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
}

/// A key of the ring with its schedule.
#[derive(Debug)]
struct Scheduled {
    key: SigningKey,
    /// From when it signs (and verifies).
    signs_at: u64,
    /// From when it verifies nothing; until then, only tokens that expire by then.
    retires_at: Option<u64>,
}

impl Scheduled {
    /// Whether it verifies tokens at `now`: it has begun to sign and not yet retired.
    fn verifies_at(&self, now: u64) -> bool {
        self.signs_at <= now && !self.gone_at(now)
    }

    fn gone_at(&self, now: u64) -> bool {
        self.retires_at.is_some_and(|r| now >= r)
    }
}

/// The signing keys in force and their schedule: at any moment one key signs — the last
/// one whose `signs_at` has come — and every key that has signed and not retired
/// verifies; a key whose `signs_at` is still ahead (standby) is published but verifies
/// nothing.
///
/// A replaced key retires one access-token lifetime after its successor began to sign:
/// by then every token it signed has expired. Until then it accepts only tokens that
/// expire before it retires, so a leaked old key cannot mint long-lived tokens either.
#[derive(Debug)]
pub struct KeyRing {
    /// In schedule order: by `signs_at`, a configured secret after the one it replaced.
    keys: Vec<Scheduled>,
}

impl KeyRing {
    /// A ring of one HS256 key, which signs from the start of time.
    pub fn new(secret: &[u8]) -> Self {
        KeyRing {
            keys: vec![Scheduled {
                key: SigningKey::hs256(secret),
                signs_at: 0,
                retires_at: None,
            }],
        }
    }

    /// Adds an HS256 key that verifies (never signs) until `retire_at`: the configured
    /// secret that `token.secret` replaced. A key equal to one of the ring is ignored.
    pub fn with_previous(mut self, secret: &[u8], retire_at: u64) -> Self {
        let key = SigningKey::hs256(secret);
        if !self.keys.iter().any(|k| k.key.kid() == key.kid()) {
            self.keys.insert(
                0,
                Scheduled {
                    key,
                    signs_at: 0,
                    retires_at: Some(retire_at),
                },
            );
        }
        self
    }

    /// The ring of stored keys, in schedule order. A key whose material is unusable (a
    /// corrupt record) is an error, not a key silently left out.
    pub fn from_records(records: &[SigningKeyRecord]) -> Result<Self, KeyMaterialError> {
        let mut records: Vec<&SigningKeyRecord> = records.iter().collect();
        // A key that never retires (the one that signs last) after a retiring one of the
        // same `signs_at`, as a rotation plans them (`keys::plan_rotation`).
        records.sort_by_key(|r| (r.signs_at, r.retires_at.is_none(), r.created_at));
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            keys.push(Scheduled {
                key: SigningKey::from_private(record.algorithm, record.private.expose())?,
                signs_at: record.signs_at,
                retires_at: record.retires_at,
            });
        }
        if keys.is_empty() {
            return Err(KeyMaterialError::Unusable("signing"));
        }
        Ok(KeyRing { keys })
    }

    /// The key that signs at `now`: the last whose time to sign has come (the first key
    /// of the ring if none has, which only a ring made by hand can be).
    fn signer(&self, now: u64) -> &Scheduled {
        self.keys
            .iter()
            .rev()
            .find(|k| k.verifies_at(now))
            .unwrap_or(&self.keys[0])
    }

    /// The kid of the key that signs at `now`.
    pub fn current_kid(&self, now: u64) -> &str {
        self.signer(now).key.kid()
    }

    /// The algorithm of the key that signs at `now`.
    pub fn current_algorithm(&self, now: u64) -> KeyAlgorithm {
        self.signer(now).key.algorithm()
    }

    /// The kids of the keys that verify at `now` but do not sign, with their retire
    /// times, in schedule order.
    pub fn previous_kids(&self, now: u64) -> Vec<(String, u64)> {
        let signer = self.signer(now).key.kid();
        self.keys
            .iter()
            .filter(|k| k.verifies_at(now) && k.key.kid() != signer)
            .map(|k| (k.key.kid().to_string(), k.retires_at.unwrap_or(u64::MAX)))
            .collect()
    }

    /// The kids of the keys published but not yet signing at `now`, with the time each
    /// begins to sign.
    pub fn standby_kids(&self, now: u64) -> Vec<(String, u64)> {
        self.keys
            .iter()
            .filter(|k| now < k.signs_at)
            .map(|k| (k.key.kid().to_string(), k.signs_at))
            .collect()
    }

    /// The key whose tokens start with `header`, if it verifies at `now`.
    fn by_header(&self, header: &str, now: u64) -> Option<&Scheduled> {
        self.keys
            .iter()
            .find(|k| k.key.header() == header && k.verifies_at(now))
    }

    /// The key `kid`, if it verifies at `now`.
    fn by_kid(&self, kid: &str, now: u64) -> Option<&Scheduled> {
        self.keys
            .iter()
            .find(|k| k.key.kid() == kid && k.verifies_at(now))
    }

    /// The JWKS document at `now` — the public keys of the ES256 keys that sign, will
    /// sign or still verify — and until when it holds (the next retirement).
    fn jwks(&self, now: u64) -> Jwks {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter(|k| !k.gone_at(now))
            .filter_map(|k| k.key.public_jwk())
            .collect();
        let valid_until = self
            .keys
            .iter()
            .filter_map(|k| k.retires_at)
            .filter(|&r| r > now)
            .min()
            .unwrap_or(u64::MAX);
        Jwks {
            body: bytes::Bytes::from(serde_json::json!({ "keys": keys }).to_string()),
            valid_until,
        }
    }
}

/// A rendered JWKS document and the moment it goes stale.
#[derive(Debug, Clone)]
struct Jwks {
    body: bytes::Bytes,
    valid_until: u64,
}

/// Issues and verifies access tokens.
///
/// Clones share one [`KeyRing`], one verified-token cache and one JWKS document, so a key
/// rotation through [`AccessTokens::set_keys`] takes effect for every holder at once.
#[derive(Clone)]
pub struct AccessTokens {
    inner: Arc<Shared>,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

struct Shared {
    keys: RwLock<Arc<KeyRing>>,
    verified: VerifiedTokens,
    /// Served to every verifier that fetches the JWKS, so rendered once per change of
    /// the keys (or of their states, at the next retirement).
    jwks: RwLock<Jwks>,
}

impl fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokens")
            .field("keys", &*self.keys())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    /// Tokens signed with the HS256 `secret`, for `issuer` and `audience`, living
    /// `ttl_secs`.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        Self::with_keys(KeyRing::new(secret), issuer, audience, ttl_secs)
    }

    /// Tokens signed and verified with `keys`.
    pub fn with_keys(keys: KeyRing, issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        let jwks = keys.jwks(0);
        AccessTokens {
            inner: Arc::new(Shared {
                keys: RwLock::new(Arc::new(keys)),
                verified: VerifiedTokens::new(verified::CAPACITY),
                jwks: RwLock::new(Jwks {
                    valid_until: 0,
                    ..jwks
                }),
            }),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl_secs,
        }
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the keys (after a rotation, or a change another instance made): tokens
    /// issued from now on are signed by the new ring's signer, and the JWKS follows.
    pub fn set_keys(&self, keys: KeyRing) {
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        // Stale now: the next request renders it from the new ring.
        self.inner
            .jwks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .valid_until = 0;
    }

    /// The JWKS document (`GET /.well-known/jwks.json`) at `now`, rendered again only
    /// when the keys changed or one of them retired since.
    pub fn jwks(&self, now: u64) -> bytes::Bytes {
        {
            let jwks = self.inner.jwks.read().unwrap_or_else(|e| e.into_inner());
            if now < jwks.valid_until {
                return jwks.body.clone();
            }
        }
        let fresh = self.keys().jwks(now);
        let body = fresh.body.clone();
        *self.inner.jwks.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        body
    }

    /// Issues a token for `uid`'s session `sid` at `now`, expiring after the configured
    /// lifetime or at `not_after` (the session's own expiry), whichever is first, signed
    /// by the key that signs at `now`.
    pub fn issue(&self, uid: &Uid, sid: Sid, now: u64, not_after: u64) -> (String, u64) {
        let exp = (now + self.ttl_secs).min(not_after);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: uid.as_str().to_string(),
            sid: sid.to_string(),
            iat: now,
            exp,
            nbf: None,
        };
        let keys = self.keys();
        let key = &keys.signer(now).key;
        let mut input = String::with_capacity(400);
        input.push_str(key.header());
        input.push('.');
        URL_SAFE_NO_PAD.encode_string(
            serde_json::to_vec(&claims).expect("plain claims always serialize"),
            &mut input,
        );
        (key.sign(input), exp)
    }

    /// Verifies algorithm, key id, signature, `iss`, `aud`, `sub`, `exp` and `nbf`.
    ///
    /// The header must be byte for byte the one liveuser writes for a key that verifies
    /// at `now` — that key's algorithm and kid; any other header (another algorithm,
    /// `none`, a missing or unknown kid, a standby key's kid, `jwk`/`jku`/`x5u`/`x5c`, a
    /// reordering) is refused without being parsed, so the algorithm is pinned per key
    /// (RFC 8725 §3.1). A token under a key that a rotation replaced must also expire
    /// before that key retires. There is no leeway: the server that checks a token is
    /// the one whose clock issued it.
    ///
    /// A token verified before is found in the verified-token cache by the SHA-256 of
    /// its bytes; its key must still verify at `now` with the same algorithm, and its
    /// times are checked again, on every call.
    pub fn verify(&self, token: &str, now: u64) -> Result<AccessClaims, AccessTokenError> {
        let invalid = AccessTokenError::Invalid;
        let hash = sha256(token.as_bytes());
        let keys = self.keys();
        if let Some(hit) = self.inner.verified.get(&hash, now) {
            return match keys.by_kid(&hit.kid, now) {
                Some(key) if key.key.algorithm() == hit.algorithm => {
                    check_times(&hit.claims, key.retires_at, now).map(|()| hit.claims)
                }
                _ => {
                    self.inner.verified.forget(&hash);
                    Err(invalid)
                }
            };
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(invalid)?;
        let (header, payload) = signed.split_once('.').ok_or(invalid)?;
        let key = keys.by_header(header, now).ok_or(invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid)?;
        if !key.key.verifies(signed.as_bytes(), &signature) {
            return Err(invalid);
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid)?;
        let claims: AccessClaims = serde_json::from_slice(&payload).map_err(|_| invalid)?;
        if claims.iss != self.issuer || claims.aud != self.audience || claims.sub.is_empty() {
            return Err(invalid);
        }
        check_times(&claims, key.retires_at, now)?;
        self.inner.verified.insert(
            hash,
            Verified {
                kid: key.key.kid().into(),
                algorithm: key.key.algorithm(),
                claims: claims.clone(),
            },
        );
        Ok(claims)
    }
}

/// The checks of a token's times at `now`, under a key retiring at `retires_at`.
fn check_times(
    claims: &AccessClaims,
    retires_at: Option<u64>,
    now: u64,
) -> Result<(), AccessTokenError> {
    if retires_at.is_some_and(|retires_at| claims.exp > retires_at) {
        return Err(AccessTokenError::Invalid);
    }
    if now >= claims.exp {
        return Err(AccessTokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(AccessTokenError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> AccessTokens {
        AccessTokens::new(SECRET, "liveuser", "liveuser", 7200)
    }

    #[test]
    fn issued_tokens_start_with_the_header_verification_expects() {
        let t = tokens();
        let (token, _) = t.issue(&Uid::parse("u").unwrap(), Sid(random_bytes()), 1, u64::MAX);
        assert_eq!(
            token.split('.').next(),
            Some(t.keys().signer(1).key.header())
        );
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], t.keys().current_kid(1));
    }

    fn key() -> RefreshKey {
        RefreshKey::new(vec![1; 32])
    }

    #[test]
    fn refresh_tokens_round_trip_and_carry_the_prefix() {
        let t = RefreshToken::issue(&key());
        let wire = t.encode();
        assert!(wire.starts_with(REFRESH_PREFIX));
        assert_eq!(wire.len(), REFRESH_PREFIX.len() + 70);
        assert_eq!(RefreshToken::parse(&wire), Some(t.clone()));
        assert_eq!(t.generation(), 0);
        assert!(t.is_authentic(&key()));
    }

    #[test]
    fn format_1_tokens_still_parse_and_hash_as_format_1_stored_them() {
        let raw = [5u8; 32];
        let wire = format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let t = RefreshToken::parse(&wire).unwrap();
        assert_eq!(t.encode(), wire);
        // Format 1 stored SHA-256 of the 32 bytes; the session id is its first half.
        assert_eq!(t.hash(), TokenHash(sha256(&raw)));
        assert_eq!(t.sid().0[..], sha256(&raw)[..16]);
        assert_eq!(t.generation(), 0);
        assert!(!t.is_authentic(&key()), "format 1 has no tag");
        // Its successor is a format-2 token of the same session, generation 1.
        let next = t.successor(&key()).unwrap();
        assert_eq!(next.sid(), t.sid());
        assert_eq!(next.generation(), 1);
        assert!(next.is_authentic(&key()));
        assert_eq!(next.encode().len(), REFRESH_PREFIX.len() + 70);
    }

    #[test]
    fn malformed_refresh_tokens_do_not_parse() {
        let wire = RefreshToken::issue(&key()).encode();
        let legacy = format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode([5u8; 32]));
        for bad in [
            "",
            REFRESH_PREFIX,
            &wire[REFRESH_PREFIX.len()..],
            &wire[..wire.len() - 1],
            &format!("{wire}A"),
            &format!("xxxx_{}", &wire[REFRESH_PREFIX.len()..]),
            &legacy[..legacy.len() - 1],
            &format!("{}=", &wire),
            &format!("{}*", &wire[..wire.len() - 1]),
        ] {
            assert!(RefreshToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_the_canonical_spelling_of_a_token_parses() {
        // The last base64 character of 52 bytes carries 4 spare bits: the same bytes
        // with them set must not be a second spelling of the token.
        let wire = RefreshToken::issue(&key()).encode();
        let last = wire.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for c in alphabet.chars().filter(|&c| c != last) {
            let other = format!("{}{c}", &wire[..wire.len() - 1]);
            if let Some(t) = RefreshToken::parse(&other) {
                assert_eq!(t.encode(), other);
            }
        }
    }

    #[test]
    fn successors_keep_the_session_count_generations_and_are_deterministic_per_key() {
        let t = RefreshToken::issue(&key());
        let k2 = RefreshKey::new(vec![2; 32]);
        let next = t.successor(&key()).unwrap();
        assert_eq!(next, t.successor(&key()).unwrap());
        assert_ne!(next, t.successor(&k2).unwrap());
        assert_ne!(next, t);
        assert_ne!(t.hash(), next.hash());
        assert_eq!(next.sid(), t.sid());
        assert_eq!(next.generation(), 1);
        assert_eq!(next.successor(&key()).unwrap().generation(), 2);
        assert!(!next.is_authentic(&k2), "another key's tag");
    }

    #[test]
    fn a_token_with_any_byte_changed_is_not_authentic_or_is_another_session() {
        let t = RefreshToken::issue(&key());
        let bytes = t.payload();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            let wire = format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(&changed));
            let forged = RefreshToken::parse(&wire).unwrap();
            assert!(
                !forged.is_authentic(&key()),
                "byte {i} changed and still authentic"
            );
            assert_ne!(forged.hash(), t.hash());
        }
    }

    #[test]
    fn a_token_is_tagged_by_the_current_key_or_by_a_retired_one_until_it_retires() {
        let (old, new, other) = (
            key(),
            RefreshKey::new(vec![2; 32]),
            RefreshKey::new(vec![3; 32]),
        );
        let keys = RefreshKeys::new(new.clone(), vec![(old.clone(), 5000)]);
        let before = RefreshToken::issue(&old);
        let after = RefreshToken::issue(keys.current());
        assert_eq!(
            after.tagged_by(&keys, 4999).map(RefreshKey::id),
            Some(new.id())
        );
        assert_eq!(
            before.tagged_by(&keys, 4999).map(RefreshKey::id),
            Some(old.id())
        );
        assert!(before.tagged_by(&keys, 5000).is_none(), "retired");
        assert!(
            after.tagged_by(&keys, 5000).is_some(),
            "the current key never retires"
        );
        assert!(RefreshToken::issue(&other).tagged_by(&keys, 0).is_none());
        let legacy = RefreshToken::parse(&format!(
            "{REFRESH_PREFIX}{}",
            URL_SAFE_NO_PAD.encode([5u8; 32])
        ))
        .unwrap();
        assert!(legacy.tagged_by(&keys, 0).is_none(), "format 1 has no tag");
    }

    #[test]
    fn the_ring_keeps_each_retired_key_once_and_only_the_ones_retiring_last() {
        let k = |b: u8| RefreshKey::new(vec![b; 32]);
        let mut retired: Vec<(RefreshKey, u64)> =
            (10..20).map(|b| (k(b), 1000 + u64::from(b))).collect();
        retired.push((k(19), 500));
        retired.push((k(1), 9999));
        let keys = RefreshKeys::new(k(1), retired);
        let expected: Vec<(String, u64)> = (16..20)
            .rev()
            .map(|b| (k(b).id().to_string(), 1000 + u64::from(b)))
            .collect();
        assert_eq!(keys.retired_ids(), expected);
        assert_eq!(keys.retired_ids().len(), MAX_RETIRED_REFRESH_KEYS);
        assert_eq!(keys.in_force(0).count(), 1 + MAX_RETIRED_REFRESH_KEYS);
        assert_eq!(keys.in_force(1017).count(), 3, "two have retired");
    }

    #[test]
    fn a_refresh_key_id_names_the_key_without_revealing_it_and_differs_from_a_kid() {
        let bytes = [9u8; 32];
        let id = refresh_key_id(&bytes);
        assert_eq!(id.len(), 16);
        assert_eq!(id, RefreshKey::new(bytes.to_vec()).id());
        assert_ne!(id, refresh_key_id(&[8u8; 32]));
        assert_ne!(id, kid_of(&bytes), "a key used for both is not named alike");
        assert_eq!(
            format!("{:?}", RefreshKeys::new(key(), Vec::new())),
            format!("RefreshKeys {{ current: {:?}, retired: [] }}", key().id()),
            "ids only"
        );
    }

    #[test]
    fn the_generation_counter_does_not_wrap() {
        let t = RefreshToken::chained([3; 32], u32::MAX, &key());
        assert!(t.successor(&key()).is_none());
    }

    #[test]
    fn debug_output_hides_refresh_tokens_and_keys() {
        let t = RefreshToken::issue(&key());
        assert!(!format!("{t:?}").contains(&t.encode()[REFRESH_PREFIX.len()..]));
        assert_eq!(format!("{:?}", key()), "RefreshKey(***)");
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let uid = Uid::parse("u1").unwrap();
        let sid = Sid(random_bytes());
        let (token, exp) = tokens().issue(&uid, sid, 1_000_000, u64::MAX);
        assert_eq!(exp, 1_007_200);
        let claims = tokens().verify(&token, 1_000_000).unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.sid, sid.to_string());
        assert_eq!(tokens().verify(&token, 1_007_199).map(|c| c.exp), Ok(exp));
        assert_eq!(
            tokens().verify(&token, 1_007_200),
            Err(AccessTokenError::Expired)
        );
    }

    #[test]
    fn expiry_is_capped_by_the_session() {
        let uid = Uid::parse("u1").unwrap();
        let (_, exp) = tokens().issue(&uid, Sid(random_bytes()), 1000, 1500);
        assert_eq!(exp, 1500);
    }

    #[test]
    fn other_keys_issuers_and_audiences_are_refused() {
        let uid = Uid::parse("u1").unwrap();
        let (token, _) = tokens().issue(&uid, Sid(random_bytes()), 1000, u64::MAX);
        let other_key = AccessTokens::new(
            b"another-secret-another-secret-xx",
            "liveuser",
            "liveuser",
            60,
        );
        let other_iss = AccessTokens::new(SECRET, "someone", "liveuser", 60);
        let other_aud = AccessTokens::new(SECRET, "liveuser", "someone", 60);
        assert!(other_key.verify(&token, 1000).is_err());
        assert!(other_iss.verify(&token, 1000).is_err());
        assert!(other_aud.verify(&token, 1000).is_err());
        assert!(tokens().verify("not a jwt", 1000).is_err());
        assert!(
            tokens()
                .verify(&RefreshToken::issue(&key()).encode(), 1000)
                .is_err()
        );
    }

    #[test]
    fn after_a_rotation_new_tokens_carry_the_new_kid_and_old_ones_verify_until_retirement() {
        const NEW: &[u8] = b"fedcba9876543210fedcba9876543210";
        let uid = Uid::parse("u1").unwrap();
        let old = tokens();
        let (old_token, old_exp) = old.issue(&uid, Sid(random_bytes()), 1000, u64::MAX);

        let rotated = tokens();
        rotated.set_keys(KeyRing::new(NEW).with_previous(SECRET, 1000 + 7200));
        let (new_token, _) = rotated.issue(&uid, Sid(random_bytes()), 1000, u64::MAX);
        assert_eq!(rotated.keys().current_kid(1000), kid_of(NEW));
        assert_ne!(kid_of(NEW), kid_of(SECRET));

        assert!(rotated.verify(&old_token, 1000).is_ok());
        assert!(rotated.verify(&new_token, 1000).is_ok());
        assert!(
            old.verify(&new_token, 1000).is_err(),
            "the old ring lacks the new key"
        );
        assert!(rotated.verify(&old_token, old_exp - 1).is_ok());
        assert!(rotated.verify(&old_token, old_exp).is_err());

        // A previous key accepts only tokens that expire before it retires, so a leaked
        // old key cannot mint long-lived tokens.
        rotated.set_keys(KeyRing::new(NEW).with_previous(SECRET, 1500));
        assert_eq!(
            rotated.verify(&old_token, 1000),
            Err(AccessTokenError::Invalid),
            "exp is past retirement"
        );
        let (short, _) = old.issue(&uid, Sid(random_bytes()), 1000, 1400);
        assert!(rotated.verify(&short, 1399).is_ok());
    }

    #[test]
    fn a_token_without_a_kid_or_with_an_unknown_kid_is_refused() {
        let uid = Uid::parse("u1").unwrap();
        let claims = AccessClaims {
            iss: "liveuser".into(),
            aud: "liveuser".into(),
            sub: "u1".into(),
            sid: Sid(random_bytes()).to_string(),
            iat: 1000,
            exp: 2000,
            nbf: None,
        };
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("0000000000000000".into());
        let unknown = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert_eq!(
            tokens().verify(&no_kid, 1000),
            Err(AccessTokenError::Invalid)
        );
        assert_eq!(
            tokens().verify(&unknown, 1000),
            Err(AccessTokenError::Invalid)
        );
        let (good, _) = tokens().issue(&uid, Sid(random_bytes()), 1000, 2000);
        assert!(tokens().verify(&good, 1000).is_ok());
    }

    fn es256(kid_source: KeyAlgorithm, signs_at: u64, retires_at: Option<u64>) -> SigningKeyRecord {
        let private = generate_key(kid_source);
        SigningKeyRecord {
            kid: kid_of_private(kid_source, &private).unwrap(),
            algorithm: kid_source,
            private: crate::secret::Secret::new(private),
            created_at: signs_at,
            signs_at,
            retires_at,
        }
    }

    fn ring_tokens(records: &[SigningKeyRecord]) -> AccessTokens {
        AccessTokens::with_keys(
            KeyRing::from_records(records).unwrap(),
            "liveuser",
            "liveuser",
            600,
        )
    }

    fn header_json(token: &str) -> serde_json::Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_standby_key_is_published_verifies_nothing_and_signs_from_its_time() {
        let old = es256(KeyAlgorithm::ES256, 0, Some(1000 + 600));
        let standby = es256(KeyAlgorithm::ES256, 1000, None);
        let t = ring_tokens(&[old.clone(), standby.clone()]);
        let uid = Uid::parse("u1").unwrap();
        let (before, _) = t.issue(&uid, Sid(random_bytes()), 999, u64::MAX);
        assert_eq!(header_json(&before)["kid"], old.kid.as_str());
        assert_eq!(header_json(&before)["alg"], "ES256");
        assert!(t.verify(&before, 999).is_ok());

        // The standby key's own token, made before it signs, is refused.
        let early = KeyRing::from_records(std::slice::from_ref(&standby)).unwrap();
        let forged = AccessTokens::with_keys(early, "liveuser", "liveuser", 600)
            .issue(&uid, Sid(random_bytes()), 999, u64::MAX)
            .0;
        assert_eq!(header_json(&forged)["kid"], standby.kid.as_str());
        assert_eq!(t.verify(&forged, 999), Err(AccessTokenError::Invalid));

        // From its time on it signs, and both verify until the old key retires.
        let (after, _) = t.issue(&uid, Sid(random_bytes()), 1000, u64::MAX);
        assert_eq!(header_json(&after)["kid"], standby.kid.as_str());
        assert!(t.verify(&after, 1000).is_ok());
        assert!(t.verify(&before, 1000).is_ok());
        assert!(
            t.verify(&forged, 1000).is_ok(),
            "it signs now: its tokens are real"
        );

        let jwks: serde_json::Value = serde_json::from_slice(&t.jwks(999)).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [old.kid.as_str(), standby.kid.as_str()]);
        let jwks: serde_json::Value = serde_json::from_slice(&t.jwks(1600)).unwrap();
        assert_eq!(
            jwks["keys"].as_array().unwrap().len(),
            1,
            "the old key left"
        );
        assert_eq!(jwks["keys"][0]["kid"], standby.kid.as_str());
    }

    #[test]
    fn a_cached_token_fails_once_its_key_retires_or_is_removed_or_changes_algorithm() {
        let key = es256(KeyAlgorithm::ES256, 0, Some(5000));
        let t = ring_tokens(std::slice::from_ref(&key));
        let uid = Uid::parse("u1").unwrap();
        let (token, exp) = t.issue(&uid, Sid(random_bytes()), 4000, 4600);
        assert_eq!(exp, 4600);
        assert!(t.verify(&token, 4000).is_ok());
        assert!(t.verify(&token, 4001).is_ok(), "served from the cache");
        assert!(
            t.inner
                .verified
                .get(&sha256(token.as_bytes()), 4001)
                .is_some()
        );
        assert_eq!(t.verify(&token, 4600), Err(AccessTokenError::Expired));

        let (token, _) = t.issue(&uid, Sid(random_bytes()), 4000, 4600);
        assert!(t.verify(&token, 4000).is_ok());
        // Removed from the ring: the cached entry does not outlive it.
        t.set_keys(KeyRing::new(b"0123456789abcdef0123456789abcdef"));
        assert_eq!(t.verify(&token, 4001), Err(AccessTokenError::Invalid));
        // Back, but as if its kid now named an HS256 key: the algorithm is pinned.
        t.set_keys(KeyRing::from_records(std::slice::from_ref(&key)).unwrap());
        assert!(
            t.verify(&token, 4001).is_ok(),
            "verified again, not from the cache"
        );
        let hash = sha256(token.as_bytes());
        let mut entry = t.inner.verified.get(&hash, 4001).unwrap();
        entry.algorithm = KeyAlgorithm::HS256;
        t.inner.verified.insert(hash, entry);
        assert_eq!(t.verify(&token, 4002), Err(AccessTokenError::Invalid));

        // A key past its retirement verifies nothing, cached or not.
        let (token, _) = t.issue(&uid, Sid(random_bytes()), 4000, 4600);
        assert!(t.verify(&token, 4500).is_ok());
        t.set_keys(
            KeyRing::from_records(&[SigningKeyRecord {
                retires_at: Some(4500),
                ..key.clone()
            }])
            .unwrap(),
        );
        assert_eq!(t.verify(&token, 4500), Err(AccessTokenError::Invalid));
    }

    #[test]
    fn an_es256_token_with_any_other_header_or_a_changed_byte_is_refused() {
        let key = es256(KeyAlgorithm::ES256, 0, None);
        let t = ring_tokens(std::slice::from_ref(&key));
        let uid = Uid::parse("u1").unwrap();
        let (token, _) = t.issue(&uid, Sid(random_bytes()), 1000, u64::MAX);
        let [h, p, s]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
        let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let kid = key.kid.as_str();
        for header in [
            serde_json::json!({"typ": "JWT", "alg": "none", "kid": kid}),
            serde_json::json!({"typ": "JWT", "alg": "HS256", "kid": kid}),
            serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": kid, "jku": "https://evil/"}),
            serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
        ] {
            let forged = format!("{}.{p}.{s}", b64(header.clone()));
            assert_eq!(
                t.verify(&forged, 1000),
                Err(AccessTokenError::Invalid),
                "{header}"
            );
        }
        let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
        sig[10] ^= 1;
        let tampered = format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(t.verify(&tampered, 1000), Err(AccessTokenError::Invalid));
        assert!(t.verify(&token, 1000).is_ok());
        assert_eq!(
            t.verify(&tampered, 1000),
            Err(AccessTokenError::Invalid),
            "still"
        );
    }
}
