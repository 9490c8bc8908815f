//! Bounded read-through caches in front of sled trees, kept exact by the writers.
//!
//! A miss loads from sled *while holding its shard's lock*, and every writer invalidates
//! the key after its transaction commits, taking the same lock. So a load that read the
//! old value either finishes before the invalidation (which then removes it) or starts
//! after the commit (and reads the new value): a revoked session is never served from
//! the cache. Absent keys are cached too, so unknown uids cost one lookup.
//!
//! Eviction is first-in-first-out per shard, which is enough here: the caches exist to
//! make the per-request reads (the live-session check, QueryUser's records) cheap, and
//! sled's own page cache still sits behind them.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;

// A seeded fast hash (the one hashbrown uses): keys are cached per request, and some
// (uids in QueryUser) are chosen by clients, so the seed keeps collisions unguessable.
use foldhash::fast::RandomState;

const SHARDS: usize = 64;

/// A sharded, bounded map from keys to "value or known absent".
///
/// Slots are found by a seeded 64-bit hash of the key, stored inline in the table, so a
/// lookup touches the table and then the slot's own key (compared in full: two keys with
/// one hash simply take turns in the slot).
pub(super) struct Cache<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    hasher: RandomState,
}

struct Slot<K, V> {
    key: K,
    value: Option<V>,
}

struct Shard<K, V> {
    map: HashMap<u64, Slot<K, V>, BuildHasherDefault<Prehashed>>,
    order: VecDeque<u64>,
    /// Bumped by every invalidation of a key of this shard, so a load that ran without
    /// the lock ([`Cache::stamp`], [`Cache::fill`]) is not remembered if a write may
    /// have overtaken it.
    generation: u64,
}

/// The hasher of the slot table: its keys already are hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in, to stay correct.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    /// A cache of about `capacity` entries; 0 disables it (every get loads).
    pub(super) fn new(capacity: usize) -> Self {
        // A little slack per shard, since keys never spread perfectly evenly.
        let per_shard = capacity.div_ceil(SHARDS) + capacity.div_ceil(SHARDS * 8);
        Cache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        order: VecDeque::new(),
                        generation: 0,
                    })
                })
                .collect(),
            per_shard,
            hasher: RandomState::default(),
        }
    }

    /// The cached value, or `load()`'s, which is then remembered.
    pub(super) fn get_or_load<E>(
        &self,
        key: &K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if self.per_shard == 0 {
            return load();
        }
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = shard.map.get(&hash)
            && slot.key == *key
        {
            return Ok(slot.value.clone());
        }
        let value = load()?;
        shard.remember(hash, key.clone(), value.clone(), self.per_shard);
        Ok(value)
    }

    /// The cached value of `key` (`Some(None)`: known to be absent), or `None` on a miss.
    /// For loads that cannot run under the shard's lock (an asynchronous database): take
    /// a [`Cache::stamp`] before loading and [`Cache::fill`] after.
    pub(super) fn get(&self, key: &K) -> Option<Option<V>> {
        if self.per_shard == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match shard.map.get(&hash) {
            Some(slot) if slot.key == *key => Some(slot.value.clone()),
            _ => None,
        }
    }

    /// The invalidation count of `key`'s shard, taken before a load started.
    pub(super) fn stamp(&self, key: &K) -> u64 {
        if self.per_shard == 0 {
            return 0;
        }
        let hash = self.hasher.hash_one(key);
        self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Remembers a loaded value, unless an invalidation of its shard happened since
    /// `stamp` was taken (the load may then have read what the invalidating write
    /// replaced). Invalidations come after their write is committed, so a load stamped
    /// after one reads at least that write.
    pub(super) fn fill(&self, key: &K, value: Option<V>, stamp: u64) {
        if self.per_shard == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.generation == stamp {
            shard.remember(hash, key.clone(), value, self.per_shard);
        }
    }

    /// After a write of `key` that returned the stored `value`: remembers it, unless an
    /// invalidation of its shard happened since `stamp` was taken (before the write), in
    /// which case `key` is forgotten instead (a later write, here or elsewhere, may have
    /// overtaken this one). Saves the read after the write that `invalidate` would cost.
    pub(super) fn replace(&self, key: &K, value: Option<V>, stamp: u64) {
        if self.per_shard == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.generation == stamp {
            shard.remember(hash, key.clone(), value, self.per_shard);
        } else {
            shard.map.remove(&hash);
            shard.generation += 1;
        }
    }

    /// Forgets everything (e.g. when invalidations from other instances may have been
    /// missed).
    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.map.clear();
            shard.order.clear();
            shard.generation += 1;
        }
    }

    /// Forgets `key`; writers call this after their change is committed.
    pub(super) fn invalidate(&self, key: &K) {
        if self.per_shard == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Whatever key holds the slot: removing a colliding one only costs a reload.
        shard.map.remove(&hash);
        shard.generation += 1;
    }
}

impl<K, V> Shard<K, V> {
    fn remember(&mut self, hash: u64, key: K, value: Option<V>, per_shard: usize) {
        if self.map.insert(hash, Slot { key, value }).is_none() {
            self.order.push_back(hash);
            if self.map.len() > per_shard {
                self.evict_one();
            }
            if self.order.len() > 2 * per_shard {
                // Invalidated keys leave stale entries in the queue; rebuild it now and then.
                let live: VecDeque<u64> = self.map.keys().copied().collect();
                self.order = live;
            }
        }
    }

    fn evict_one(&mut self) {
        while let Some(oldest) = self.order.pop_front() {
            if self.map.remove(&oldest).is_some() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn a_miss_loads_once_and_a_hit_does_not_load() {
        let cache: Cache<u32, String> = Cache::new(100);
        let mut loads = 0;
        for _ in 0..3 {
            let v = cache
                .get_or_load(&1, || {
                    loads += 1;
                    Ok::<_, Infallible>(Some("one".to_string()))
                })
                .unwrap();
            assert_eq!(v.as_deref(), Some("one"));
        }
        assert_eq!(loads, 1);
    }

    #[test]
    fn absent_keys_are_remembered_until_invalidated() {
        let cache: Cache<u32, u32> = Cache::new(100);
        assert_eq!(
            cache.get_or_load(&7, || Ok::<_, Infallible>(None)).unwrap(),
            None
        );
        assert_eq!(
            cache
                .get_or_load(&7, || Ok::<_, Infallible>(Some(1)))
                .unwrap(),
            None
        );
        cache.invalidate(&7);
        assert_eq!(
            cache
                .get_or_load(&7, || Ok::<_, Infallible>(Some(1)))
                .unwrap(),
            Some(1)
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache: Cache<u32, u32> = Cache::new(640);
        for i in 0..100_000 {
            cache
                .get_or_load(&i, || Ok::<_, Infallible>(Some(i)))
                .unwrap();
            if i % 3 == 0 {
                cache.invalidate(&i);
            }
        }
        for shard in cache.shards.iter() {
            let shard = shard.lock().unwrap();
            // 640 over 64 shards, plus the slack of one in eight.
            assert!(shard.map.len() <= 12);
            assert!(shard.order.len() <= 24);
        }
    }

    #[test]
    fn load_errors_are_not_cached() {
        let cache: Cache<u32, u32> = Cache::new(100);
        assert!(cache.get_or_load(&1, || Err("disk")).is_err());
        assert_eq!(
            cache.get_or_load(&1, || Ok::<_, &str>(Some(5))).unwrap(),
            Some(5)
        );
    }

    #[test]
    fn a_load_overtaken_by_an_invalidation_is_not_remembered() {
        let cache: Cache<u32, u32> = Cache::new(100);
        let stamp = cache.stamp(&1);
        cache.invalidate(&1); // a write committed while the load was in flight
        cache.fill(&1, Some(1), stamp);
        assert_eq!(cache.get(&1), None, "the possibly stale value is not kept");
        let stamp = cache.stamp(&1);
        cache.fill(&1, Some(2), stamp);
        assert_eq!(cache.get(&1), Some(Some(2)));
        cache.clear();
        assert_eq!(cache.get(&1), None);
        cache.fill(&1, None, stamp);
        assert_eq!(cache.get(&1), None, "a stamp from before clear() is stale");
        let stamp = cache.stamp(&1);
        cache.replace(&1, Some(3), stamp);
        assert_eq!(cache.get(&1), Some(Some(3)), "a write's result is kept");
        let stamp = cache.stamp(&1);
        cache.invalidate(&2); // perhaps the same shard: replace must not trust it
        cache.replace(&1, Some(4), stamp);
        if cache.stamp(&1) != stamp {
            assert_ne!(cache.get(&1), Some(Some(4)));
        }
    }

    #[test]
    fn a_zero_capacity_cache_always_loads() {
        let cache: Cache<u32, u32> = Cache::new(0);
        cache
            .get_or_load(&1, || Ok::<_, Infallible>(Some(1)))
            .unwrap();
        assert_eq!(
            cache
                .get_or_load(&1, || Ok::<_, Infallible>(Some(2)))
                .unwrap(),
            Some(2)
        );
    }
}
