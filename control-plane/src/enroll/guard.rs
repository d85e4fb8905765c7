//! The rate limits and refusal counts of Enroll, the one call that needs no
//! certificate: token buckets per source address and overall, and the per-interval
//! `enroll-refused` events (see the parent module for the limits they enforce).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::audit;
use crate::clock::Clock;
use crate::config::EnrollLimits;
use crate::model::Event;
use crate::store::Storage;

/// How often [`Guard::flush_every_interval`] looks at the clock: an interval ends
/// within this of its end by the control plane's clock, moved or not.
const FLUSH_TICK: Duration = Duration::from_millis(100);
/// Distinct join token ids quoted in one aggregated event.
const MAX_IDS_PER_EVENT: usize = 8;
/// Per-source buckets kept; past it, the full ones (idle sources) are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// A token bucket: `burst` calls at once, refilled at `per_minute`. Times are the
/// control plane's clock in Unix milliseconds, so moving the clock refills it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(burst: u32, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, burst: u32, per_minute: u32, now_ms: i64) {
        // A clock set back refills nothing until it passes the last reading again.
        let dt = now_ms.saturating_sub(self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * f64::from(per_minute) / 60.0).min(f64::from(burst));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// How long until one call is allowed (zero when it is now).
    fn wait(&self, per_minute: u32) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) * 60.0 / f64::from(per_minute))
    }
}

/// Refused enrollments from one source in the current interval.
#[derive(Debug, Default, Clone)]
struct Refused {
    count: u64,
    /// Counts by kind of refusal (a fixed word, never caller input).
    kinds: BTreeMap<&'static str, u64>,
    /// Some of the (well-formed) token ids tried.
    join_tokens: BTreeSet<String>,
    first_ms: i64,
    last_ms: i64,
    /// A `denied` event was recorded for this source in this interval.
    denied_recorded: bool,
}

impl Refused {
    fn add(&mut self, kind: &'static str, token_id: Option<&str>, now_ms: i64) {
        if self.count == 0 {
            self.first_ms = now_ms;
        }
        self.count += 1;
        self.last_ms = now_ms;
        *self.kinds.entry(kind).or_default() += 1;
        if let Some(id) = token_id {
            if self.join_tokens.len() < MAX_IDS_PER_EVENT {
                self.join_tokens.insert(id.to_string());
            }
        }
    }

    fn event(&self, source: &str, interval: Duration, at_ms: i64) -> Event {
        audit::enroll_refused(
            at_ms,
            source,
            interval.as_secs(),
            self.count,
            serde_json::json!({
                "source": source,
                "count": self.count,
                "kinds": self.kinds,
                "join_tokens": self.join_tokens,
                "first_ms": self.first_ms,
                "last_ms": self.last_ms,
            }),
        )
    }
}

#[derive(Debug)]
struct GuardState {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
    refused: HashMap<IpAddr, Refused>,
    /// Sources past `refused_max_sources` in this interval, together.
    others: Refused,
}

/// Rate limits and refusal counts for Enroll.
#[derive(Debug)]
pub struct Guard {
    limits: EnrollLimits,
    state: Mutex<GuardState>,
}

impl Guard {
    /// A guard with these limits.
    pub fn new(limits: EnrollLimits) -> Guard {
        Guard {
            limits,
            state: Mutex::new(GuardState {
                // Full from the start: a full bucket is the same whenever it was filled.
                global: Bucket::full(limits.global_burst, 0),
                sources: HashMap::new(),
                refused: HashMap::new(),
                others: Refused::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // Counters only: a panic elsewhere cannot leave them unusable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one call from the source's bucket and the global one, or say how long to
    /// wait. The source's bucket is charged even when the global one is empty, so one
    /// busy source cannot keep the others out for long. `now_ms` is the control plane's
    /// clock.
    pub fn admit(&self, source: Option<IpAddr>, now_ms: i64) -> Result<(), Duration> {
        let now = now_ms;
        let l = self.limits;
        let mut st = self.lock();
        let mut wait = Duration::ZERO;
        if let Some(ip) = source {
            if st.sources.len() >= MAX_BUCKETS && !st.sources.contains_key(&ip) {
                st.sources.retain(|_, b| {
                    let mut b = *b;
                    b.refill(l.source_burst, l.source_per_minute, now);
                    b.tokens < f64::from(l.source_burst)
                });
                if st.sources.len() >= MAX_BUCKETS {
                    // Every tracked source is busy: start over rather than grow; the
                    // global bucket still holds.
                    st.sources.clear();
                }
            }
            let b = st
                .sources
                .entry(ip)
                .or_insert_with(|| Bucket::full(l.source_burst, now));
            b.refill(l.source_burst, l.source_per_minute, now);
            wait = b.wait(l.source_per_minute);
            if wait.is_zero() {
                b.tokens -= 1.0;
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        st.global.refill(l.global_burst, l.global_per_minute, now);
        let g = st.global.wait(l.global_per_minute);
        if !g.is_zero() {
            return Err(g);
        }
        st.global.tokens -= 1.0;
        Ok(())
    }

    /// Count a refusal from `source`. With `known` (the token is one minted here),
    /// returns whether it is the first such for the source in this interval, to be
    /// recorded at once.
    pub(super) fn refused(
        &self,
        source: Option<IpAddr>,
        kind: &'static str,
        token_id: Option<&str>,
        known: bool,
        now_ms: i64,
    ) -> bool {
        let max = self.limits.refused_max_sources as usize;
        let mut st = self.lock();
        let st = &mut *st;
        let r = match source {
            Some(ip) if st.refused.len() < max || st.refused.contains_key(&ip) => {
                st.refused.entry(ip).or_default()
            }
            _ => &mut st.others,
        };
        r.add(kind, token_id, now_ms);
        if known && !r.denied_recorded {
            r.denied_recorded = true;
            return true;
        }
        false
    }

    /// The aggregated events of the interval that ends now (and start a new one).
    pub fn take_events(&self, at_ms: i64) -> Vec<Event> {
        let interval = self.limits.refused_interval;
        let (refused, others) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.refused),
                std::mem::take(&mut st.others),
            )
        };
        let mut events: Vec<Event> = refused
            .iter()
            .map(|(ip, r)| r.event(&ip.to_string(), interval, at_ms))
            .collect();
        if others.count > 0 {
            events.push(others.event("other sources", interval, at_ms));
        }
        events
    }

    /// How long an interval of refusal counts lasts.
    pub fn interval(&self) -> Duration {
        self.limits.refused_interval
    }

    /// Write each interval's aggregated events when it ends by `clock`, forever. The
    /// clock is re-read on a short tick, so moving it ends the interval within a tick.
    pub async fn flush_every_interval(&self, store: &dyn Storage, clock: &Clock) {
        let interval_ms = i64::try_from(self.interval().as_millis()).unwrap_or(i64::MAX);
        let mut tick = tokio::time::interval(FLUSH_TICK.min(self.interval()));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_ms = clock.now_ms().saturating_add(interval_ms);
        loop {
            tick.tick().await;
            let now = clock.now_ms();
            if now < next_ms {
                continue;
            }
            next_ms = now.saturating_add(interval_ms);
            self.flush(store, now).await;
        }
    }

    /// Write the interval's aggregated events.
    pub async fn flush(&self, store: &dyn Storage, at_ms: i64) {
        let events = self.take_events(at_ms);
        if events.is_empty() {
            return;
        }
        if let Err(e) = store.append_events(events).await {
            tracing::warn!(error = %e, "could not record refused enrollments");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EnrollLimits {
        EnrollLimits {
            source_burst: 3,
            source_per_minute: 60,
            global_burst: 5,
            global_per_minute: 60,
            refused_interval: Duration::from_secs(60),
            refused_max_sources: 2,
        }
    }

    #[test]
    fn buckets_limit_each_source_and_all_of_them() {
        let g = Guard::new(limits());
        let t0 = 1_000_000;
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(g.admit(Some(a), t0).is_ok());
        }
        let wait = g.admit(Some(a), t0).expect_err("a's burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // b has its own bucket, but the global one has 2 left.
        assert!(g.admit(Some(b), t0).is_ok());
        assert!(g.admit(Some(b), t0).is_ok());
        assert!(g.admit(Some(b), t0).is_err(), "the global burst is spent");
        // A second later each bucket has one more.
        let t1 = t0 + 1_000;
        assert!(g.admit(Some(a), t1).is_ok());
        assert!(g.admit(Some(a), t1).is_err());
    }

    #[test]
    fn a_moved_clock_refills_the_buckets() {
        let clock = crate::clock::Clock::default();
        let g = Guard::new(limits());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(g.admit(Some(a), clock.now_ms()).is_ok());
        }
        assert!(
            g.admit(Some(a), clock.now_ms()).is_err(),
            "a's burst is spent"
        );
        // Three seconds on the clock (and none in real time) refill a's burst of 3.
        clock.advance_ms(3_000);
        for _ in 0..3 {
            assert!(g.admit(Some(a), clock.now_ms()).is_ok());
        }
        assert!(g.admit(Some(a), clock.now_ms()).is_err(), "spent again");
    }

    #[tokio::test]
    async fn a_moved_clock_ends_the_refusal_interval_within_a_tick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::default();
        let store = crate::store::SledStore::open(dir.path(), clock.clone()).expect("store");
        let g = std::sync::Arc::new(Guard::new(limits()));
        let ip = Some("192.0.2.9".parse::<IpAddr>().expect("ip"));
        g.refused(ip, "unknown-token", Some("jt-9"), false, clock.now_ms());
        let flusher = {
            let (g, store, clock) = (g.clone(), store.clone(), clock.clone());
            tokio::spawn(async move { g.flush_every_interval(store.as_ref(), &clock).await })
        };
        let refused = || {
            store
                .events(0, 100)
                .expect("events")
                .into_iter()
                .filter(|e| e.detail["source"] == "192.0.2.9")
                .count()
        };
        tokio::time::sleep(3 * FLUSH_TICK).await;
        assert_eq!(refused(), 0, "the 60 s interval has not ended");
        // A minute on the clock, none in real time: recorded within a few ticks.
        clock.advance_ms(61_000);
        let moved = std::time::Instant::now();
        while refused() == 0 {
            assert!(
                moved.elapsed() < Duration::from_secs(5),
                "the flusher did not see the moved clock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flusher.abort();
    }

    #[test]
    fn refusals_are_one_event_per_source_and_the_rest_share_one() {
        let g = Guard::new(limits());
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        for _ in 0..10 {
            assert!(!g.refused(ip("192.0.2.1"), "unknown-token", Some("jt-1"), false, 1));
        }
        assert!(g.refused(ip("192.0.2.2"), "refused", Some("jt-2"), true, 2));
        assert!(!g.refused(ip("192.0.2.2"), "refused", Some("jt-2"), true, 3));
        for n in 0..50 {
            g.refused(
                ip(&format!("198.51.100.{n}")),
                "unknown-token",
                None,
                false,
                4,
            );
        }
        let mut events = g.take_events(5);
        events.sort_by_key(|e| e.detail["source"].as_str().map(str::to_string));
        assert_eq!(events.len(), 3, "{events:#?}");
        assert_eq!(events[0].detail["source"], "192.0.2.1");
        assert_eq!(events[0].detail["count"], 10);
        assert_eq!(events[1].detail["count"], 2);
        assert_eq!(events[2].detail["source"], "other sources");
        assert_eq!(events[2].detail["count"], 50);
        assert!(g.take_events(5).is_empty(), "a new interval starts empty");
    }
}
