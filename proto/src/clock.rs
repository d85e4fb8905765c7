//! Wall-clock time for both daemons.
//!
//! Everything that decides by the time of day (lease and approval expiry, `max_offline`,
//! stale reports, certificate renewal) reads a [`Clock`] it was handed, never the system
//! clock directly. Unit tests make a clock and [`Clock::advance_ms`] it. Integration
//! tests, which run the real binaries, need the binaries built with the `test-clock`
//! cargo feature (`cargo xtask test` does that): then [`Clock::system`] also adds the
//! offset, in milliseconds, written in the file named by `LEASH_TEST_CLOCK_FILE`. The
//! feature refuses to compile without debug assertions, so no release binary can have its
//! time moved from outside.
//!
//! Timers that sleep (`tokio::time`) still run on real time. Code that waits for a
//! deadline on this clock therefore re-checks it on a short tick instead of sleeping
//! until the deadline.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(all(feature = "test-clock", not(debug_assertions)))]
compile_error!("the test-clock feature moves time from outside; it is for test builds only");

/// The environment variable naming the offset file (only in `test-clock` builds).
pub const TEST_CLOCK_ENV: &str = "LEASH_TEST_CLOCK_FILE";

/// Unix milliseconds by the system clock, with no offset. Use it only for what is not a
/// decision: log lines and measurements.
pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A source of wall-clock time that tests can move forward. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    #[cfg(feature = "test-clock")]
    file: Option<Arc<std::path::PathBuf>>,
}

impl Clock {
    /// The system clock (and, in `test-clock` builds, the offset file if the environment
    /// names one).
    pub fn system() -> Clock {
        Clock {
            offset_ms: Arc::default(),
            #[cfg(feature = "test-clock")]
            file: std::env::var_os(TEST_CLOCK_ENV).map(|p| Arc::new(p.into())),
        }
    }

    /// Whether this clock can be moved from outside the process (a `test-clock` build
    /// started with `LEASH_TEST_CLOCK_FILE`). The daemons warn at start-up when it can.
    pub fn is_external(&self) -> bool {
        #[cfg(feature = "test-clock")]
        {
            self.file.is_some()
        }
        #[cfg(not(feature = "test-clock"))]
        {
            false
        }
    }

    /// Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        system_now_ms()
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
            .saturating_add(self.external_ms())
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Move this clock (and its clones) forward by `ms`.
    pub fn advance_ms(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    #[cfg(feature = "test-clock")]
    fn external_ms(&self) -> i64 {
        // A missing or half-written file counts as no offset; the writer renames a
        // complete file into place, so a reader sees the old value or the new one.
        self.file
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0)
    }

    #[cfg(not(feature = "test-clock"))]
    fn external_ms(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_offset() {
        let c = Clock::system();
        let d = c.clone();
        let before = d.now_ms();
        c.advance_ms(3_600_000);
        let after = d.now_ms();
        assert!(after - before >= 3_600_000, "{before} → {after}");
        assert!(after - before < 3_700_000, "{before} → {after}");
    }

    #[test]
    fn seconds_round_down() {
        let c = Clock::system();
        let ms = c.now_ms();
        let s = c.now();
        assert!(s * 1000 <= c.now_ms() && s >= ms / 1000);
    }
}
