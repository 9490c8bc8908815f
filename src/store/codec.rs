//! The one place records become bytes: a format-version byte, then bincode.
//!
//! Callers never see the encoding, so it can change (a new version byte, a migration on
//! read) without touching them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// Version byte of the current record format.
pub(crate) const VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// Decodes a record written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            let (value, used) = bincode::serde::decode_from_slice(rest, config())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if used != rest.len() {
                return Err(StoreError::Corrupt("trailing bytes after a record".into()));
            }
            Ok(value)
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::secret::Secret;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = encode(&v);
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<T>(&bytes).unwrap(), v);
    }

    #[test]
    fn every_record_round_trips() {
        let uid = Uid::parse("u-1").unwrap();
        round_trip(UserRecord {
            uid: uid.clone(),
            name: "名前".into(),
            agent: "iPhone".into(),
            avatar: "https://a/b.png".into(),
            update_at: 1_700_000_000,
        });
        round_trip(Session {
            sid: Sid::generate(),
            uid: uid.clone(),
            created_at: 1,
            last_used_at: 2,
            expires_at: 3,
            idle_expires_at: 4,
            state: SessionState::Revoked,
            current: TokenHash([7; 32]),
            previous: Some(Rotation {
                token: TokenHash([9; 32]),
                at: 6,
            }),
        });
        round_trip(RefreshRecord {
            sid: Sid::generate(),
            issued_at: 5,
        });
        round_trip(Identity {
            uid,
            unionid: Some("union".into()),
            session_key: Secret::new("sk".into()),
        });
    }

    #[test]
    fn unknown_versions_and_garbage_are_corrupt_not_panics() {
        assert!(decode::<UserRecord>(&[]).is_err());
        assert!(decode::<UserRecord>(&[9, 1, 2]).is_err());
        assert!(decode::<UserRecord>(&[VERSION, 0xff, 0xff, 0xff]).is_err());
        let mut bytes = encode(&Sid::generate());
        bytes.push(0);
        assert!(decode::<Sid>(&bytes).is_err());
    }
}
