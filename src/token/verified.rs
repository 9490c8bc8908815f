//! Access tokens already verified, so that a token presented again is not verified again.
//!
//! A client sends the same access token with every call of its two-hour life; verifying
//! an ES256 signature costs about 42 µs, a lookup here about 1 µs (SHA-256 of the token
//! and a map probe). An entry is keyed by SHA-256 of the whole token, so only the very
//! bytes that were verified hit it, and holds what the checks after the signature need:
//! the key that verified it and the claims. What a hit still checks, on every call, is
//! everything that can change while the token is unchanged — that its key still
//! verifies at this moment with the same algorithm (a key that retires or is removed
//! makes its cached tokens fail), its expiry, and, in the service, that its session is
//! live.
//!
//! Memory is bounded: at most [`CAPACITY`] entries (about 160 bytes each), in shards
//! evicted first in, first out; an expired entry is dropped when met.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::model::KeyAlgorithm;

/// Most tokens remembered at once: about 10 MB. Tokens in use beyond it are verified
/// again on their next call, which is slower, never wrong.
pub(crate) const CAPACITY: usize = 65_536;

const SHARDS: usize = 32;

/// What a verification established about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The kid of the key that verified it.
    pub(crate) kid: Box<str>,
    /// That key's algorithm when it verified it.
    pub(crate) algorithm: KeyAlgorithm,
    /// The claims, already checked against the issuer and audience.
    pub(crate) claims: super::AccessClaims,
}

struct Shard {
    map: HashMap<[u8; 32], Verified>,
    order: VecDeque<[u8; 32]>,
}

/// The cache: sharded by the token hash, whose bytes are uniformly distributed already.
pub(crate) struct VerifiedTokens {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` entries (0: none is kept).
    pub(crate) fn new(capacity: usize) -> Self {
        VerifiedTokens {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, hash: &[u8; 32]) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(hash[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of the token hashing to `hash`, if it has not expired at `now`.
    pub(crate) fn get(&self, hash: &[u8; 32], now: u64) -> Option<Verified> {
        let mut shard = self.shard(hash);
        let entry = shard.map.get(hash)?;
        if now >= entry.claims.exp {
            shard.map.remove(hash);
            return None;
        }
        Some(entry.clone())
    }

    /// Remembers a verified token; the oldest entry of its shard leaves if it is full.
    pub(crate) fn insert(&self, hash: [u8; 32], verified: Verified) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&hash);
        if shard.map.insert(hash, verified).is_some() {
            return;
        }
        shard.order.push_back(hash);
        while shard.map.len() > self.per_shard {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            shard.map.remove(&oldest);
        }
        // Entries removed by `get` or `forget` leave their place in the order behind;
        // drop those once they are most of it, so the order stays bounded too.
        if shard.order.len() > 2 * self.per_shard.max(1) {
            let Shard { map, order } = &mut *shard;
            order.retain(|h| map.contains_key(h));
        }
    }

    /// Forgets a token (its key no longer verifies it).
    pub(crate) fn forget(&self, hash: &[u8; 32]) {
        self.shard(hash).map.remove(hash);
    }

    /// How many entries are held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::AccessClaims;

    fn verified(exp: u64) -> Verified {
        Verified {
            kid: "k".into(),
            algorithm: KeyAlgorithm::ES256,
            claims: AccessClaims {
                iss: "i".into(),
                aud: "a".into(),
                sub: "u".into(),
                sid: "s".into(),
                iat: 0,
                exp,
                nbf: None,
            },
        }
    }

    fn hash(n: u32) -> [u8; 32] {
        crate::primitives::sha256(&n.to_be_bytes())
    }

    #[test]
    fn an_entry_is_served_until_its_token_expires() {
        let cache = VerifiedTokens::new(100);
        cache.insert(hash(1), verified(1000));
        assert_eq!(cache.get(&hash(1), 999), Some(verified(1000)));
        assert_eq!(cache.get(&hash(2), 999), None);
        assert_eq!(cache.get(&hash(1), 1000), None, "expired");
        assert_eq!(cache.get(&hash(1), 0), None, "and dropped");
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let cache = VerifiedTokens::new(64);
        for n in 0..10_000 {
            cache.insert(hash(n), verified(u64::MAX));
            if n % 3 == 0 {
                cache.forget(&hash(n));
            }
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(cache.len() >= 32, "{}", cache.len());
        assert!(cache.get(&hash(9_998), 0).is_some(), "the newest are kept");
        for shard in cache.shards.iter() {
            assert!(shard.lock().unwrap().order.len() <= 2 * 2 + 1);
        }
        let none = VerifiedTokens::new(0);
        none.insert(hash(1), verified(u64::MAX));
        assert_eq!(none.get(&hash(1), 0), None);
    }
}
