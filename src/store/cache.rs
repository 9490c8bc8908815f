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
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

// A seeded fast hash (the one hashbrown uses): keys are cached per request, and some
// (uids in QueryUser) are chosen by clients, so the seed keeps collisions unguessable.
use foldhash::fast::RandomState;

const SHARDS: usize = 64;

/// A sharded, bounded map from keys to "value or known absent".
pub struct Cache<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    hasher: RandomState,
}

struct Shard<K, V> {
    map: HashMap<K, Option<V>, RandomState>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    /// A cache of about `capacity` entries; 0 disables it (every get loads).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        Cache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard,
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K, V>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The cached value, or `load()`'s, which is then remembered.
    pub fn get_or_load<E>(
        &self,
        key: &K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E> {
        if self.per_shard == 0 {
            return load();
        }
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = shard.map.get(key) {
            return Ok(hit.clone());
        }
        let value = load()?;
        if shard.map.len() >= self.per_shard {
            shard.evict_one();
        }
        shard.map.insert(key.clone(), value.clone());
        shard.order.push_back(key.clone());
        if shard.order.len() > 2 * self.per_shard {
            // Invalidated keys leave stale entries in the queue; rebuild it now and then.
            let live: VecDeque<K> = shard.map.keys().cloned().collect();
            shard.order = live;
        }
        Ok(value)
    }

    /// Forgets `key`; writers call this after their change is committed.
    pub fn invalidate(&self, key: &K) {
        if self.per_shard == 0 {
            return;
        }
        self.shard(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .remove(key);
    }
}

impl<K: Hash + Eq, V> Shard<K, V> {
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
            assert!(shard.map.len() <= 10);
            assert!(shard.order.len() <= 20);
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
