//! Tokens: HS256 access tokens (JWT) and opaque refresh tokens.
//!
//! Access tokens are short-lived JWTs; the algorithm is pinned to HS256 (RFC 8725), and
//! `iss`, `aud` and `exp` are checked here against the injected clock. Whether the
//! session behind the token is still live is checked by the service, not here.
//!
//! Refresh tokens are 32 bytes from the OS CSPRNG, base64url, behind the prefix
//! [`REFRESH_PREFIX`] so secret scanners can recognise a leaked one. Only their SHA-256
//! ([`TokenHash`]) is ever stored. A rotated token's successor is derived as
//! HMAC-SHA256(refresh key, parent), so a retry within the grace period gets the same
//! successor without its plaintext being kept anywhere.

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
use crate::secret::Secret;

/// Prefix of every refresh token ("liveuser refresh token").
pub const REFRESH_PREFIX: &str = "lvrt_";

/// A refresh token in plaintext. Held only in memory, on its way to or from a client.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken([u8; 32]);

impl RefreshToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        RefreshToken(random_bytes())
    }

    /// Parses the wire form; `None` for anything that is not a well-formed token.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(REFRESH_PREFIX)?;
        if body.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        Some(RefreshToken(bytes.try_into().ok()?))
    }

    /// The wire form: prefix + base64url.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(REFRESH_PREFIX.len() + 43);
        s.push_str(REFRESH_PREFIX);
        URL_SAFE_NO_PAD.encode_string(self.0, &mut s);
        s
    }

    /// The form in which it is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash(sha256(&self.0))
    }

    /// The token that replaces this one on rotation: HMAC-SHA256(key, self).
    pub fn successor(&self, key: &RefreshKey) -> RefreshToken {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.0.expose()).expect("HMAC takes any key");
        mac.update(&self.0);
        RefreshToken(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

/// The key from which rotated refresh tokens are derived. Separate from the signing
/// key, so rotating the signing key does not change successors mid-grace.
#[derive(Clone, Debug)]
pub struct RefreshKey(Secret<Vec<u8>>);

impl RefreshKey {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        RefreshKey(Secret::new(bytes))
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
        let (token, _) = t.issue(&Uid::parse("u").unwrap(), Sid::generate(), 1, u64::MAX);
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

    #[test]
    fn refresh_tokens_round_trip_and_carry_the_prefix() {
        let t = RefreshToken::generate();
        let wire = t.encode();
        assert!(wire.starts_with(REFRESH_PREFIX));
        assert_eq!(wire.len(), REFRESH_PREFIX.len() + 43);
        assert_eq!(RefreshToken::parse(&wire), Some(t));
    }

    #[test]
    fn malformed_refresh_tokens_do_not_parse() {
        let wire = RefreshToken::generate().encode();
        for bad in [
            "",
            REFRESH_PREFIX,
            &wire[REFRESH_PREFIX.len()..],
            &wire[..wire.len() - 1],
            &format!("{wire}A"),
            &format!("xxxx_{}", &wire[REFRESH_PREFIX.len()..]),
        ] {
            assert!(RefreshToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn successors_are_deterministic_per_key_and_differ_from_the_parent() {
        let t = RefreshToken::generate();
        let k1 = RefreshKey::new(vec![1; 32]);
        let k2 = RefreshKey::new(vec![2; 32]);
        assert_eq!(t.successor(&k1), t.successor(&k1));
        assert_ne!(t.successor(&k1), t.successor(&k2));
        assert_ne!(t.successor(&k1), t);
        assert_ne!(t.hash(), t.successor(&k1).hash());
    }

    #[test]
    fn debug_output_hides_refresh_tokens() {
        let t = RefreshToken::generate();
        assert!(!format!("{t:?}").contains(&t.encode()[REFRESH_PREFIX.len()..]));
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let uid = Uid::parse("u1").unwrap();
        let sid = Sid::generate();
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
        let (_, exp) = tokens().issue(&uid, Sid::generate(), 1000, 1500);
        assert_eq!(exp, 1500);
    }

    #[test]
    fn other_keys_issuers_and_audiences_are_refused() {
        let uid = Uid::parse("u1").unwrap();
        let (token, _) = tokens().issue(&uid, Sid::generate(), 1000, u64::MAX);
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
                .verify(&RefreshToken::generate().encode(), 1000)
                .is_err()
        );
    }

    #[test]
    fn after_a_rotation_new_tokens_carry_the_new_kid_and_old_ones_verify_until_retirement() {
        const NEW: &[u8] = b"fedcba9876543210fedcba9876543210";
        let uid = Uid::parse("u1").unwrap();
        let old = tokens();
        let (old_token, old_exp) = old.issue(&uid, Sid::generate(), 1000, u64::MAX);

        let rotated = tokens();
        rotated.set_keys(KeyRing::new(NEW).with_previous(SECRET, 1000 + 7200));
        let (new_token, _) = rotated.issue(&uid, Sid::generate(), 1000, u64::MAX);
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
        let (short, _) = old.issue(&uid, Sid::generate(), 1000, 1400);
        assert!(rotated.verify(&short, 1399).is_ok());
    }

    #[test]
    fn a_token_without_a_kid_or_with_an_unknown_kid_is_refused() {
        let uid = Uid::parse("u1").unwrap();
        let claims = AccessClaims {
            iss: "liveuser".into(),
            aud: "liveuser".into(),
            sub: "u1".into(),
            sid: Sid::generate().to_string(),
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
        let (good, _) = tokens().issue(&uid, Sid::generate(), 1000, 2000);
        assert!(tokens().verify(&good, 1000).is_ok());
    }
}
