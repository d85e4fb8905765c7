//! The control plane's Prometheus metrics: the one registry, and every metric's name,
//! help text, labels and buckets. Instrumentation sites call one small function here
//! each; the gauges that describe the current state (hosts, approvals, lag, expiry) are
//! set from a [`Snapshot`] taken just before each scrape (`http/metrics.rs`).
//!
//! Label values come only from bounded sets (credential kinds, results, decisions,
//! revocation targets, lag ranges): never a lease id, a token, a fingerprint, a host or
//! a workload name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::RevocationTarget;

/// The media type of [`render`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One label.
type L1 = [(&'static str, &'static str); 1];
/// Two labels.
type L2 = [(&'static str, &'static str); 2];
/// A family of histograms with one label.
type Histograms = Family<L1, Histogram, fn() -> Histogram>;

/// The ranges of sequences behind that `leash_sync_lag_hosts` counts hosts in.
pub const LAG_RANGES: [&str; 5] = ["0", "1-10", "11-100", "101-1000", "1001+"];

/// Latency buckets: 0.5 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the control plane.
struct Metrics {
    registry: Registry,
    issuances: Family<L2, Counter>,
    issuance_seconds: Histograms,
    decisions: Family<L1, Counter>,
    decision_seconds: Histogram,
    revocations: Family<L1, Counter>,
    revocation_ack_seconds: Histogram,
    hosts_connected: Gauge,
    hosts_caught_up: Gauge,
    hosts_failed_closed: Gauge,
    sync_lag_max: Gauge,
    sync_lag_hosts: Family<L1, Gauge>,
    approvals_pending: Gauge,
    ends_pending: Gauge,
    store_batches: Counter,
    store_batch_writes: Histogram,
    store_flush_seconds: Histogram,
    store_flush_failures: Counter,
    ca_expiry: Gauge,
    leading: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("leash");
    let m = Metrics {
        registry: Registry::default(),
        issuances: Family::default(),
        issuance_seconds: Family::new_with_constructor(latency),
        decisions: Family::default(),
        decision_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
        revocations: Family::default(),
        revocation_ack_seconds: Histogram::new([
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]),
        hosts_connected: Gauge::default(),
        hosts_caught_up: Gauge::default(),
        hosts_failed_closed: Gauge::default(),
        sync_lag_max: Gauge::default(),
        sync_lag_hosts: Family::default(),
        approvals_pending: Gauge::default(),
        ends_pending: Gauge::default(),
        store_batches: Counter::default(),
        store_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        store_flush_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        store_flush_failures: Counter::default(),
        ca_expiry: Gauge::default(),
        leading: Gauge::default(),
    };
    r.register(
        "issuances",
        "Issue requests by credential kind and result (allowed, denied, pending, unavailable, invalid)",
        m.issuances.clone(),
    );
    r.register(
        "issuance_duration_seconds",
        "Time to answer an Issue request, by credential kind",
        m.issuance_seconds.clone(),
    );
    r.register(
        "policy_decisions",
        "Policy evaluations by outcome (allow, deny, approval): issuance, policy explain, and re-checks of active leases after a change",
        m.decisions.clone(),
    );
    r.register(
        "policy_decision_duration_seconds",
        "Time to evaluate policy for one request",
        m.decision_seconds.clone(),
    );
    r.register(
        "revocations",
        "Revocations recorded, by target (lease, leases, workload, credential, owner, host, task, all)",
        m.revocations.clone(),
    );
    r.register(
        "revocation_ack_duration_seconds",
        "Time from a revocation to the last wipe acknowledgment it waited for (seen by revoke --wait)",
        m.revocation_ack_seconds.clone(),
    );
    r.register(
        "hosts_connected",
        "Agents with a Sync stream open",
        m.hosts_connected.clone(),
    );
    r.register(
        "hosts_caught_up",
        "Connected agents that acknowledged everything their Sync stream sent",
        m.hosts_caught_up.clone(),
    );
    r.register(
        "hosts_failed_closed",
        "Enrolled hosts away longer than max_offline (they have wiped their credentials)",
        m.hosts_failed_closed.clone(),
    );
    r.register(
        "sync_lag_max_sequences",
        "The most sequences any connected agent is behind what its Sync stream sent",
        m.sync_lag_max.clone(),
    );
    r.register(
        "sync_lag_hosts",
        "Connected agents by how many sequences they are behind (ranges 0, 1-10, 11-100, 101-1000, 1001+)",
        m.sync_lag_hosts.clone(),
    );
    r.register(
        "approvals_pending",
        "Approval requests waiting for a human",
        m.approvals_pending.clone(),
    );
    r.register(
        "end_queue_pending",
        "Ended leases whose end step outside Leash (a database role dropped) is still queued",
        m.ends_pending.clone(),
    );
    r.register(
        "store_write_batches",
        "Write batches the store made durable (one flush each)",
        m.store_batches.clone(),
    );
    r.register(
        "store_batch_writes",
        "Writes per store batch",
        m.store_batch_writes.clone(),
    );
    r.register(
        "store_flush_duration_seconds",
        "Time to flush one store batch to disk",
        m.store_flush_seconds.clone(),
    );
    r.register(
        "store_flush_failures",
        "Store flushes that failed (the writes were answered unavailable)",
        m.store_flush_failures.clone(),
    );
    r.register(
        "ca_not_after_timestamp_seconds",
        "Unix time the active host CA certificate expires",
        m.ca_expiry.clone(),
    );
    r.register(
        "control_plane_leading",
        "1 while this control plane runs the background workers (always on sled; on one replica of a shared PostgreSQL store at a time)",
        m.leading.clone(),
    );
    Metrics { registry: r, ..m }
});

/// Whether anything is recorded: only once a listener serves the metrics (`enable`), so
/// a control plane that serves none pays nothing for them.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Start recording (`[http]` or `[metrics]` is configured).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether metrics are recorded (callers skip work that only feeds them).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An Issue request was answered: `kind` a credential kind's name (or `unknown`),
/// `result` one of allowed, denied, pending, unavailable, invalid.
pub fn issued(kind: &'static str, result: &'static str, took: Duration) {
    if !enabled() {
        return;
    }
    let m = &*METRICS;
    m.issuances
        .get_or_create(&[("kind", kind), ("result", result)])
        .inc();
    m.issuance_seconds
        .get_or_create(&[("kind", kind)])
        .observe(took.as_secs_f64());
}

/// Policy decided one request: `decision` is allow, deny or approval.
pub fn decided(decision: &'static str, took: Duration) {
    if !enabled() {
        return;
    }
    let m = &*METRICS;
    m.decisions.get_or_create(&[("decision", decision)]).inc();
    m.decision_seconds.observe(took.as_secs_f64());
}

/// A revocation is being recorded (by the store's writer, whoever asked for it).
pub fn revoked(target: &RevocationTarget) {
    if !enabled() {
        return;
    }
    let label = match target {
        RevocationTarget::Lease(_) => "lease",
        RevocationTarget::Leases(_) => "leases",
        RevocationTarget::Workload(_) => "workload",
        RevocationTarget::Credential(_) => "credential",
        RevocationTarget::Owner(_) => "owner",
        RevocationTarget::Host(_) => "host",
        RevocationTarget::Task(_) => "task",
        RevocationTarget::All => "all",
    };
    METRICS
        .revocations
        .get_or_create(&[("target", label)])
        .inc();
}

/// Every host a revocation waited for acknowledged it (or failed closed) `took` after it
/// was recorded.
pub fn revocation_acked(took: Duration) {
    if !enabled() {
        return;
    }
    METRICS.revocation_ack_seconds.observe(took.as_secs_f64());
}

/// The store made a batch of `writes` writes durable in a flush of `took`; `ok` false
/// when the flush failed.
pub fn store_flushed(writes: usize, took: Duration, ok: bool) {
    if !enabled() {
        return;
    }
    let m = &*METRICS;
    if ok {
        m.store_batches.inc();
        m.store_batch_writes.observe(writes as f64);
        m.store_flush_seconds.observe(took.as_secs_f64());
    } else {
        m.store_flush_failures.inc();
    }
}

/// The state the gauges show, taken just before a scrape.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Agents with a Sync stream open.
    pub connected: i64,
    /// Connected agents that acknowledged everything sent to them.
    pub caught_up: i64,
    /// Enrolled hosts away longer than `max_offline`.
    pub failed_closed: i64,
    /// Sequences behind, one entry per connected agent.
    pub lags: Vec<u64>,
    /// Approvals waiting.
    pub approvals_pending: i64,
    /// End steps queued.
    pub ends_pending: i64,
    /// Unix seconds the active CA certificate expires (0: unknown).
    pub ca_not_after: i64,
    /// 1 while this replica runs the background workers (always on sled), else 0.
    pub leading: i64,
}

/// Which of [`LAG_RANGES`] `lag` falls in.
pub fn lag_range(lag: u64) -> &'static str {
    match lag {
        0 => LAG_RANGES[0],
        1..=10 => LAG_RANGES[1],
        11..=100 => LAG_RANGES[2],
        101..=1000 => LAG_RANGES[3],
        _ => LAG_RANGES[4],
    }
}

/// The exposition of every metric, with the gauges set from `snap`.
pub fn render(snap: &Snapshot) -> String {
    let m = &*METRICS;
    m.hosts_connected.set(snap.connected);
    m.hosts_caught_up.set(snap.caught_up);
    m.hosts_failed_closed.set(snap.failed_closed);
    m.approvals_pending.set(snap.approvals_pending);
    m.ends_pending.set(snap.ends_pending);
    m.ca_expiry.set(snap.ca_not_after);
    m.leading.set(snap.leading);
    m.sync_lag_max
        .set(snap.lags.iter().copied().max().unwrap_or(0) as i64);
    for range in LAG_RANGES {
        let n = snap.lags.iter().filter(|l| lag_range(**l) == range).count();
        m.sync_lag_hosts
            .get_or_create(&[("lag", range)])
            .set(n as i64);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_appear_with_bounded_labels() {
        enable();
        issued("jwt", "allowed", Duration::from_millis(3));
        decided("deny", Duration::from_micros(40));
        let text = render(&Snapshot {
            connected: 2,
            lags: vec![0, 5],
            ..Default::default()
        });
        assert!(
            text.contains("leash_issuances_total{kind=\"jwt\",result=\"allowed\"}"),
            "{text}"
        );
        assert!(text.contains("leash_policy_decisions_total{decision=\"deny\"}"));
        assert!(text.contains("leash_hosts_connected 2"));
        assert!(text.contains("leash_sync_lag_hosts{lag=\"1-10\"} 1"));
        assert!(text.contains("leash_sync_lag_max_sequences 5"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn lag_ranges() {
        assert_eq!(lag_range(0), "0");
        assert_eq!(lag_range(10), "1-10");
        assert_eq!(lag_range(11), "11-100");
        assert_eq!(lag_range(1000), "101-1000");
        assert_eq!(lag_range(u64::MAX), "1001+");
    }
}
