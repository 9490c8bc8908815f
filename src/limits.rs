//! Abuse limits: a token bucket per client address on Login and RenewToken.
//!
//! Each address may make `per_min` calls in a burst, refilled at `per_min` per minute;
//! past that it is answered `resource_exhausted` with a `Retry-After`. IPv6 clients are
//! counted per /64, the block one subscriber usually holds, so rotating addresses inside
//! it gains nothing.
//!
//! Memory is bounded: at most `max_addresses` buckets per limiter. When the table is
//! full, buckets that have refilled completely are dropped first (they are the same as
//! no bucket at all); if that frees nothing, the quarter of buckets holding the most
//! tokens goes. Those are the clients that used the least, so an attacker who floods
//! from many addresses cannot get its own drained buckets evicted before them.
//!
//! The client address is the TCP peer's, unless the peer is one of
//! `limits.trusted_proxies`: then it is the rightmost `X-Forwarded-For` entry that is
//! not itself a trusted proxy (entries to its left were written by the client and prove
//! nothing).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::LimitsConfig;

/// The key a client is counted under: its IPv4 address, or its IPv6 /64. The rate
/// limits and the per-address connection cap group addresses alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    pub(crate) fn of(addr: IpAddr) -> Self {
        match canonical(addr) {
            IpAddr::V4(v4) => ClientKey::V4(v4.into()),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` (a dual-stack listener shows it so).
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per client address, in a bounded table.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_min: u32,
    max_addresses: usize,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl RateLimiter {
    /// `per_min` calls per minute per address (0: no limit), tracking at most
    /// `max_addresses` addresses.
    pub(crate) fn new(per_min: u32, max_addresses: usize) -> Self {
        RateLimiter {
            per_min,
            max_addresses: max_addresses.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call from `addr`'s bucket now; `Err(secs)` to wait if it is empty.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<(), u64> {
        self.check_at(addr, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (tests move time without sleeping).
    pub(crate) fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        if self.per_min == 0 {
            return Ok(());
        }
        let key = ClientKey::of(addr);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(&key) {
            bucket.tokens = self.level(bucket, now);
            bucket.at = bucket.at.max(now);
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                return Ok(());
            }
            let per_sec = f64::from(self.per_min) / 60.0;
            return Err(((1.0 - bucket.tokens) / per_sec).ceil().max(1.0) as u64);
        }
        if buckets.len() >= self.max_addresses {
            self.make_room(&mut buckets, now);
        }
        buckets.insert(
            key,
            Bucket {
                tokens: f64::from(self.per_min) - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    /// How many addresses are tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The bucket's tokens at `now`, refilled since it was last touched.
    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let per_sec = f64::from(self.per_min) / 60.0;
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * per_sec).min(f64::from(self.per_min))
    }

    fn make_room(&self, buckets: &mut HashMap<ClientKey, Bucket>, now: Instant) {
        let full = f64::from(self.per_min);
        buckets.retain(|_, b| self.level(b, now) < full);
        if buckets.len() < self.max_addresses {
            return;
        }
        let mut levels: Vec<(f64, ClientKey)> = buckets
            .iter()
            .map(|(k, b)| (self.level(b, now), *k))
            .collect();
        let evict = (self.max_addresses / 4).max(1);
        let split = levels.len() - evict;
        levels.select_nth_unstable_by(split, |a, b| a.0.total_cmp(&b.0));
        for (_, key) in &levels[split..] {
            buckets.remove(key);
        }
    }
}

/// The limits of the public API: one limiter per limited method, and who may speak
/// for a client through `X-Forwarded-For`.
#[derive(Debug)]
pub(crate) struct Limits {
    /// `Wx.Login`.
    pub login: RateLimiter,
    /// `Wx.RenewToken`.
    pub renew: RateLimiter,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    /// The limits `[limits]` describes.
    pub(crate) fn from_config(limits: &LimitsConfig) -> Self {
        Limits {
            login: RateLimiter::new(limits.login_per_min, limits.max_tracked_addresses),
            renew: RateLimiter::new(limits.renew_per_min, limits.max_tracked_addresses),
            trusted_proxies: limits
                .trusted_proxies
                .iter()
                .copied()
                .map(canonical)
                .collect(),
        }
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted_proxies.contains(&canonical(addr))
    }

    /// The client behind a request from `peer` carrying these `X-Forwarded-For` values
    /// (in header order).
    pub(crate) fn client_addr<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut leftmost = peer;
        for entry in entries.iter().rev() {
            let Some(addr) = parse_forwarded(entry) else {
                // A proxy we trust wrote something we cannot read: believe only the peer.
                return peer;
            };
            if !self.is_trusted(addr) {
                return addr;
            }
            leftmost = addr;
        }
        leftmost
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    if let Ok(sock) = entry.parse::<std::net::SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<Ipv6Addr>().ok())
        .map(|v6| canonical(IpAddr::V6(v6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_of_per_min_calls_passes_then_the_bucket_refills_at_the_rate() {
        let limiter = RateLimiter::new(6, 100);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert_eq!(limiter.check_at(ip("10.0.0.1"), t0), Ok(()));
        }
        // One token comes back every 10 s.
        assert_eq!(limiter.check_at(ip("10.0.0.1"), t0), Err(10));
        assert_eq!(
            limiter.check_at(ip("10.0.0.1"), t0 + Duration::from_secs(4)),
            Err(6)
        );
        assert_eq!(
            limiter.check_at(ip("10.0.0.1"), t0 + Duration::from_secs(10)),
            Ok(())
        );
        assert!(
            limiter
                .check_at(ip("10.0.0.1"), t0 + Duration::from_secs(10))
                .is_err()
        );
        // Other addresses have their own buckets.
        assert_eq!(limiter.check_at(ip("10.0.0.2"), t0), Ok(()));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0, 1);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert_eq!(limiter.check_at(IpAddr::from(i.to_be_bytes()), t0), Ok(()));
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = RateLimiter::new(2, 100);
        let t0 = Instant::now();
        assert!(limiter.check_at(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(limiter.check_at(ip("2001:db8:1:2:ffff::9"), t0).is_ok());
        assert!(limiter.check_at(ip("2001:db8:1:2::77"), t0).is_err());
        assert!(limiter.check_at(ip("2001:db8:1:3::1"), t0).is_ok());
        assert!(limiter.check_at(ip("192.0.2.1"), t0).is_ok());
        assert!(limiter.check_at(ip("::ffff:192.0.2.1"), t0).is_ok());
        assert!(limiter.check_at(ip("192.0.2.1"), t0).is_err());
    }

    #[test]
    fn a_flood_of_addresses_keeps_the_table_bounded_and_drained_buckets_stay_drained() {
        let limiter = RateLimiter::new(10, 1000);
        let t0 = Instant::now();
        let attacker = ip("198.51.100.7");
        while limiter.check_at(attacker, t0).is_ok() {}
        for i in 0..200_000u32 {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let _ = limiter.check_at(addr, t0);
            assert!(limiter.tracked() <= 1000);
        }
        assert!(
            limiter.check_at(attacker, t0).is_err(),
            "flooding from other addresses must not reset the attacker's own bucket"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = Limits::from_config(&LimitsConfig {
            trusted_proxies: vec![ip("10.0.0.1"), ip("10.0.0.2")],
            ..LimitsConfig::default()
        });
        // Not from a proxy: the header is the client's own claim.
        assert_eq!(
            limits.client_addr(ip("203.0.113.5"), ["1.1.1.1"]),
            ip("203.0.113.5")
        );
        // From a proxy: the rightmost untrusted entry; spoofed entries to its left lose.
        assert_eq!(
            limits.client_addr(ip("10.0.0.1"), ["6.6.6.6, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            limits.client_addr(ip("10.0.0.1"), ["6.6.6.6", "203.0.113.9, 10.0.0.2"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            limits.client_addr(ip("::ffff:10.0.0.1"), ["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        // No header, or garbage where the proxy's entry should be: the peer.
        assert_eq!(
            limits.client_addr(ip("10.0.0.1"), std::iter::empty()),
            ip("10.0.0.1")
        );
        assert_eq!(
            limits.client_addr(ip("10.0.0.1"), ["1.2.3.4, junk"]),
            ip("10.0.0.1")
        );
    }
}
