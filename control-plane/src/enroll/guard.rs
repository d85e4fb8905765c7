//! The rate limits and refusal counts of Enroll, the one call that needs no
//! certificate: token buckets per source address and overall, and the per-interval
//! `enroll-refused` events (see the parent module for the limits they enforce).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit;
use crate::config::EnrollLimits;
use crate::model::Event;
use crate::store::Storage;

/// Distinct join token ids quoted in one aggregated event.
const MAX_IDS_PER_EVENT: usize = 8;
/// Per-source buckets kept; past it, the full ones (idle sources) are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// A token bucket: `burst` calls at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, per_minute: u32, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(per_minute) / 60.0).min(f64::from(burst));
        self.at = now;
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
                global: Bucket::full(limits.global_burst, Instant::now()),
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
    /// busy source cannot keep the others out for long.
    pub(super) fn admit(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
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
        let t0 = Instant::now();
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
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.admit(Some(a), t1).is_ok());
        assert!(g.admit(Some(a), t1).is_err());
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
