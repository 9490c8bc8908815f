//! Tokens: HS256 access tokens (JWT) and refresh tokens.
//!
//! Access tokens are short-lived JWTs; the algorithm is pinned to HS256 (RFC 8725), and
//! `iss`, `aud` and `exp` are checked here against the injected clock. Whether the
//! session behind the token is still live is checked by the service, not here.
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
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::model::{Sid, TokenHash, Uid};
use crate::primitives::{hex, random_bytes, sha256};

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

/// An HS256 key with its key id.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    /// HMAC-SHA256 with the key already absorbed, cloned for each verification.
    mac: Hmac<Sha256>,
    /// The exact first segment of every token this key signs (base64url of
    /// `{"typ":"JWT","alg":"HS256","kid":"…"}`): verification compares bytes instead of
    /// parsing a header, which pins the algorithm and the key in one comparison.
    header: String,
}

impl SigningKey {
    fn new(secret: &[u8]) -> Self {
        let kid = kid_of(secret);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let header = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&header).expect("a JWT header always serializes"));
        SigningKey {
            kid,
            encoding: EncodingKey::from_secret(secret).expect("non-empty HS256 secret"),
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key"),
            header,
        }
    }
}

/// The key id (`kid` header) of a signing secret: a short hash of the key, stable across
/// restarts, revealing nothing about the key.
pub fn kid_of(secret: &[u8]) -> String {
    let mut tagged = b"liveuser-kid:".to_vec();
    tagged.extend_from_slice(secret);
    hex(&sha256(&tagged)[..8])
}

/// The signing keys in force: the current key signs; previous keys only verify, each
/// until its retire time.
///
/// A previous key is retired `access_ttl` after the rotation that replaced it: by then
/// every token it signed has expired. Until then it accepts only tokens that expire
/// before its retire time, so a leaked old key cannot mint long-lived tokens either.
#[derive(Clone)]
pub struct KeyRing {
    current: SigningKey,
    previous: Vec<(SigningKey, u64)>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current.kid)
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|(k, retire_at)| (&k.kid, retire_at))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// A ring of one key, which signs.
    pub fn new(current: &[u8]) -> Self {
        KeyRing {
            current: SigningKey::new(current),
            previous: Vec::new(),
        }
    }

    /// Adds a previous key that verifies (never signs) until `retire_at`. A key equal to
    /// the current one is ignored.
    pub fn with_previous(mut self, secret: &[u8], retire_at: u64) -> Self {
        let key = SigningKey::new(secret);
        if key.kid != self.current.kid && !self.previous.iter().any(|(k, _)| k.kid == key.kid) {
            self.previous.push((key, retire_at));
        }
        self
    }

    /// The kid of the signing key.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// The kids of the previous keys with their retire times.
    pub fn previous_kids(&self) -> Vec<(String, u64)> {
        self.previous
            .iter()
            .map(|(k, retire_at)| (k.kid.clone(), *retire_at))
            .collect()
    }

    /// The key whose tokens start with `header` at `now`, with its retire time if it is
    /// a previous key.
    fn find(&self, header: &str, now: u64) -> Option<(&SigningKey, Option<u64>)> {
        if header == self.current.header {
            return Some((&self.current, None));
        }
        self.previous
            .iter()
            .find(|(k, retire_at)| k.header == header && now < *retire_at)
            .map(|(k, retire_at)| (k, Some(*retire_at)))
    }
}

/// Issues and verifies access tokens.
///
/// Clones share one [`KeyRing`], so a key rotation through [`AccessTokens::set_keys`]
/// takes effect for every holder at once.
#[derive(Clone)]
pub struct AccessTokens {
    keys: Arc<RwLock<Arc<KeyRing>>>,
    issuer: String,
    audience: String,
    ttl_secs: u64,
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
    /// Tokens signed with `secret`, for `issuer` and `audience`, living `ttl_secs`.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        Self::with_keys(KeyRing::new(secret), issuer, audience, ttl_secs)
    }

    /// Tokens signed and verified with `keys`.
    pub fn with_keys(keys: KeyRing, issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        AccessTokens {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl_secs,
        }
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the keys (after a rotation); tokens issued from now on carry the new kid.
    pub fn set_keys(&self, keys: KeyRing) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Issues a token for `uid`'s session `sid` at `now`, expiring after the configured
    /// lifetime or at `not_after` (the session's own expiry), whichever is first.
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
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.current.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &keys.current.encoding)
            .expect("HS256 signing of plain claims cannot fail");
        (token, exp)
    }

    /// Verifies algorithm, key id, signature, `iss`, `aud`, `sub`, `exp` and `nbf`.
    ///
    /// The header must be byte for byte the one liveuser writes for the current key or
    /// for a previous key not yet retired — HS256 and that key's kid; any other header
    /// (another algorithm, `none`, a missing or unknown kid, `jwk`/`jku`, a reordering) is
    /// refused without being parsed. A token under a previous key must also expire before
    /// that key retires. The signature is HMAC-SHA256 compared in constant time. There is
    /// no leeway: the server that checks a token is the one whose clock issued it.
    pub fn verify(&self, token: &str, now: u64) -> Result<AccessClaims, AccessTokenError> {
        let invalid = AccessTokenError::Invalid;
        let (signed, signature) = token.rsplit_once('.').ok_or(invalid)?;
        let (header, payload) = signed.split_once('.').ok_or(invalid)?;
        let keys = self.keys();
        let (key, retire_at) = keys.find(header, now).ok_or(invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid)?;
        let mut mac = key.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).map_err(|_| invalid)?;

        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid)?;
        let claims: AccessClaims = serde_json::from_slice(&payload).map_err(|_| invalid)?;
        if claims.iss != self.issuer || claims.aud != self.audience || claims.sub.is_empty() {
            return Err(invalid);
        }
        if retire_at.is_some_and(|retire_at| claims.exp > retire_at) {
            return Err(invalid);
        }
        if now >= claims.exp {
            return Err(AccessTokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(AccessTokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
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
            Some(t.keys().current.header.as_str())
        );
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&t.keys().current.header).unwrap())
                .unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], t.keys().current_kid());
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
        assert_eq!(rotated.keys().current_kid(), kid_of(NEW));
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
}
