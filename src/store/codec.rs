//! The one place records become bytes: a format-version byte, then bincode of a layout
//! made for the disk.
//!
//! Callers see [`Record`] (a record from its key and value bytes, and back) and the
//! index-key helpers, never the layout, so it can change behind a new version byte.
//!
//! Format 2, this build's, in bincode's standard configuration (variable-length
//! integers, length-prefixed strings, fixed arrays without a length):
//!
//! | record | key | value after the version byte |
//! |---|---|---|
//! | user | uid | update_at, name, agent, avatar (the uid is the key, not repeated) |
//! | identity | openid | uid, unionid, session_key (16 bytes when it is WeChat's base64 of 16 bytes) |
//! | session | sid (16 bytes) | uid, revoked, created_at, last_used_at, expires_at, idle_expires_at, generation, current (32 bytes), previous (32 bytes and the rotation time in ms) |
//! | retired keys | name ‖ `.retired` | each key's bytes and retire time |
//!
//! A uid is a 1 and 12 bytes when it is 24 lowercase hex digits (every uid liveuser
//! generates), otherwise a 0 and its text. Times are Unix seconds except the rotation
//! time, in milliseconds.
//!
//! Format 1 (the releases before: bincode of the model types themselves, with per-token
//! records) is read only by [`v1`], for the upgrade at start; a format-1 record met
//! anywhere else is refused as corrupt, never read as format 2.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::UserRecord;
use crate::model::{
    Identity, KeyAlgorithm, RetiredKey, Rotation, Session, SessionState, Sid, SigningKeyRecord,
    TokenHash, Uid,
};
use crate::primitives::{hex, unhex};
use crate::secret::Secret;

/// Version byte of this build's records.
pub(crate) const VERSION: u8 = 2;

/// The largest record either format has (a user with a 1024-character avatar is about
/// 4 kB at most); a corrupt length beyond it is an error, not an allocation.
const LIMIT: usize = 64 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_bytes<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// The layout after version byte `version`, or an error naming what is wrong.
fn from_bytes<T: for<'de> Deserialize<'de>>(version: u8, bytes: &[u8]) -> Result<T, StoreError> {
    let rest = match bytes.split_first() {
        Some((&v, rest)) if v == version => rest,
        Some((1, _)) => {
            return Err(corrupt(
                "a format-1 record in a database marked as upgraded",
            ));
        }
        Some((v, _)) => return Err(corrupt(format_args!("unknown record version {v}"))),
        None => return Err(corrupt("empty record")),
    };
    let (value, used) = bincode::serde::decode_from_slice(rest, config()).map_err(corrupt)?;
    if used != rest.len() {
        return Err(corrupt("trailing bytes after a record"));
    }
    Ok(value)
}

/// A stored record: how its value bytes are made, and read back with its key.
pub(crate) trait Record: Sized {
    /// The value bytes, version byte first.
    fn encode(&self) -> Vec<u8>;
    /// The record stored under `key` as `value`.
    fn decode(key: &[u8], value: &[u8]) -> Result<Self, StoreError>;
}

// ----- uids -----

/// A uid on disk: generated ones (24 lowercase hex digits) as their 12 bytes.
#[derive(Serialize, Deserialize)]
enum DiskUid {
    Text(String),
    Hex([u8; 12]),
}

impl DiskUid {
    fn of(uid: &Uid) -> DiskUid {
        let text = uid.as_str();
        match unhex(text) {
            Some(bytes) if text.len() == 24 && hex(&bytes) == text => {
                DiskUid::Hex(bytes.try_into().expect("24 hex digits are 12 bytes"))
            }
            _ => DiskUid::Text(text.to_string()),
        }
    }

    fn into_uid(self) -> Result<Uid, StoreError> {
        let text = match self {
            DiskUid::Text(text) => text,
            DiskUid::Hex(bytes) => hex(&bytes),
        };
        Uid::parse(&text).map_err(|e| corrupt(format_args!("a stored uid {e}")))
    }
}

fn uid_of_key(key: &[u8]) -> Result<Uid, StoreError> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|s| Uid::parse(s).ok())
        .ok_or_else(|| corrupt("a user key is not a uid"))
}

// ----- users -----

#[derive(Serialize, Deserialize)]
struct DiskUser {
    update_at: u64,
    name: String,
    agent: String,
    avatar: String,
}

impl Record for UserRecord {
    fn encode(&self) -> Vec<u8> {
        to_bytes(
            VERSION,
            &DiskUser {
                update_at: self.update_at,
                name: self.name.clone(),
                agent: self.agent.clone(),
                avatar: self.avatar.clone(),
            },
        )
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let d: DiskUser = from_bytes(VERSION, value)?;
        Ok(UserRecord {
            uid: uid_of_key(key)?,
            name: d.name,
            agent: d.agent,
            avatar: d.avatar,
            update_at: d.update_at,
        })
    }
}

// ----- identities -----

/// WeChat's session_key is base64 of 16 bytes; anything else is kept as text.
#[derive(Serialize, Deserialize)]
enum DiskSessionKey {
    Text(String),
    Base64([u8; 16]),
}

impl DiskSessionKey {
    fn of(key: &str) -> DiskSessionKey {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        match b64.decode(key) {
            Ok(bytes) if bytes.len() == 16 && b64.encode(&bytes) == key => {
                DiskSessionKey::Base64(bytes.try_into().expect("16 bytes"))
            }
            _ => DiskSessionKey::Text(key.to_string()),
        }
    }

    fn into_string(self) -> String {
        use base64::Engine;
        match self {
            DiskSessionKey::Text(text) => text,
            DiskSessionKey::Base64(bytes) => {
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DiskIdentity {
    uid: DiskUid,
    unionid: Option<String>,
    session_key: DiskSessionKey,
}

impl Record for Identity {
    fn encode(&self) -> Vec<u8> {
        to_bytes(
            VERSION,
            &DiskIdentity {
                uid: DiskUid::of(&self.uid),
                unionid: self.unionid.clone(),
                session_key: DiskSessionKey::of(self.session_key.expose()),
            },
        )
    }

    fn decode(_key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let d: DiskIdentity = from_bytes(VERSION, value)?;
        Ok(Identity {
            uid: d.uid.into_uid()?,
            unionid: d.unionid,
            session_key: Secret::new(d.session_key.into_string()),
        })
    }
}

// ----- sessions -----

#[derive(Serialize, Deserialize)]
struct DiskSession {
    uid: DiskUid,
    revoked: bool,
    created_at: u64,
    last_used_at: u64,
    expires_at: u64,
    idle_expires_at: u64,
    generation: u32,
    current: [u8; 32],
    previous: Option<([u8; 32], u64)>,
}

fn sid_of_key(key: &[u8]) -> Result<Sid, StoreError> {
    key.try_into()
        .map(Sid)
        .map_err(|_| corrupt("a session key is not 16 bytes"))
}

impl Record for Session {
    fn encode(&self) -> Vec<u8> {
        to_bytes(
            VERSION,
            &DiskSession {
                uid: DiskUid::of(&self.uid),
                revoked: self.state == SessionState::Revoked,
                created_at: self.created_at,
                last_used_at: self.last_used_at,
                expires_at: self.expires_at,
                idle_expires_at: self.idle_expires_at,
                generation: self.generation,
                current: self.current.0,
                previous: self.previous.map(|p| (p.token.0, p.rotated_at_ms)),
            },
        )
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let d: DiskSession = from_bytes(VERSION, value)?;
        Ok(Session {
            sid: sid_of_key(key)?,
            uid: d.uid.into_uid()?,
            created_at: d.created_at,
            last_used_at: d.last_used_at,
            expires_at: d.expires_at,
            idle_expires_at: d.idle_expires_at,
            state: if d.revoked {
                SessionState::Revoked
            } else {
                SessionState::Active
            },
            generation: d.generation,
            current: TokenHash(d.current),
            previous: d.previous.map(|(token, rotated_at_ms)| Rotation {
                token: TokenHash(token),
                rotated_at_ms,
            }),
        })
    }
}

// ----- retired signing keys -----

#[derive(Serialize, Deserialize)]
struct DiskRetired(Vec<(Vec<u8>, u64)>);

impl Record for Vec<RetiredKey> {
    fn encode(&self) -> Vec<u8> {
        to_bytes(
            VERSION,
            &DiskRetired(
                self.iter()
                    .map(|k| (k.key.expose().clone(), k.retire_at))
                    .collect(),
            ),
        )
    }

    fn decode(_key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let d: DiskRetired = from_bytes(VERSION, value)?;
        Ok(d.0
            .into_iter()
            .map(|(key, retire_at)| RetiredKey {
                key: Secret::new(key),
                retire_at,
            })
            .collect())
    }
}

// ----- generated signing keys -----

/// One signing key on disk: kid, algorithm (0 ES256, 1 HS256), private part, created,
/// signs from, retires at.
#[derive(Serialize, Deserialize)]
struct DiskSigningKey(String, u8, Vec<u8>, u64, u64, Option<u64>);

impl Record for Vec<SigningKeyRecord> {
    fn encode(&self) -> Vec<u8> {
        let keys: Vec<DiskSigningKey> = self
            .iter()
            .map(|k| {
                DiskSigningKey(
                    k.kid.clone(),
                    match k.algorithm {
                        KeyAlgorithm::ES256 => 0,
                        KeyAlgorithm::HS256 => 1,
                    },
                    k.private.expose().clone(),
                    k.created_at,
                    k.signs_at,
                    k.retires_at,
                )
            })
            .collect();
        to_bytes(VERSION, &keys)
    }

    fn decode(_key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        let keys: Vec<DiskSigningKey> = from_bytes(VERSION, value)?;
        keys.into_iter()
            .map(
                |DiskSigningKey(kid, algorithm, private, created_at, signs_at, retires_at)| {
                    Ok(SigningKeyRecord {
                        kid,
                        algorithm: match algorithm {
                            0 => KeyAlgorithm::ES256,
                            1 => KeyAlgorithm::HS256,
                            _ => return Err(corrupt("a signing key of an unknown algorithm")),
                        },
                        private: Secret::new(private),
                        created_at,
                        signs_at,
                        retires_at,
                    })
                },
            )
            .collect()
    }
}

// ----- the user index -----

/// The start of every index key of `uid`'s sessions. The uid's disk form is
/// self-delimiting, so this is an exact prefix for one user.
pub(crate) fn index_prefix(uid: &Uid) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + 8 + 16);
    bincode::serde::encode_into_std_write(DiskUid::of(uid), &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// The index key of `session`: its uid's prefix ‖ created_at (8 bytes, big-endian, so
/// keys sort by login time) ‖ sid.
pub(crate) fn index_key(session: &Session) -> Vec<u8> {
    let mut key = index_prefix(&session.uid);
    key.extend_from_slice(&session.created_at.to_be_bytes());
    key.extend_from_slice(&session.sid.0);
    key
}

/// The sid at the end of an index key.
pub(crate) fn sid_of_index_key(key: &[u8]) -> Result<Sid, StoreError> {
    key.len()
        .checked_sub(16)
        .map(|at| &key[at..])
        .map_or(Err(corrupt("an index key is too short")), sid_of_key)
}

/// Reading records of format 1, for the upgrade: bincode of that release's model types.
pub(crate) mod v1 {
    use serde::Deserialize;

    use super::{StoreError, corrupt, from_bytes};
    use crate::model::{
        Identity, RetiredKey, Session, SessionState, Sid, TokenHash, Uid, UserRecord,
    };
    use crate::secret::Secret;

    /// The version byte of format 1.
    pub(crate) const VERSION: u8 = 1;

    fn uid(text: String) -> Result<Uid, StoreError> {
        Uid::parse(&text).map_err(|e| corrupt(format_args!("a format-1 uid {e}")))
    }

    #[derive(Deserialize)]
    struct User {
        uid: String,
        name: String,
        agent: String,
        avatar: String,
        update_at: u64,
    }

    /// A format-1 user record.
    pub(crate) fn user(value: &[u8]) -> Result<UserRecord, StoreError> {
        let u: User = from_bytes(VERSION, value)?;
        Ok(UserRecord {
            uid: uid(u.uid)?,
            name: u.name,
            agent: u.agent,
            avatar: u.avatar,
            update_at: u.update_at,
        })
    }

    #[derive(Deserialize)]
    struct Ident {
        uid: String,
        unionid: Option<String>,
        session_key: String,
    }

    /// A format-1 identity.
    pub(crate) fn identity(value: &[u8]) -> Result<Identity, StoreError> {
        let i: Ident = from_bytes(VERSION, value)?;
        Ok(Identity {
            uid: uid(i.uid)?,
            unionid: i.unionid,
            session_key: Secret::new(i.session_key),
        })
    }

    #[derive(Deserialize)]
    enum State {
        Active,
        Revoked,
    }

    #[derive(Deserialize)]
    struct Rotation {
        #[allow(dead_code)] // read for the layout; format 2 does not keep it
        token: [u8; 32],
        #[allow(dead_code)]
        at: u64,
    }

    #[derive(Deserialize)]
    struct Sess {
        #[allow(dead_code)] // format 2 derives the sid from the current token
        sid: [u8; 16],
        uid: String,
        created_at: u64,
        last_used_at: u64,
        expires_at: u64,
        idle_expires_at: u64,
        state: State,
        current: [u8; 32],
        #[allow(dead_code)]
        previous: Option<Rotation>,
    }

    /// A format-1 session as format 2 keeps it: under the id its current token derives
    /// (the first 16 bytes of the token's hash, see [`crate::token::RefreshToken::sid`]),
    /// at generation 0, without the last rotation (format-1 tokens before the current one
    /// cannot be found from the token any more; they are refused, revoking nothing).
    pub(crate) fn session(value: &[u8]) -> Result<Session, StoreError> {
        let s: Sess = from_bytes(VERSION, value)?;
        Ok(Session {
            sid: Sid(s.current[..16].try_into().expect("16 of 32 bytes")),
            uid: uid(s.uid)?,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            idle_expires_at: s.idle_expires_at,
            state: match s.state {
                State::Active => SessionState::Active,
                State::Revoked => SessionState::Revoked,
            },
            generation: 0,
            current: TokenHash(s.current),
            previous: None,
        })
    }

    #[derive(Deserialize)]
    struct Retired {
        key: Vec<u8>,
        retire_at: u64,
    }

    /// A format-1 list of retired signing keys.
    pub(crate) fn retired(value: &[u8]) -> Result<Vec<RetiredKey>, StoreError> {
        let list: Vec<Retired> = from_bytes(VERSION, value)?;
        Ok(list
            .into_iter()
            .map(|k| RetiredKey {
                key: Secret::new(k.key),
                retire_at: k.retire_at,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Record + PartialEq + std::fmt::Debug>(key: &[u8], v: T) -> usize {
        let bytes = v.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(T::decode(key, &bytes).unwrap(), v);
        bytes.len()
    }

    fn session(uid: &str) -> Session {
        Session {
            sid: Sid([5; 16]),
            uid: Uid::parse(uid).unwrap(),
            created_at: 1_700_000_000,
            last_used_at: 1_700_000_100,
            expires_at: 1_702_592_000,
            idle_expires_at: 1_701_296_100,
            state: SessionState::Active,
            generation: 0,
            current: TokenHash([7; 32]),
            previous: None,
        }
    }

    #[test]
    fn every_record_round_trips() {
        let uid = Uid::parse("u-1").unwrap();
        round_trip(
            b"u-1",
            UserRecord {
                uid: uid.clone(),
                name: "名前".into(),
                agent: "iPhone".into(),
                avatar: "https://a/b.png".into(),
                update_at: 1_700_000_000,
            },
        );
        let mut rotated = session("u-1");
        rotated.state = SessionState::Revoked;
        rotated.generation = 3;
        rotated.previous = Some(Rotation {
            token: TokenHash([9; 32]),
            rotated_at_ms: 1_700_000_100_250,
        });
        round_trip(&[5; 16], rotated);
        round_trip(&[5; 16], session("a91b40478e4c885fea29e6e7"));
        for session_key in ["c2Vzc2lvbi1rZXktMTYhIQ==", "not base64", "", "YQ=="] {
            round_trip(
                b"openid",
                Identity {
                    uid: uid.clone(),
                    unionid: Some("union".into()),
                    session_key: Secret::new(session_key.into()),
                },
            );
        }
        round_trip(
            b"k.retired",
            vec![RetiredKey {
                key: Secret::new(vec![1, 2, 3]),
                retire_at: 9,
            }],
        );
        round_trip(
            b"signing_keys",
            vec![
                SigningKeyRecord {
                    kid: "0123456789abcdef".into(),
                    algorithm: KeyAlgorithm::HS256,
                    private: Secret::new(vec![4; 32]),
                    created_at: 1,
                    signs_at: 0,
                    retires_at: Some(7200),
                },
                SigningKeyRecord {
                    kid: "fedcba9876543210".into(),
                    algorithm: KeyAlgorithm::ES256,
                    private: Secret::new(vec![5; 138]),
                    created_at: 2,
                    signs_at: 900,
                    retires_at: None,
                },
            ],
        );
    }

    #[test]
    fn records_are_compact() {
        // A generated uid is 12 bytes, a fresh session about 70, a rotated one about 110,
        // a new user 9 (its uid is the key).
        let fresh = session("a91b40478e4c885fea29e6e7");
        let size = round_trip(&[5; 16], fresh.clone());
        assert!(size <= 72, "{size} bytes");
        let mut rotated = fresh;
        rotated.generation = 1;
        rotated.previous = Some(Rotation {
            token: TokenHash([9; 32]),
            rotated_at_ms: 1_700_000_100_250,
        });
        let size = round_trip(&[5; 16], rotated);
        assert!(size <= 112, "{size} bytes");
        let user = UserRecord::new(
            Uid::parse("a91b40478e4c885fea29e6e7").unwrap(),
            1_700_000_000,
        );
        assert!(user.encode().len() <= 9);
        // WeChat's base64 session_key is kept as its 16 bytes.
        let identity = Identity {
            uid: Uid::parse("a91b40478e4c885fea29e6e7").unwrap(),
            unionid: None,
            session_key: Secret::new("c2Vzc2lvbi1rZXktMTYhIQ==".into()),
        };
        assert!(identity.encode().len() <= 33, "{}", identity.encode().len());
    }

    #[test]
    fn uids_that_look_generated_but_are_not_lowercase_hex_keep_their_text() {
        for uid in ["A91B40478E4C885FEA29E6E7", "a91b40478e4c885fea29e6e", "x"] {
            round_trip(&[5; 16], session(uid));
        }
    }

    #[test]
    fn index_keys_are_exact_prefixes_per_user_in_login_order() {
        let a = session("ab");
        let mut later = session("ab");
        later.created_at += 1;
        later.sid = Sid([0; 16]);
        let other = session("abc");
        let prefix = index_prefix(&a.uid);
        assert!(index_key(&a).starts_with(&prefix));
        assert!(
            !index_key(&other).starts_with(&prefix),
            "ab is not a prefix of abc"
        );
        assert!(
            index_key(&a) < index_key(&later),
            "older first, whatever the sid"
        );
        assert_eq!(sid_of_index_key(&index_key(&a)).unwrap(), a.sid);
        assert!(sid_of_index_key(&[1, 2]).is_err());
    }

    #[test]
    fn unknown_versions_format_1_records_and_garbage_are_corrupt_not_panics() {
        assert!(UserRecord::decode(b"u", &[]).is_err());
        assert!(UserRecord::decode(b"u", &[9, 1, 2]).is_err());
        assert!(UserRecord::decode(b"u", &[VERSION, 0xff, 0xff, 0xff]).is_err());
        // A string claiming a huge length is an error, not an allocation.
        let huge = [
            VERSION, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(UserRecord::decode(b"u", &huge).is_err());
        let mut bytes = session("u").encode();
        bytes.push(0);
        assert!(Session::decode(&[5; 16], &bytes).is_err(), "trailing bytes");
        assert!(
            Session::decode(&[5; 15], &session("u").encode()).is_err(),
            "bad key"
        );
        let mut v1 = session("u").encode();
        v1[0] = v1::VERSION;
        let err = Session::decode(&[5; 16], &v1).unwrap_err();
        assert!(err.to_string().contains("format-1"), "{err}");
    }
}
