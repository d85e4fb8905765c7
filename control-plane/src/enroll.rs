//! Enrollment: trade a one-time join token and a CSR for a host certificate, and keep
//! the callers of the one call that needs no certificate from filling the audit log.
//!
//! The name and labels a token binds are kept on the control plane with the token's
//! hash; the agent's own `--name`/`--label` may only narrow them. Every refusal is
//! answered with its reason. Because anyone who can reach the port may call Enroll:
//! - calls are rate-limited per source address and overall (token buckets, the
//!   `enroll_*` config keys), answered UNAVAILABLE with when to retry;
//! - a token that is not even shaped like a join token is refused before any lookup or
//!   write, and leaves no event;
//! - the other refusals are counted per source and recorded as one `enroll-refused`
//!   event per source per interval, with the count; past `enroll_refused_max_sources`
//!   sources in an interval the rest share one event;
//! - a refusal about a token this control plane minted (used, expired, revoked, wrong
//!   secret, name or labels not bound) is also recorded at once as a `denied` event with
//!   its reason, so a misused real token shows up without waiting, but only the first
//!   such refusal per source per interval.
//!
//! So unauthenticated callers add at most `2 × (enroll_refused_max_sources + 1)` events
//! per `enroll_refused_interval`, whatever they send.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use leash_proto::join_token::JoinToken;
use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::agent_api::narrow_labels;
use crate::config::EnrollLimits;
use crate::model::{valid_name, Event, Host};
use crate::server::Shared;
use crate::store::StoreError;

/// Longest join token text looked at; a real one is about 150 bytes.
const MAX_TOKEN_LEN: usize = 512;
/// Longest join token id accepted (ids minted here are a dozen characters).
const MAX_TOKEN_ID_LEN: usize = 64;
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

    fn event(&self, source: &str, interval: Duration) -> Event {
        Event::new("enroll-refused")
            .actor("enroll")
            .reason(format!(
                "{} enrollment(s) refused from {source} in {}s",
                self.count,
                interval.as_secs()
            ))
            .detail(serde_json::json!({
                "source": source,
                "count": self.count,
                "kinds": self.kinds,
                "join_tokens": self.join_tokens,
                "first_ms": self.first_ms,
                "last_ms": self.last_ms,
            }))
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
    fn admit(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
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
    fn refused(
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
    pub fn take_events(&self) -> Vec<Event> {
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
            .map(|(ip, r)| r.event(&ip.to_string(), interval))
            .collect();
        if others.count > 0 {
            events.push(others.event("other sources", interval));
        }
        events
    }

    /// Write the interval's aggregated events.
    pub async fn flush(&self, s: &Shared) {
        let events = self.take_events();
        if events.is_empty() {
            return;
        }
        if let Err(e) = s.store.append_events(events).await {
            tracing::warn!(error = %e, "could not record refused enrollments");
        }
    }
}

/// Record refused enrollments once per interval, until the process ends.
pub async fn flush_every_interval(s: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(s.enroll_guard.limits.refused_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        s.enroll_guard.flush(&s).await;
    }
}

/// Whether `text` is shaped like a join token at all: cheap checks on the text alone.
fn well_formed(text: &str) -> Result<JoinToken, String> {
    if text.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "malformed join token: longer than {MAX_TOKEN_LEN} bytes; create a new one with `leashctl join-token create`"
        ));
    }
    let token = JoinToken::parse(text).map_err(|e| e.to_string())?;
    if token.id.len() > MAX_TOKEN_ID_LEN {
        return Err(format!(
            "malformed join token: the id is longer than {MAX_TOKEN_ID_LEN} characters; create a new one with `leashctl join-token create`"
        ));
    }
    Ok(token)
}

/// A refused enrollment: counted for the source's aggregated event, and answered. Only
/// a refusal about a token minted here (`known`) may also be recorded at once.
async fn refuse(
    s: &Shared,
    source: Option<IpAddr>,
    kind: &'static str,
    token_id: Option<&str>,
    known: bool,
    reason: String,
) -> Status {
    let first = s
        .enroll_guard
        .refused(source, kind, token_id, known, s.clock.now_ms());
    if first {
        let mut e = Event::new("denied").actor("enroll").reason(reason.clone());
        if let Some(id) = token_id {
            e = e.detail(serde_json::json!({ "join_token": id, "source": source }));
        }
        if let Err(err) = s.store.append_events(vec![e]).await {
            tracing::warn!(error = %err, "could not record a denied enrollment");
        }
        tracing::warn!(%reason, source = ?source, "enrollment refused");
    } else {
        tracing::debug!(source = ?source, kind, "enrollment refused");
    }
    Reason::Denied.status(reason)
}

/// Handle an Enroll call.
pub async fn enroll(
    s: &Shared,
    source: Option<IpAddr>,
    r: v1::EnrollRequest,
) -> Result<v1::EnrollResponse, Status> {
    if let Err(wait) = s.enroll_guard.admit(source, Instant::now()) {
        let from = source.map_or_else(|| "this source".to_string(), |ip| ip.to_string());
        return Err(Reason::Unavailable.status(format!(
            "too many enrollment attempts from {from}; retry in {}s",
            wait.as_secs().max(1)
        )));
    }
    if r.protocol_version != leash_proto::PROTOCOL_VERSION {
        return Err(Reason::Invalid.status(format!(
            "protocol version {} is not supported (this control plane speaks {})",
            r.protocol_version,
            leash_proto::PROTOCOL_VERSION
        )));
    }
    // Refused before any lookup or write, and not recorded: the text alone shows it
    // is not a join token.
    let token = well_formed(&r.join_token).map_err(|m| Reason::Denied.status(m))?;
    if token.ca_pin != s.keys.ca_pin {
        return Err(refuse(
            s,
            source,
            "ca-pin",
            Some(&token.id),
            false,
            "the join token was minted by another control plane (CA pin mismatch)".into(),
        )
        .await);
    }
    let now = s.clock.now();
    let record = match s
        .store
        .join_token(&token.id)
        .map_err(crate::server::store_status)?
    {
        Some(t) => t,
        None => {
            return Err(refuse(
                s,
                source,
                "unknown-token",
                Some(&token.id),
                false,
                "unknown join token (forged, or from another control plane)".into(),
            )
            .await)
        }
    };
    let name = match (&record.name, r.name.as_str()) {
        (Some(bound), "") => bound.clone(),
        (Some(bound), asked) if asked == bound => bound.clone(),
        (Some(bound), asked) => {
            return Err(refuse(
                s,
                source,
                "name",
                Some(&token.id),
                true,
                format!("the join token binds the name {bound:?}, not {asked:?}"),
            )
            .await)
        }
        (None, "") if !r.default_name.is_empty() => r.default_name.clone(),
        (None, "") => {
            return Err(refuse(
                s,
                source,
                "name",
                Some(&token.id),
                true,
                "no host name given and none bound in the token; start the agent with --name"
                    .into(),
            )
            .await)
        }
        (None, asked) => asked.to_string(),
    };
    if !valid_name(&name) || name.contains('/') {
        return Err(Reason::Invalid.status(format!(
            "invalid host name {name:?}: use letters, digits, '.', '-', '_'"
        )));
    }
    let asked: BTreeMap<String, String> = r.labels.into_iter().collect();
    let labels = match narrow_labels(&record.labels, &asked) {
        Ok(l) => l,
        Err(m) => return Err(refuse(s, source, "labels", Some(&token.id), true, m).await),
    };
    let (cert, serial, not_after) = s
        .keys
        .sign_host_cert(&r.csr_der, &name, s.config.host_cert_ttl)
        .map_err(|e| {
            Reason::Invalid.status(format!("{e}; the agent must send a valid PKCS#10 CSR"))
        })?;
    let secret_sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &token.secret_bytes(),
    ));
    let host = Host {
        name: name.clone(),
        labels: labels.clone(),
        enrolled_at: now,
        last_seen: now,
        evicted: false,
        cert_serial: serial,
        cert_not_after: not_after,
    };
    let event = Event::new("enrolled")
        .actor(name.clone())
        .host(name.clone())
        .detail(serde_json::json!({ "join_token": token.id, "labels": labels, "agent_version": r.agent_version }));
    match s
        .store
        .enroll(&token.id, &secret_sha, host, now, event)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Refused(m)) | Err(StoreError::Conflict(m)) => {
            return Err(refuse(s, source, "refused", Some(&token.id), true, m).await)
        }
        Err(e) => return Err(crate::server::store_status(e)),
    }
    tracing::info!(host = %name, "host enrolled");
    Ok(v1::EnrollResponse {
        host_name: name,
        labels: labels.into_iter().collect(),
        certificate_der: cert.to_vec(),
        ca_certificate_der: s.keys.ca_der.to_vec(),
        trust_domain: s.config.trust_domain.clone(),
        not_after_unix: not_after,
    })
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
        let mut events = g.take_events();
        events.sort_by_key(|e| e.detail["source"].as_str().map(str::to_string));
        assert_eq!(events.len(), 3, "{events:#?}");
        assert_eq!(events[0].detail["source"], "192.0.2.1");
        assert_eq!(events[0].detail["count"], 10);
        assert_eq!(events[1].detail["count"], 2);
        assert_eq!(events[2].detail["source"], "other sources");
        assert_eq!(events[2].detail["count"], 50);
        assert!(g.take_events().is_empty(), "a new interval starts empty");
    }

    #[test]
    fn malformed_tokens_are_told_apart_without_echoing_them() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let good = JoinToken::encode("jt-1a2b", &[7u8; 32], &pin);
        assert!(well_formed(&good).is_ok());
        for bad in [
            "x".repeat(10_000),
            JoinToken::encode(&"a".repeat(65), &[7u8; 32], &pin),
            "leash-join.v1.nonsense".into(),
        ] {
            let e = well_formed(&bad).expect_err("malformed");
            assert!(e.len() < 200 && !e.contains("aaaaaaaaaa"), "{e}");
        }
    }
}
