//! Signing keys: where they come from, and how they rotate without logging anyone out.
//!
//! Two sources, as `[token]` says:
//!
//! - **Configured** (`token.secret`, HS256): the operator rotates by moving the old value
//!   to `token.previous_secret`, setting a new `token.secret`, and restarting. The first
//!   start that sees a previous secret records when (in the `meta` tree, under the
//!   previous key's kid); the previous key then verifies for one access-token lifetime
//!   from that moment and is ignored afterwards, with a warning to remove it.
//! - **Generated** (no `token.secret`): typed records in the store
//!   ([`SigningKeyRecord`]: kid, algorithm, private part, schedule). The first start
//!   makes one of `token.algorithm` (ES256 by default) — or, on a database that signed
//!   with a generated HS256 key before keys had records, adopts that key, so such a
//!   deployment keeps signing HS256 until the operator rotates. [`rotate_signing_key`]
//!   (`liveuser token rotate-key`) adds a key of `token.algorithm` as *standby*: it is
//!   published in the JWKS at once and signs from `token.key_publish_secs` later, so
//!   that every verifier's cached JWKS has it by then (`--now`: it signs at once). The
//!   key it replaces signs until then and retires one access-token lifetime after,
//!   when the last token it signed has expired. The whole set is swapped in one
//!   compare-and-swap ([`Store::swap_signing_keys`]), so concurrent rotations on several
//!   instances cannot lose one; the switch itself needs no write: every instance
//!   reads the same `signs_at` and switches at that moment.
//!
//! Every server start records which of the two it uses ([`record_key_source`]), so an
//! admin command run on the stopped server's database without the server's secret is
//! refused instead of minting tokens the server would reject ([`check_key_source`]).
//!
//! The key that tags refresh tokens is generated at first start and kept in the store
//! too. [`rotate_refresh_key`] (`liveuser token rotate-refresh-key`) replaces it; the
//! replaced key keeps verifying tags for `token.refresh_ttl_secs`, the longest a session
//! it tagged can live (see [`RefreshKeys`]). An export with sessions carries the keys in
//! force, and an import into an empty database adopts them ([`adopt_refresh_keys`]).

use crate::config::TokenConfig;
use crate::model::{KeyAlgorithm, RetiredKey, SigningKeyRecord};
use crate::primitives::random_bytes;
use crate::secret::Secret;
use crate::store::{Store, StoreError};
use crate::token::{KeyRing, RefreshKey, RefreshKeys, generate_key, kid_of, refresh_key_id};

/// Name of the generated HS256 signing key of databases made before signing keys had
/// records: read once, to adopt it.
pub(crate) const SIGNING_KEY: &str = "signing_key";
/// Name of the generated key that derives rotated refresh tokens.
pub(crate) const REFRESH_KEY: &str = "refresh_key";
/// Prefix of the record of when a configured `token.previous_secret` was first seen.
const PREVIOUS_SEEN: &str = "previous_secret_seen:";
/// What admin commands of earlier versions wrote as [`KEY_SOURCE`] when they found no
/// record; like no record, it says nothing.
const SOURCE_UNKNOWN: &[u8] = b"unknown";
/// Name of the record, written at every server start, of how the server signs:
/// `generated`, or `configured:<kid>` with the kid of `token.secret` (the kid every
/// access token already shows; never the secret).
pub(crate) const KEY_SOURCE: &str = "signing_key_source";

/// Why a signing-key rotation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// `token.secret` is configured: it is rotated in the configuration, not here.
    #[error(
        "token.secret is configured, so the signing key is rotated in the configuration: \
         move the old value to token.previous_secret, set a new token.secret, and restart"
    )]
    Configured,
    /// This process would sign differently from the server that uses the database, so
    /// the tokens it minted would be refused.
    #[error("{0}")]
    NotTheServersKey(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The kid (for a refresh key, the id) of the new key.
    pub kid: String,
    /// The kid or id of the key it replaced.
    pub previous_kid: Option<String>,
    /// When the replaced key stops verifying (Unix seconds).
    pub retire_at: u64,
}

/// The refresh keys in force, as stored: what the service verifies with and what an
/// export with sessions carries.
#[derive(Debug, Clone)]
pub(crate) struct RefreshKeyMaterial {
    /// The key that tags new tokens.
    pub(crate) current: Secret<Vec<u8>>,
    /// The replaced keys [`RefreshKeys`] keeps in force, latest retire time first.
    pub(crate) retired: Vec<RetiredKey>,
}

impl RefreshKeyMaterial {
    /// The keys, ready to tag and verify.
    pub(crate) fn keys(&self) -> RefreshKeys {
        RefreshKeys::new(
            RefreshKey::new(self.current.expose().clone()),
            self.retired
                .iter()
                .map(|k| (RefreshKey::new(k.key.expose().clone()), k.retire_at))
                .collect(),
        )
    }
}

/// The refresh keys in force at `now`: the current one (generated and stored at first
/// start) and the retired ones not yet retired, as many as [`RefreshKeys`] keeps.
pub(crate) async fn refresh_key_material<S: Store>(
    store: &S,
    now: u64,
) -> Result<RefreshKeyMaterial, StoreError> {
    let current = store
        .key_or_init(REFRESH_KEY, || random_bytes::<32>().to_vec())
        .await?;
    let mut retired = store.retired_keys(REFRESH_KEY).await?;
    retired.retain(|k| now < k.retire_at);
    let mut material = RefreshKeyMaterial {
        current: Secret::new(current),
        retired,
    };
    // The ring decides which retired keys count; the material keeps exactly those.
    let kept = material.keys().retired_ids();
    material
        .retired
        .sort_by_key(|k| std::cmp::Reverse(k.retire_at));
    let mut seen = Vec::new();
    material.retired.retain(|k| {
        let id = refresh_key_id(k.key.expose());
        let keep = !seen.contains(&id) && kept.iter().any(|(kept, _)| *kept == id);
        seen.push(id);
        keep
    });
    Ok(material)
}

/// [`refresh_key_material`], ready to use.
pub(crate) async fn refresh_keys<S: Store>(store: &S, now: u64) -> Result<RefreshKeys, StoreError> {
    Ok(refresh_key_material(store, now).await?.keys())
}

/// Replaces the key that tags refresh tokens with a fresh one. New sessions and every
/// rotation's successor are tagged with it from now on; the replaced key keeps verifying
/// tags until `now + token.refresh_ttl_secs`, so the older tokens of sessions alive today
/// are still recognised (reuse) until those sessions end. A leaked key is answered so: a
/// session renewed after the rotation has a current token the old key cannot make.
pub(crate) async fn rotate_refresh_key<S: Store>(
    store: &S,
    token: &TokenConfig,
    now: u64,
) -> Result<KeyRotation, StoreError> {
    // Generated first if absent, so that there is a key to keep verifying.
    refresh_key_material(store, now).await?;
    let fresh = random_bytes::<32>().to_vec();
    let retire_at = now.saturating_add(token.refresh_ttl_secs);
    let replaced = store
        .rotate_key(REFRESH_KEY, fresh.clone(), retire_at, now)
        .await?;
    let rotation = KeyRotation {
        kid: refresh_key_id(&fresh),
        previous_kid: replaced.as_deref().map(refresh_key_id),
        retire_at,
    };
    tracing::info!(
        id = %rotation.kid,
        previous_id = ?rotation.previous_kid,
        retire_at,
        "refresh key rotated"
    );
    Ok(rotation)
}

/// Makes `adopted` the refresh keys, as an import into an empty database does with the
/// keys of the database the file came from: without them, the imported sessions' tokens
/// older than the last rotation could not be told from invented ones, and presenting one
/// would not revoke its family.
///
/// [`Store::rotate_key`] keeps the key it replaces until the retire time it is given, so
/// the retired keys go in oldest first, each replaced by the next with its own retire
/// time, and the current key last. The database is empty, so its own key tagged no token
/// and retires now.
pub(crate) async fn adopt_refresh_keys<S: Store>(
    store: &S,
    adopted: RefreshKeyMaterial,
    now: u64,
) -> Result<(), StoreError> {
    let mut retired: Vec<RetiredKey> = adopted
        .retired
        .into_iter()
        .filter(|k| now < k.retire_at)
        .collect();
    retired.sort_by_key(|k| k.retire_at);
    let stored = refresh_key_material(store, now).await?;
    let has = |key: &RetiredKey| stored.retired.iter().any(|k| k.key == key.key);
    if stored.current == adopted.current && retired.iter().all(has) {
        return Ok(());
    }
    let mut in_place = stored.current.expose().clone();
    let mut retire_at = now;
    for key in retired
        .into_iter()
        .map(|k| (k.key.expose().clone(), k.retire_at))
        .chain(std::iter::once((adopted.current.expose().clone(), 0)))
    {
        let (bytes, its_retire_at) = key;
        if bytes != in_place {
            store
                .rotate_key(REFRESH_KEY, bytes.clone(), retire_at, now)
                .await?;
            in_place = bytes;
        }
        retire_at = its_retire_at;
    }
    Ok(())
}

/// The keys in force at `now` for `token`, generating and storing a signing key on first
/// start when none is configured.
pub(crate) async fn load<S: Store>(
    store: &S,
    token: &TokenConfig,
    now: u64,
) -> Result<KeyRing, StoreError> {
    let configured = token.secret.expose();
    if configured.is_empty() {
        let records = generated_keys(store, token, now).await?;
        return KeyRing::from_records(&records).map_err(|e| StoreError::Corrupt(e.to_string()));
    }

    let mut ring = KeyRing::new(configured.as_bytes());
    let previous = token.previous_secret.expose();
    if !previous.is_empty() {
        let kid = kid_of(previous.as_bytes());
        let seen = store
            .key_or_init(&format!("{PREVIOUS_SEEN}{kid}"), || {
                now.to_be_bytes().to_vec()
            })
            .await?;
        let seen = <[u8; 8]>::try_from(seen.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("bad previous_secret_seen record".into()))?;
        let retire_at = seen + token.access_ttl_secs;
        if now < retire_at {
            tracing::info!(
                previous_kid = %kid,
                retire_at,
                "token.previous_secret verifies tokens it signed until it retires"
            );
            ring = ring.with_previous(previous.as_bytes(), retire_at);
        } else {
            tracing::warn!(
                previous_kid = %kid,
                "token.previous_secret is retired (every token it signed has expired); remove it"
            );
        }
    }
    Ok(ring)
}

/// The generated signing keys, made on first use: a key of `token.algorithm`, or the
/// generated HS256 key (and the keys its rotations replaced, until they retire) of a
/// database that had it before keys had records. The first key signs from the start of
/// time: no instance, whatever its clock, sees it as not yet signing.
async fn generated_keys<S: Store>(
    store: &S,
    token: &TokenConfig,
    now: u64,
) -> Result<Vec<SigningKeyRecord>, StoreError> {
    for _ in 0..3 {
        let stored = store.signing_keys().await?;
        if !stored.is_empty() {
            return Ok(stored);
        }
        let first = match store.key(SIGNING_KEY).await? {
            Some(legacy) => adopted_hs256(&legacy, store.retired_keys(SIGNING_KEY).await?, now),
            None => vec![record(
                token.algorithm,
                generate_key(token.algorithm),
                now,
                0,
            )?],
        };
        // Another instance may make its own first key at the same moment: one wins.
        if store.swap_signing_keys(&[], &first).await? {
            if let Some(key) = first.last() {
                tracing::info!(kid = %key.kid, algorithm = key.algorithm.name(), "signing key made");
            }
            return Ok(first);
        }
    }
    Err(StoreError::Io(
        "the signing keys kept changing while they were read".into(),
    ))
}

/// The records of a generated HS256 key kept before keys had records: the key, signing,
/// after the keys it replaced that have not retired at `now`.
fn adopted_hs256(current: &[u8], retired: Vec<RetiredKey>, now: u64) -> Vec<SigningKeyRecord> {
    let hs256 = |key: &[u8], retires_at| SigningKeyRecord {
        kid: kid_of(key),
        algorithm: KeyAlgorithm::HS256,
        private: Secret::new(key.to_vec()),
        created_at: 0,
        signs_at: 0,
        retires_at,
    };
    let current = hs256(current, None);
    let mut records: Vec<SigningKeyRecord> = retired
        .iter()
        .filter(|k| now < k.retire_at)
        .map(|k| hs256(k.key.expose(), Some(k.retire_at)))
        .filter(|k| k.kid != current.kid)
        .collect();
    records.push(current);
    records
}

/// A record of new private material.
fn record(
    algorithm: KeyAlgorithm,
    private: Vec<u8>,
    now: u64,
    signs_at: u64,
) -> Result<SigningKeyRecord, StoreError> {
    let kid = crate::token::kid_of_private(algorithm, &private)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(SigningKeyRecord {
        kid,
        algorithm,
        private: Secret::new(private),
        created_at: now,
        signs_at,
        retires_at: None,
    })
}

/// What a signing-key rotation did, with the times the operator is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRotation {
    /// The kid of the new key.
    pub kid: String,
    /// Its algorithm (`token.algorithm`).
    pub algorithm: KeyAlgorithm,
    /// When it begins to sign (now with `--now`); it is published from now on.
    pub signs_at: u64,
    /// The key that signed until then.
    pub previous_kid: Option<String>,
    /// That key's algorithm.
    pub previous_algorithm: Option<KeyAlgorithm>,
    /// When the replaced key stops verifying: `signs_at` + `token.access_ttl_secs`.
    pub retires_at: u64,
    /// A standby key of an earlier rotation that had not signed yet, dropped: it had
    /// signed nothing.
    pub dropped_standby: Option<String>,
}

/// The keys after a rotation at `now` that brings in `fresh` (its `signs_at` set): the
/// keys gone at `now` are dropped, and so is a standby key that has not signed yet; the
/// key that signs at `now` retires `access_ttl_secs` after `fresh` begins to sign.
/// Returns the keys, the replaced key and the dropped standby key.
fn plan_rotation(
    stored: &[SigningKeyRecord],
    fresh: SigningKeyRecord,
    now: u64,
    access_ttl_secs: u64,
) -> (
    Vec<SigningKeyRecord>,
    Option<SigningKeyRecord>,
    Option<SigningKeyRecord>,
) {
    let mut kept: Vec<SigningKeyRecord> = stored
        .iter()
        .filter(|k| k.retires_at.is_none_or(|r| now < r))
        .cloned()
        .collect();
    let dropped = kept.iter().rfind(|k| now < k.signs_at).cloned();
    kept.retain(|k| k.signs_at <= now);
    // The signer: the last in schedule order, as the key ring orders them.
    kept.sort_by_key(|k| (k.signs_at, k.retires_at.is_none(), k.created_at));
    let replaced = kept.last_mut().map(|signer| {
        signer.retires_at = Some(fresh.signs_at.saturating_add(access_ttl_secs));
        signer.clone()
    });
    kept.push(fresh);
    (kept, replaced, dropped)
}

/// Adds a generated signing key of `token.algorithm` and schedules the switch to it:
/// published at once, signing from `token.key_publish_secs` from now (or at once when
/// `immediately`), the key it replaces retiring one access-token lifetime after that.
/// Refused when `token.secret` is set.
///
/// Works on any open store: the CLI's (server stopped, or PostgreSQL) or the running
/// server's, through the service's `rotate_signing_key`, which also puts the new keys in
/// force. The rotation is one store call with every value of the `key.rotated` event at
/// hand (kid, previous kid, when it signs, when the old one retires).
pub(crate) async fn rotate_signing_key<S: Store>(
    store: &S,
    token: &TokenConfig,
    now: u64,
    immediately: bool,
) -> Result<SigningKeyRotation, KeyError> {
    if !token.secret.expose().is_empty() {
        return Err(KeyError::Configured);
    }
    let signs_at = if immediately {
        now
    } else {
        now.saturating_add(token.key_publish_secs)
    };
    for _ in 0..5 {
        let stored = generated_keys(store, token, now).await?;
        let fresh = record(
            token.algorithm,
            generate_key(token.algorithm),
            now,
            signs_at,
        )?;
        let (keys, replaced, dropped) =
            plan_rotation(&stored, fresh.clone(), now, token.access_ttl_secs);
        if !store.swap_signing_keys(&stored, &keys).await? {
            continue;
        }
        let rotation = SigningKeyRotation {
            kid: fresh.kid,
            algorithm: fresh.algorithm,
            signs_at,
            previous_kid: replaced.as_ref().map(|k| k.kid.clone()),
            previous_algorithm: replaced.as_ref().map(|k| k.algorithm),
            retires_at: signs_at.saturating_add(token.access_ttl_secs),
            dropped_standby: dropped.map(|k| k.kid),
        };
        tracing::info!(
            kid = %rotation.kid,
            algorithm = rotation.algorithm.name(),
            signs_at = rotation.signs_at,
            previous_kid = ?rotation.previous_kid,
            retires_at = rotation.retires_at,
            dropped_standby = ?rotation.dropped_standby,
            "signing key rotated"
        );
        return Ok(rotation);
    }
    Err(KeyError::Storage(StoreError::Io(
        "the signing keys kept changing during the rotation; try again".into(),
    )))
}

/// How `token` signs, as [`KEY_SOURCE`] records it.
fn source_of(token: &TokenConfig) -> Vec<u8> {
    let configured = token.secret.expose();
    if configured.is_empty() {
        b"generated".to_vec()
    } else {
        format!("configured:{}", kid_of(configured.as_bytes())).into_bytes()
    }
}

/// Records how the server signs (called at every server start), so that admin commands
/// run on the stopped server's database can tell whether they sign the same way.
pub(crate) async fn record_key_source<S: Store>(
    store: &S,
    token: &TokenConfig,
) -> Result<(), StoreError> {
    let mine = source_of(token);
    if store.meta(KEY_SOURCE).await?.as_deref() != Some(&mine[..]) {
        store.put_meta(KEY_SOURCE, mine).await?;
    }
    Ok(())
}

/// Checks that `token` signs as the server that last served this database did, before an
/// admin command run on the database directly mints a token or rotates the key.
///
/// Without this, an operator who runs `liveuser token mint` without the environment that
/// holds the server's `LIVEUSER_TOKEN_SECRET` would get a token signed with a key
/// generated in the database — one the server refuses. A command that carries the new
/// `token.secret` of a configured rotation (the recorded one moved to
/// `token.previous_secret`) is accepted: the server will sign with it after its restart.
pub(crate) async fn check_key_source<S: Store>(
    store: &S,
    token: &TokenConfig,
) -> Result<(), KeyError> {
    // Only reads: a database no server of this version has served has no record, and
    // then there is nothing to compare with.
    let Some(recorded) = store.meta(KEY_SOURCE).await? else {
        return Ok(());
    };
    if recorded == SOURCE_UNKNOWN || recorded == source_of(token) {
        return Ok(());
    }
    let previous = token.previous_secret.expose();
    if !previous.is_empty()
        && recorded == format!("configured:{}", kid_of(previous.as_bytes())).into_bytes()
    {
        return Ok(());
    }
    Err(KeyError::NotTheServersKey(
        if recorded.starts_with(b"configured:") && token.secret.expose().is_empty() {
            "the server signs with token.secret, but this command runs without it and its \
             tokens would be refused; run it with the server's environment \
             (LIVEUSER_TOKEN_SECRET, e.g. from its EnvironmentFile)"
        } else if recorded.starts_with(b"configured:") {
            "the server signs with a different token.secret than this command has, so its \
             tokens would be refused; run it with the server's configuration and environment"
        } else {
            "the server signs with a key generated in its database, but this command has \
             token.secret set and its tokens would be refused; run it with the server's \
             configuration and environment"
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::store::SledStore;

    fn generated() -> TokenConfig {
        TokenConfig {
            access_ttl_secs: 600,
            ..TokenConfig::default()
        }
    }

    #[tokio::test]
    async fn a_rotated_in_key_is_published_first_signs_after_the_wait_and_the_old_one_retires() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let token = generated();
        let before = load(&store, &token, 1000).await.unwrap();
        let again = load(&store, &token, 1000).await.unwrap();
        assert_eq!(
            before.current_kid(1000),
            again.current_kid(1000),
            "the key is kept"
        );
        assert_eq!(
            before.current_algorithm(1000),
            KeyAlgorithm::ES256,
            "the default"
        );

        let rotation = rotate_signing_key(&store, &token, 2000, false)
            .await
            .unwrap();
        assert_eq!(
            rotation.previous_kid.as_deref(),
            Some(before.current_kid(1000))
        );
        assert_eq!(rotation.signs_at, 2000 + token.key_publish_secs);
        assert_eq!(rotation.retires_at, rotation.signs_at + 600);

        let after = load(&store, &token, 2000).await.unwrap();
        assert_eq!(after.current_kid(2000), before.current_kid(1000), "not yet");
        assert_eq!(
            after.standby_kids(2000),
            vec![(rotation.kid.clone(), rotation.signs_at)]
        );
        let switched = rotation.signs_at;
        assert_eq!(
            after.current_kid(switched),
            rotation.kid,
            "no reload needed"
        );
        assert_eq!(
            after.previous_kids(switched),
            vec![(before.current_kid(1000).to_string(), rotation.retires_at)]
        );
        assert!(after.previous_kids(rotation.retires_at).is_empty());
    }

    #[tokio::test]
    async fn a_rotation_now_signs_at_once_and_drops_a_standby_key_that_signed_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let token = generated();
        let k0 = load(&store, &token, 0)
            .await
            .unwrap()
            .current_kid(0)
            .to_string();
        let r1 = rotate_signing_key(&store, &token, 100, false)
            .await
            .unwrap();
        let r2 = rotate_signing_key(&store, &token, 200, true).await.unwrap();
        assert_eq!(r2.dropped_standby.as_deref(), Some(r1.kid.as_str()));
        assert_eq!(
            r2.previous_kid.as_deref(),
            Some(k0.as_str()),
            "k1 never signed"
        );
        assert_eq!((r2.signs_at, r2.retires_at), (200, 800));
        let ring = load(&store, &token, 200).await.unwrap();
        assert_eq!(ring.current_kid(200), r2.kid);
        assert_eq!(ring.previous_kids(200), vec![(k0.clone(), 800)]);
        assert!(ring.standby_kids(200).is_empty());
        // A rotation after the first old key retired drops it from storage.
        let r3 = rotate_signing_key(&store, &token, 900, true).await.unwrap();
        let kids: Vec<String> = store
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, vec![r2.kid.clone(), r3.kid.clone()]);
    }

    #[tokio::test]
    async fn a_database_that_signed_hs256_keeps_its_key_until_a_rotation_brings_es256() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        // As a release before typed keys left it: a generated HS256 key and one it
        // replaced, retiring at 5000.
        store
            .rotate_key(SIGNING_KEY, vec![1; 32], 0, 0)
            .await
            .unwrap();
        store
            .rotate_key(SIGNING_KEY, vec![2; 32], 5000, 0)
            .await
            .unwrap();
        let token = generated();
        let ring = load(&store, &token, 1000).await.unwrap();
        assert_eq!(ring.current_kid(1000), kid_of(&[2; 32]));
        assert_eq!(ring.current_algorithm(1000), KeyAlgorithm::HS256);
        assert_eq!(ring.previous_kids(1000), vec![(kid_of(&[1; 32]), 5000)]);

        let rotation = rotate_signing_key(&store, &token, 1000, false)
            .await
            .unwrap();
        assert_eq!(rotation.algorithm, KeyAlgorithm::ES256);
        assert_eq!(rotation.previous_algorithm, Some(KeyAlgorithm::HS256));
        let ring = load(&store, &token, rotation.signs_at).await.unwrap();
        assert_eq!(
            ring.current_algorithm(rotation.signs_at),
            KeyAlgorithm::ES256
        );
        assert_eq!(
            ring.previous_kids(rotation.signs_at),
            vec![
                (kid_of(&[1; 32]), 5000),
                (kid_of(&[2; 32]), rotation.retires_at)
            ],
            "the HS256 keys verify their tokens until they expire"
        );
    }

    #[test]
    fn a_rotation_plan_retires_only_the_signer_and_keeps_other_retiring_keys() {
        let key = |kid: &str, signs_at, retires_at| SigningKeyRecord {
            kid: kid.into(),
            algorithm: KeyAlgorithm::ES256,
            private: Secret::new(vec![1]),
            created_at: signs_at,
            signs_at,
            retires_at,
        };
        let stored = vec![
            key("gone", 0, Some(50)),
            key("old", 10, Some(700)),
            key("cur", 100, None),
        ];
        let (keys, replaced, dropped) = plan_rotation(&stored, key("new", 1100, None), 200, 600);
        assert_eq!(replaced.map(|k| k.kid), Some("cur".into()));
        assert_eq!(dropped, None);
        assert_eq!(
            keys,
            vec![
                key("old", 10, Some(700)),
                key("cur", 100, Some(1700)),
                key("new", 1100, None)
            ]
        );
    }

    #[tokio::test]
    async fn a_command_that_would_sign_unlike_the_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let secret = |s: &str| TokenConfig {
            secret: Secret::new(s.repeat(32)),
            ..TokenConfig::default()
        };
        // No server has recorded anything yet: nothing to compare with.
        check_key_source(&store, &generated()).await.unwrap();
        check_key_source(&store, &secret("a")).await.unwrap();

        record_key_source(&store, &secret("a")).await.unwrap();
        check_key_source(&store, &secret("a")).await.unwrap();
        let err = check_key_source(&store, &generated()).await.unwrap_err();
        assert!(err.to_string().contains("runs without it"), "{err}");
        let err = check_key_source(&store, &secret("b")).await.unwrap_err();
        assert!(err.to_string().contains("different token.secret"), "{err}");
        assert!(
            !err.to_string().contains(&"a".repeat(32)),
            "never the secret"
        );
        // The new secret of a configured rotation, before the server's restart.
        let rotating = TokenConfig {
            previous_secret: Secret::new("a".repeat(32)),
            ..secret("b")
        };
        check_key_source(&store, &rotating).await.unwrap();

        // The server changes to a generated key; the record follows.
        record_key_source(&store, &generated()).await.unwrap();
        check_key_source(&store, &generated()).await.unwrap();
        let err = check_key_source(&store, &secret("a")).await.unwrap_err();
        assert!(err.to_string().contains("generated"), "{err}");
    }

    fn ids(material: &RefreshKeyMaterial) -> (String, Vec<(String, u64)>) {
        (
            refresh_key_id(material.current.expose()),
            material
                .retired
                .iter()
                .map(|k| (refresh_key_id(k.key.expose()), k.retire_at))
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_rotated_refresh_key_verifies_for_one_session_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let token = TokenConfig {
            refresh_ttl_secs: 1000,
            ..generated()
        };
        let first = refresh_key_material(&store, 100).await.unwrap();
        let rotation = rotate_refresh_key(&store, &token, 200).await.unwrap();
        assert_eq!(rotation.previous_kid, Some(ids(&first).0.clone()));
        assert_eq!(rotation.retire_at, 1200);
        let after = refresh_key_material(&store, 300).await.unwrap();
        assert_eq!(
            ids(&after),
            (rotation.kid.clone(), vec![(ids(&first).0, 1200)])
        );
        let keys = after.keys();
        assert_eq!(keys.current().id(), rotation.kid);
        assert_eq!(keys.in_force(1199).count(), 2);
        let retired = refresh_key_material(&store, 1200).await.unwrap();
        assert!(
            retired.retired.is_empty(),
            "retired after the session lifetime"
        );
    }

    #[tokio::test]
    async fn only_the_retired_refresh_keys_the_ring_keeps_are_carried() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let token = TokenConfig {
            refresh_ttl_secs: 1000,
            ..generated()
        };
        let mut rotations = Vec::new();
        for at in 0..6 {
            rotations.push(rotate_refresh_key(&store, &token, 100 + at).await.unwrap());
        }
        let material = refresh_key_material(&store, 200).await.unwrap();
        let (current, retired) = ids(&material);
        assert_eq!(current, rotations[5].kid);
        let expected: Vec<(String, u64)> = rotations[1..5]
            .iter()
            .rev()
            .map(|r| (r.kid.clone(), r.retire_at + 1))
            .collect();
        assert_eq!(retired, expected);
        assert_eq!(material.keys().retired_ids(), expected);
    }

    #[tokio::test]
    async fn an_empty_database_adopts_a_files_refresh_keys_with_their_retire_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let own = refresh_key_material(&store, 100).await.unwrap();
        let key = |b: u8| Secret::new(vec![b; 32]);
        let adopted = RefreshKeyMaterial {
            current: key(1),
            retired: vec![
                RetiredKey {
                    key: key(2),
                    retire_at: 900,
                },
                RetiredKey {
                    key: key(3),
                    retire_at: 700,
                },
                RetiredKey {
                    key: key(4),
                    retire_at: 50,
                },
            ],
        };
        adopt_refresh_keys(&store, adopted.clone(), 100)
            .await
            .unwrap();
        let stored = refresh_key_material(&store, 101).await.unwrap();
        let id = |b: u8| refresh_key_id(&[b; 32]);
        assert_eq!(ids(&stored), (id(1), vec![(id(2), 900), (id(3), 700)]));
        assert!(
            !ids(&stored).1.iter().any(|(i, _)| *i == ids(&own).0),
            "the database's own key tagged nothing and is gone"
        );
        // Adopting the same keys again changes nothing.
        adopt_refresh_keys(&store, adopted, 101).await.unwrap();
        let again = refresh_key_material(&store, 102).await.unwrap();
        assert_eq!(ids(&again), ids(&stored));
    }

    #[tokio::test]
    async fn a_configured_secret_is_not_rotated_here_and_its_previous_secret_retires() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        let token = TokenConfig {
            access_ttl_secs: 600,
            secret: Secret::new("n".repeat(32)),
            previous_secret: Secret::new("o".repeat(32)),
            ..TokenConfig::default()
        };
        assert!(matches!(
            rotate_signing_key(&store, &token, 0, false).await,
            Err(KeyError::Configured)
        ));
        let ring = load(&store, &token, 1000).await.unwrap();
        assert_eq!(ring.current_kid(1000), kid_of(&[b'n'; 32]));
        assert_eq!(ring.previous_kids(1000), vec![(kid_of(&[b'o'; 32]), 1600)]);
        // The retire time counts from the first start that saw the previous secret.
        let later = load(&store, &token, 1500).await.unwrap();
        assert_eq!(later.previous_kids(1500), vec![(kid_of(&[b'o'; 32]), 1600)]);
        let retired = load(&store, &token, 1600).await.unwrap();
        assert!(retired.previous_kids(1600).is_empty());
    }
}
