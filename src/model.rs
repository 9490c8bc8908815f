//! The domain: validated identifiers, user records, identities and sessions.
//!
//! Values are parsed once at the edge ("parse, don't validate"): a [`Uid`] in hand is
//! always well-formed, a [`UserPatch`] always within the field limits.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::primitives::{hex, random_bytes, unhex};
use crate::secret::Secret;

/// Longest uid, in characters.
pub const UID_MAX: usize = 64;
/// Longest `name`, in characters.
pub const NAME_MAX: usize = 64;
/// Longest `agent`, in characters.
pub const AGENT_MAX: usize = 64;
/// Longest `avatar`, in characters.
pub const AVATAR_MAX: usize = 1024;

/// A user id: 1–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uid(String);

impl Uid {
    /// Parses a uid; the error says what is wrong, without the field name.
    pub fn parse(s: &str) -> Result<Uid, String> {
        if s.is_empty() || s.len() > UID_MAX {
            return Err(format!("must be 1 to {UID_MAX} characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err("may contain only A-Z, a-z, 0-9, '_', '.' and '-'".into());
        }
        Ok(Uid(s.to_string()))
    }

    /// A fresh random uid (96 bits from the OS CSPRNG, as 24 hex digits). Never derived
    /// from the openid, so a uid seen by other users reveals nothing about WeChat ids.
    pub fn generate() -> Uid {
        Uid(hex(&random_bytes::<12>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's profile as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub uid: Uid,
    pub name: String,
    /// Client/terminal description.
    pub agent: String,
    /// Avatar URL or empty.
    pub avatar: String,
    /// Last write, Unix seconds; set by the server on every write.
    pub update_at: u64,
}

impl UserRecord {
    /// An empty profile, as created at a user's first login.
    pub fn new(uid: Uid, now: u64) -> Self {
        UserRecord {
            uid,
            name: String::new(),
            agent: String::new(),
            avatar: String::new(),
            update_at: now,
        }
    }

    /// Applies a partial update: fields present in the patch replace the stored ones.
    pub fn apply(&mut self, patch: &UserPatch, now: u64) {
        if let Some(name) = &patch.name {
            self.name.clone_from(name);
        }
        if let Some(agent) = &patch.agent {
            self.agent.clone_from(agent);
        }
        if let Some(avatar) = &patch.avatar {
            self.avatar.clone_from(avatar);
        }
        self.update_at = now;
    }
}

/// The fields of a write; `None` keeps the stored value, `Some("")` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New name.
    pub name: Option<String>,
    /// New agent.
    pub agent: Option<String>,
    /// New avatar URL.
    pub avatar: Option<String>,
}

impl UserPatch {
    /// Checks every present field against its limit; the error names the field
    /// (`name`, `agent`, `avatar`) and says what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(name) = &self.name {
            check_text(name, NAME_MAX).map_err(|e| ("name", e))?;
        }
        if let Some(agent) = &self.agent {
            check_text(agent, AGENT_MAX).map_err(|e| ("agent", e))?;
        }
        if let Some(avatar) = &self.avatar {
            check_text(avatar, AVATAR_MAX).map_err(|e| ("avatar", e))?;
            if !avatar.is_empty() && !is_http_url(avatar) {
                return Err(("avatar", "must be empty or an http(s):// URL".into()));
            }
        }
        Ok(())
    }
}

/// A string limit: at most `max` characters, no control characters.
pub fn check_text(s: &str, max: usize) -> Result<(), String> {
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(host) if !host.is_empty() && !host.starts_with('/'))
        && !s.chars().any(char::is_whitespace)
}

/// A session id: 16 bytes, shown as 32 hex digits. One per login; every refresh token
/// rotated from that login belongs to the same session (its "family"), and the id is
/// derived from the tokens' shared seed ([`crate::token::RefreshToken::sid`]), so a
/// session is found from any of its tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sid(pub [u8; 16]);

impl Sid {
    /// Parses the 32-hex-digit form.
    pub fn parse(s: &str) -> Option<Sid> {
        let bytes = unhex(s)?;
        Some(Sid(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({self})")
    }
}

/// SHA-256 of a refresh token: the only form in which a refresh token is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even the hash stays out of logs: it is what the database needs to accept a token.
        f.write_str("TokenHash(***)")
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Usable.
    Active,
    /// Revoked by reuse detection, eviction or an operator.
    Revoked,
}

/// One login: its refresh-token family's state and its expiries, in one record.
///
/// The family is known by its current token and the one the last rotation retired (for
/// the retry grace); an older token is recognised as one of the family by its session
/// id and its authentic tag with a generation below [`Session::generation`]. So a
/// renewal changes exactly this record and nothing accumulates as tokens rotate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id (the `sid` claim of its access tokens).
    pub sid: Sid,
    pub uid: Uid,
    /// Login time, Unix seconds.
    pub created_at: u64,
    /// Last login or renewal, Unix seconds.
    pub last_used_at: u64,
    /// Absolute expiry, Unix seconds; never extended.
    pub expires_at: u64,
    /// Idle expiry: `last_used_at + refresh_idle_secs`, capped at `expires_at`.
    pub idle_expires_at: u64,
    pub state: SessionState,
    /// Rotations so far: the generation of the current token.
    pub generation: u32,
    /// Hash of the family's current refresh token.
    pub current: TokenHash,
    /// The last rotation: the token it retired and when (none before the first one).
    pub previous: Option<Rotation>,
}

impl Session {
    /// Whether the session can be used at `now` (Unix seconds).
    pub fn is_live(&self, now: u64) -> bool {
        self.state == SessionState::Active && now < self.expires_at && now < self.idle_expires_at
    }

    /// The state as an operator reads it: `active`, `revoked`, `expired` or `idle`.
    pub fn describe_state(&self, now: u64) -> &'static str {
        match self.state {
            SessionState::Revoked => "revoked",
            SessionState::Active if now >= self.expires_at => "expired",
            SessionState::Active if now >= self.idle_expires_at => "idle-expired",
            SessionState::Active => "active",
        }
    }
}

/// The rotation that retired a session's previous refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// Hash of the token that was current before the last rotation.
    pub token: TokenHash,
    /// When it was rotated, in Unix milliseconds: the retry grace that follows is
    /// measured from here to the millisecond.
    pub rotated_at_ms: u64,
}

/// What WeChat told us about a user, kept under the openid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The liveuser uid this openid maps to.
    pub uid: Uid,
    /// The WeChat unionid, when WeChat gave one.
    pub unionid: Option<String>,
    /// The latest WeChat session_key; kept for later use, never returned.
    pub session_key: Secret<String>,
}

/// A signing key replaced by a rotation, kept so the tokens it signed verify until
/// `retire_at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKey {
    pub key: Secret<Vec<u8>>,
    /// When it stops verifying: the rotation time plus the access-token lifetime (a
    /// signing key) or the session lifetime (a refresh key).
    pub retire_at: u64,
}

/// The algorithm of a signing key, by its JOSE name (RFC 7518).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: verifiers need only the public key (the JWKS).
    ES256,
    /// HMAC-SHA-256: whoever verifies holds the key, and so can also mint.
    HS256,
}

impl KeyAlgorithm {
    /// The JOSE name (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::ES256 => "ES256",
            KeyAlgorithm::HS256 => "HS256",
        }
    }

    /// The algorithm of a JOSE name, exactly as spelled in RFC 7518.
    pub fn parse(name: &str) -> Option<KeyAlgorithm> {
        match name {
            "ES256" => Some(KeyAlgorithm::ES256),
            "HS256" => Some(KeyAlgorithm::HS256),
            _ => None,
        }
    }
}

/// A generated signing key as stored, with its schedule.
///
/// A key is *standby* before `signs_at` (published, it verifies nothing yet), then signs
/// until a later key's `signs_at`, then only verifies, and is gone from `retires_at` on
/// (set by the rotation that replaces it: the successor's `signs_at` plus one
/// access-token lifetime, when the last token it signed has expired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    /// The key id, in every token's `kid` header and in the JWKS.
    pub kid: String,
    /// The algorithm it signs with; tokens naming another are refused.
    pub algorithm: KeyAlgorithm,
    /// The private part: a PKCS#8 document (ES256) or the HMAC secret (HS256).
    pub private: Secret<Vec<u8>>,
    /// When it was made, Unix seconds.
    pub created_at: u64,
    /// From when it signs, Unix seconds.
    pub signs_at: u64,
    /// From when it verifies nothing (`None` until a rotation replaces it).
    pub retires_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_accept_the_documented_alphabet_and_length() {
        assert!(Uid::parse("a").is_ok());
        assert!(Uid::parse("Az09_.-").is_ok());
        assert!(Uid::parse(&"x".repeat(64)).is_ok());
        assert!(Uid::parse("").is_err());
        assert!(Uid::parse(&"x".repeat(65)).is_err());
        assert!(Uid::parse("a b").is_err());
        assert!(Uid::parse("a/b").is_err());
        assert!(Uid::parse("é").is_err());
    }

    #[test]
    fn generated_uids_are_valid_and_distinct() {
        let a = Uid::generate();
        let b = Uid::generate();
        assert_ne!(a, b);
        assert_eq!(Uid::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let name = "名".repeat(64);
        let patch = UserPatch {
            name: Some(name),
            ..Default::default()
        };
        assert!(patch.validate().is_ok());
        let patch = UserPatch {
            name: Some("名".repeat(65)),
            ..Default::default()
        };
        assert_eq!(patch.validate().unwrap_err().0, "name");
    }

    #[test]
    fn each_field_limit_names_its_field() {
        let cases = [
            (
                UserPatch {
                    agent: Some("a".repeat(65)),
                    ..Default::default()
                },
                "agent",
            ),
            (
                UserPatch {
                    avatar: Some("ftp://x".into()),
                    ..Default::default()
                },
                "avatar",
            ),
            (
                UserPatch {
                    avatar: Some(format!("https://{}", "a".repeat(1017))),
                    ..Default::default()
                },
                "avatar",
            ),
            (
                UserPatch {
                    name: Some("a\u{7}b".into()),
                    ..Default::default()
                },
                "name",
            ),
        ];
        for (patch, field) in cases {
            assert_eq!(patch.validate().unwrap_err().0, field, "{patch:?}");
        }
    }

    #[test]
    fn avatar_may_be_empty_or_an_http_url() {
        for ok in ["", "http://a", "https://cdn.example.com/a.png"] {
            let patch = UserPatch {
                avatar: Some(ok.into()),
                ..Default::default()
            };
            assert!(patch.validate().is_ok(), "{ok}");
        }
        for bad in [
            "https://",
            "https:///x",
            "javascript:alert(1)",
            "HTTP//x",
            "https:// ",
            "https://a b",
            "https://\u{a0}",
            "https://a\u{3000}.png",
        ] {
            let patch = UserPatch {
                avatar: Some(bad.into()),
                ..Default::default()
            };
            assert!(patch.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_patch_replaces_present_fields_and_keeps_the_rest() {
        let mut user = UserRecord::new(Uid::parse("u1").unwrap(), 1);
        user.apply(
            &UserPatch {
                name: Some("n".into()),
                agent: Some("a".into()),
                ..Default::default()
            },
            2,
        );
        user.apply(
            &UserPatch {
                agent: Some(String::new()),
                ..Default::default()
            },
            3,
        );
        assert_eq!(user.name, "n");
        assert_eq!(user.agent, "");
        assert_eq!(user.update_at, 3);
    }

    #[test]
    fn hex_round_trips() {
        let sid = Sid([0xa7; 16]);
        assert_eq!(Sid::parse(&sid.to_string()), Some(sid));
        assert_eq!(Sid::parse("zz"), None);
    }
}
