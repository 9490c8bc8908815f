//! Open connections per client address.
//!
//! One global cap (`server.max_connections`) alone lets one client hold every slot with
//! idle sockets and lock everyone else out. So each client address — an IPv4 address or
//! an IPv6 /64, grouped as the rate limits group them — may hold at most
//! `server.max_connections_per_address` connections at once. A connection over its
//! address's cap is closed as soon as it is accepted, before it takes a global slot.
//!
//! Peers in `limits.trusted_proxies` are exempt: a proxy carries many clients over its
//! connections, and the operator who listed it bounds it at the proxy; the global cap
//! still applies to it. So are the connections of the admin socket, which have no
//! address: only the server's own user can open them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::limits::{ClientKey, canonical};

/// Connections open per client address, with a cap.
#[derive(Debug)]
pub(super) struct PerAddress {
    max: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<HashMap<ClientKey, usize>>,
}

/// One admitted connection; dropping it frees its address's place.
#[derive(Debug)]
pub(super) struct Admitted {
    table: Arc<PerAddress>,
    key: Option<ClientKey>,
}

impl PerAddress {
    /// At most `max` connections per address (0: no cap); `exempt` peers are not counted.
    pub(super) fn new(max: usize, exempt: &[IpAddr]) -> Arc<Self> {
        Arc::new(PerAddress {
            max,
            exempt: exempt.iter().copied().map(canonical).collect(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `peer`, or `None` if its address is at the cap. A
    /// connection with no address (on a Unix socket) is not counted.
    pub(super) fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Admitted> {
        let Some(peer) = peer.filter(|p| self.max != 0 && !self.exempt.contains(&canonical(*p)))
        else {
            return Some(Admitted {
                table: self.clone(),
                key: None,
            });
        };
        let key = ClientKey::of(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Admitted {
            table: self.clone(),
            key: Some(key),
        })
    }

    /// Addresses with an open connection (the table holds no others).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_address_holds_at_most_the_cap_and_a_closed_connection_frees_its_place() {
        let table = PerAddress::new(2, &[]);
        let a = table.admit(ip("192.0.2.1")).unwrap();
        let _b = table.admit(ip("192.0.2.1")).unwrap();
        assert!(table.admit(ip("192.0.2.1")).is_none());
        // Another address is not affected.
        let _c = table.admit(ip("192.0.2.2")).unwrap();
        drop(a);
        let _d = table.admit(ip("192.0.2.1")).unwrap();
        assert!(table.admit(ip("192.0.2.1")).is_none());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let table = PerAddress::new(2, &[]);
        let _a = table.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = table.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(table.admit(ip("2001:db8:1:2::77")).is_none());
        let _c = table.admit(ip("2001:db8:1:3::1")).unwrap();
        let _d = table.admit(ip("192.0.2.1")).unwrap();
        let _e = table.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert!(table.admit(ip("192.0.2.1")).is_none());
    }

    #[test]
    fn trusted_proxies_are_exempt_and_zero_turns_the_cap_off() {
        let table = PerAddress::new(1, &[ip("10.0.0.1").unwrap()]);
        let held: Vec<_> = (0..100)
            .map(|_| table.admit(ip("::ffff:10.0.0.1")).unwrap())
            .collect();
        assert_eq!(table.addresses(), 0, "exempt peers are not tracked");
        drop(held);
        let off = PerAddress::new(0, &[]);
        let held: Vec<_> = (0..100)
            .map(|_| off.admit(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(held.len(), 100);
    }

    #[test]
    fn connections_without_an_address_are_not_counted() {
        let table = PerAddress::new(1, &[]);
        let held: Vec<_> = (0..100).map(|_| table.admit(None).unwrap()).collect();
        assert_eq!(table.addresses(), 0);
        let _a = table.admit(ip("192.0.2.1")).unwrap();
        assert!(table.admit(ip("192.0.2.1")).is_none());
        drop(held);
    }

    #[test]
    fn the_table_forgets_addresses_without_connections() {
        let table = PerAddress::new(4, &[]);
        let held: Vec<_> = (0..50u32)
            .map(|i| {
                table
                    .admit(Some(IpAddr::from((0x0a00_0000 + i).to_be_bytes())))
                    .unwrap()
            })
            .collect();
        assert_eq!(table.addresses(), 50);
        drop(held);
        assert_eq!(table.addresses(), 0);
    }
}
