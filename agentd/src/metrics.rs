//! The agent's Prometheus metrics: the one registry, and every metric's name, help
//! text, labels and buckets. Instrumentation sites call one small function here each;
//! the gauges that describe the current state (cached credentials, heartbeat age,
//! certificate expiry) are set from a [`Snapshot`] taken just before each scrape
//! (`scrape.rs`). This file uses nothing else of the crate.
//!
//! Label values come only from bounded sets (credential kinds, hit or miss, attestation
//! failure reasons, wipe causes): never a lease id, a token, a workload or a task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The media type of [`render`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct credential kinds shown; the rest are counted under `other`.
const MAX_KINDS: usize = 16;

/// One label.
type L1 = [(&'static str, &'static str); 1];

/// Why credentials were wiped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeCause {
    /// A revocation from the control plane.
    Revoked,
    /// Past its expiry time.
    Expired,
    /// Its task ended.
    TaskEnd,
    /// No heartbeat for longer than max_offline: everything (failing closed).
    MaxOffline,
    /// The host was evicted: everything.
    Evicted,
    /// Its workload was removed.
    WorkloadRemoved,
    /// The agent stopped.
    Shutdown,
}

impl WipeCause {
    fn label(self) -> &'static str {
        match self {
            WipeCause::Revoked => "revoked",
            WipeCause::Expired => "expired",
            WipeCause::TaskEnd => "task_end",
            WipeCause::MaxOffline => "max_offline",
            WipeCause::Evicted => "evicted",
            WipeCause::WorkloadRemoved => "workload_removed",
            WipeCause::Shutdown => "shutdown",
        }
    }
}

/// Every metric of the agent.
struct Metrics {
    registry: Registry,
    cached: Family<Vec<(&'static str, String)>, Gauge>,
    cache_requests: Family<L1, Counter>,
    fetch_seconds: Family<L1, Histogram, fn() -> Histogram>,
    attestation_failures: Family<L1, Counter>,
    wipes: Family<L1, Counter>,
    heartbeat_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    cert_expiry: Gauge,
    connected: Gauge,
}

fn latency() -> Histogram {
    // 50 µs (a cache hit) to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("leash_agent");
    let m = Metrics {
        registry: Registry::default(),
        cached: Family::default(),
        cache_requests: Family::default(),
        fetch_seconds: Family::new_with_constructor(latency),
        attestation_failures: Family::default(),
        wipes: Family::default(),
        heartbeat_age: Gauge::default(),
        cert_expiry: Gauge::default(),
        connected: Gauge::default(),
    };
    r.register(
        "cached_credentials",
        "Credentials held in memory, by kind",
        m.cached.clone(),
    );
    r.register(
        "cache_requests",
        "Fetches by whether the cache answered them (hit) or the control plane was asked (miss)",
        m.cache_requests.clone(),
    );
    r.register(
        "fetch_duration_seconds",
        "Time to answer a fetch, by whether the cache answered it (hit, miss)",
        m.fetch_seconds.clone(),
    );
    r.register(
        "attestation_failures",
        "Callers refused because attestation failed, by reason",
        m.attestation_failures.clone(),
    );
    r.register(
        "wipes",
        "Credentials wiped from memory, by cause (revoked, expired, task_end, max_offline, evicted, workload_removed, shutdown)",
        m.wipes.clone(),
    );
    r.register(
        "heartbeat_age_seconds",
        "Seconds since the last heartbeat from the control plane (-1 before the first)",
        m.heartbeat_age.clone(),
    );
    r.register(
        "host_cert_expiry_timestamp_seconds",
        "Unix time the host certificate expires",
        m.cert_expiry.clone(),
    );
    r.register(
        "connected",
        "1 while the Sync stream to the control plane is up and caught up, else 0",
        m.connected.clone(),
    );
    Metrics { registry: r, ..m }
});

/// Whether anything is recorded: only once a listener serves the metrics (`enable`),
/// so an agent without `--metrics-listen` pays nothing for them.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Start recording (the metrics listener is up).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A fetch was answered from the cache (`hit`) or by asking the control plane, in `took`.
pub fn fetched(hit: bool, took: Duration) {
    if !enabled() {
        return;
    }
    let m = &*METRICS;
    let label = [("result", if hit { "hit" } else { "miss" })];
    m.cache_requests.get_or_create(&label).inc();
    m.fetch_seconds
        .get_or_create(&label)
        .observe(took.as_secs_f64());
}

/// A caller was refused because attestation failed; `reason` is from a fixed set
/// (`peer_credentials`, `pin`, `peer_gone`, `id_mismatch`, `namespace`, `proc`,
/// `malformed`, `no_workload`, `not_that_workload`, `ambiguous`).
pub fn attestation_failed(reason: &'static str) {
    if !enabled() {
        return;
    }
    METRICS
        .attestation_failures
        .get_or_create(&[("reason", reason)])
        .inc();
}

/// `n` credentials were wiped for `cause`.
pub fn wiped(cause: WipeCause, n: usize) {
    if n > 0 && enabled() {
        METRICS
            .wipes
            .get_or_create(&[("cause", cause.label())])
            .inc_by(n as u64);
    }
}

/// The state the gauges show, taken just before a scrape.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Cached credentials by kind.
    pub cached: BTreeMap<String, usize>,
    /// Seconds since the last heartbeat (None before the first).
    pub heartbeat_age_secs: Option<f64>,
    /// Unix seconds the host certificate expires.
    pub cert_not_after: i64,
    /// Synced with the control plane now.
    pub connected: bool,
}

/// A kind name as a label value: a short lowercase word, else `other`.
fn kind_label(kind: &str) -> String {
    let word = !kind.is_empty()
        && kind.len() <= 32
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if word {
        kind.to_string()
    } else {
        "other".to_string()
    }
}

/// The exposition of every metric, with the gauges set from `snap`.
pub fn render(snap: &Snapshot) -> String {
    let m = &*METRICS;
    // Kinds seen before and now absent read 0 rather than vanishing.
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for (kind, n) in &snap.cached {
        let mut label = kind_label(kind);
        if counts.len() >= MAX_KINDS && !counts.contains_key(&label) {
            label = "other".to_string();
        }
        *counts.entry(label).or_default() += *n as i64;
    }
    let known: Vec<String> = counts.keys().cloned().collect();
    for (kind, n) in &counts {
        m.cached
            .get_or_create(&vec![("kind", kind.clone())])
            .set(*n);
    }
    SEEN_KINDS.with_kinds(&known, |stale| {
        for kind in stale {
            m.cached.get_or_create(&vec![("kind", kind.clone())]).set(0);
        }
    });
    m.heartbeat_age.set(snap.heartbeat_age_secs.unwrap_or(-1.0));
    m.cert_expiry.set(snap.cert_not_after);
    m.connected.set(i64::from(snap.connected));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

/// The kinds shown so far, so one that is no longer cached is shown as 0.
struct SeenKinds(std::sync::Mutex<std::collections::BTreeSet<String>>);

static SEEN_KINDS: SeenKinds = SeenKinds(std::sync::Mutex::new(std::collections::BTreeSet::new()));

impl SeenKinds {
    /// Remember `now`, and call `f` with the kinds seen before but not in `now`.
    fn with_kinds(&self, now: &[String], f: impl FnOnce(Vec<String>)) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<String> = seen.iter().filter(|k| !now.contains(k)).cloned().collect();
        seen.extend(now.iter().cloned());
        drop(seen);
        f(stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_bounded_and_gone_kinds_read_zero() {
        enable();
        let mut cached = BTreeMap::new();
        cached.insert("jwt".to_string(), 2);
        cached.insert("Bad Kind!".to_string(), 1);
        let text = render(&Snapshot {
            cached,
            ..Default::default()
        });
        assert!(
            text.contains("leash_agent_cached_credentials{kind=\"jwt\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("leash_agent_cached_credentials{kind=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("leash_agent_heartbeat_age_seconds -1"),
            "{text}"
        );
        let text = render(&Snapshot::default());
        assert!(
            text.contains("leash_agent_cached_credentials{kind=\"jwt\"} 0"),
            "{text}"
        );
        // Other tests in this binary count too: compare before and after.
        let value = |text: &str, key: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let wipes = "leash_agent_wipes_total{cause=\"task_end\"}";
        let before = value(&render(&Snapshot::default()), wipes);
        wiped(WipeCause::TaskEnd, 2);
        fetched(true, Duration::from_micros(80));
        let text = render(&Snapshot::default());
        assert!(value(&text, wipes) >= before + 2.0, "{text}");
        assert!(
            value(&text, "leash_agent_cache_requests_total{result=\"hit\"}") >= 1.0,
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
