//! Time as the service sees it: injected, so tests can move it without sleeping.
//!
//! The clock counts milliseconds. Most times are kept in whole seconds (the precision of
//! a JWT `exp`), derived as `now_ms / 1000`; the time of a refresh-token rotation is kept
//! in milliseconds, because the retry grace that follows it is a security boundary and
//! must not stretch by up to a second depending on where in a second the rotation fell.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now".
pub trait Clock: Send + Sync + 'static {
    /// The current time in Unix milliseconds.
    fn now_ms(&self) -> u64;

    /// The current time in whole Unix seconds (rounded down).
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// Shared handle to the clock in use.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The system clock plus an offset that tests move forward or back. For tests only.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    /// A clock that starts at the system time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock by `secs` (negative moves it back).
    pub fn advance(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }

    /// Moves the clock by `ms` milliseconds (negative moves it back).
    pub fn advance_ms(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the clock forward to the next time that is `ms_into_second` milliseconds
    /// past a whole second (tests place events just after or before a second boundary).
    pub fn align(&self, ms_into_second: u64) {
        let into = self.now_ms() % 1000;
        let ahead = (ms_into_second % 1000 + 1000 - into) % 1000;
        self.advance_ms(ahead as i64);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> u64 {
        let base = SystemClock.now_ms() as i64;
        (base + self.offset_ms.load(Ordering::SeqCst)).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_moves_by_the_offset() {
        let clock = OffsetClock::new();
        let before = clock.now();
        clock.advance(3600);
        let after = clock.now();
        assert!((3600..=3602).contains(&(after - before)));
    }

    #[test]
    fn seconds_are_milliseconds_rounded_down() {
        struct At(u64);
        impl Clock for At {
            fn now_ms(&self) -> u64 {
                self.0
            }
        }
        assert_eq!(At(1_999).now(), 1);
        assert_eq!(At(2_000).now(), 2);
    }

    #[test]
    fn align_lands_just_past_a_second_boundary() {
        let clock = OffsetClock::new();
        clock.align(50);
        // Real time moves on while this runs; a few milliseconds at most.
        let into = clock.now_ms() % 1000;
        assert!((50..150).contains(&into), "{into}");
    }
}
