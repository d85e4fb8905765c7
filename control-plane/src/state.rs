//! The state every handler shares: configuration, the store, keys, the clock, the
//! connected agents, the policy engine and the audit sink. Handlers take a `&Shared`;
//! `server::run` builds the one instance.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::enroll::guard::Guard;
use crate::hub::Hub;
use crate::keys::{Keys, MasterKey};
use crate::kinds::Registry;
use crate::model::{Event, Revocation};
use crate::policy::Engine;
use crate::store::{Storage, StoreError};

/// Lease ids by host name.
pub type LeasesByHost = HashMap<String, Vec<String>>;

/// State every service shares.
#[derive(Debug)]
pub struct Shared {
    /// Resolved configuration.
    pub config: Config,
    /// Durable state.
    pub store: Arc<dyn Storage>,
    /// Key material.
    pub keys: Arc<Keys>,
    /// The key everything stored encrypted is sealed with.
    pub master: Arc<MasterKey>,
    /// Time.
    pub clock: Clock,
    /// Connected agents.
    pub hub: Hub,
    /// Cedar policy.
    pub policy: Engine,
    /// Serialises policy applications (version numbering and re-evaluation).
    pub policy_lock: tokio::sync::Mutex<()>,
    /// Audit events that nobody waits for (wipe acks, usage), batched into few writes.
    pub event_sink: tokio::sync::mpsc::UnboundedSender<Event>,
    /// Per revocation: its leases by host (for per-lease `wiped` events).
    revoked_by_host: std::sync::Mutex<HashMap<u64, Arc<LeasesByHost>>>,
    /// Rate limits and refusal counts of unauthenticated Enroll calls.
    pub enroll_guard: Guard,
    /// The credential kinds this control plane issues.
    pub kinds: Registry,
    /// The trust bundle's generation: bumped by [`Shared::keys_changed`], watched by every
    /// Sync stream.
    keys_generation: tokio::sync::watch::Sender<u64>,
    /// Whether this replica runs the background workers now (`leader`): always on sled.
    pub leading: std::sync::atomic::AtomicBool,
    /// A rebuild of the `--allow` links failed to read the workloads (see `relink`).
    relink_pending: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Put the parts together. `event_sink` is the sending half of the channel whose
    /// receiver writes fire-and-forget events in batches.
    pub fn new(
        config: Config,
        store: Arc<dyn Storage>,
        keys: Arc<Keys>,
        master: Arc<MasterKey>,
        clock: Clock,
        policy: Engine,
        event_sink: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Shared {
        let enroll_guard = Guard::new(config.enroll);
        // Starts at the time in milliseconds, so a restarted control plane's bundle is
        // newer than the one an agent kept from before (the highest generation wins).
        let keys_generation =
            tokio::sync::watch::Sender::new(u64::try_from(clock.now_ms()).unwrap_or(0));
        Shared {
            config,
            store,
            keys,
            master,
            hub: Hub::new(&clock),
            clock,
            policy,
            policy_lock: tokio::sync::Mutex::new(()),
            event_sink,
            revoked_by_host: Default::default(),
            enroll_guard,
            kinds: Registry::standard(),
            keys_generation,
            leading: std::sync::atomic::AtomicBool::new(true),
            relink_pending: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The keys changed (a key was published, activated or retired): every Sync stream
    /// sends a new trust bundle.
    pub fn keys_changed(&self) {
        let now = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        self.keys_generation.send_modify(|g| *g = (*g + 1).max(now));
    }

    /// The trust bundle's generation, to be told when [`Shared::keys_changed`] bumps it.
    pub fn keys_generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.keys_generation.subscribe()
    }

    /// What the credential kinds may use.
    pub fn env(&self) -> crate::kinds::Env<'_> {
        crate::kinds::Env {
            keys: &self.keys,
            master: &self.master,
            store: &*self.store,
            config: &self.config,
        }
    }

    /// Record events without waiting: a wipe acknowledgment or a usage report must not
    /// hold up its Sync stream on a disk flush. They are written in batches.
    pub fn record(&self, events: Vec<Event>) {
        for e in events {
            let _ = self.event_sink.send(e);
        }
    }

    /// Record a failure of the store (a failed flush, an I/O error) as `failed`, a failure
    /// event, never as a denial. The store usually cannot take that event either (the
    /// disk is still full): the error log line is then the only record.
    pub async fn record_failure(&self, e: &StoreError, failed: Event) {
        if matches!(
            e,
            StoreError::NotDurable(_) | StoreError::Sled(_) | StoreError::Database(_)
        ) {
            let kind = failed.kind.clone();
            if let Err(err) = self
                .store
                .append_events(vec![failed.reason(e.to_string())])
                .await
            {
                tracing::error!(error = %err, event = %kind, "could not record the failure in the audit log");
            }
        }
    }

    /// The revocation recorded with sequence number `seq`, if any.
    pub fn revocation(&self, seq: u64) -> Option<Revocation> {
        self.store
            .revocations_since(seq.saturating_sub(1))
            .ok()
            .and_then(|v| v.into_iter().find(|r| r.seq == seq))
    }

    /// The leases a revocation covered, grouped by host; computed once per revocation
    /// however many hosts acknowledge it.
    pub fn revoked_leases_by_host(&self, seq: u64) -> Arc<LeasesByHost> {
        // Computed under the lock: the acks of a revocation arrive together, and the first
        // one computes while the others wait for its answer instead of repeating it.
        let mut cache = self
            .revoked_by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(&seq) {
            return m.clone();
        }
        let mut by_host: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(rev) = self.revocation(seq) {
            if rev.lease_hosts.len() == rev.lease_ids.len() {
                // The revocation says which host each lease went to.
                for h in &rev.hosts {
                    let ids = rev.lease_ids_for(h);
                    if !ids.is_empty() {
                        by_host.insert(h.clone(), ids);
                    }
                }
            } else {
                // Recorded before it did: look each lease up.
                for id in rev.lease_ids {
                    if let Ok(Some(l)) = self.store.lease(&id) {
                        by_host.entry(l.host).or_default().push(id);
                    }
                }
            }
        }
        let m = Arc::new(by_host);
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(seq, m.clone());
        m
    }

    /// Rebuild the `--allow` links after workloads changed. When the workloads cannot be
    /// read (a PostgreSQL store during an outage) the links in force are kept, never
    /// emptied (which would deny every request), and the rebuild is left pending for
    /// [`Shared::relink_if_pending`].
    pub fn relink(&self) {
        use std::sync::atomic::Ordering;
        let ws = match self.store.workloads() {
            Ok(ws) => ws,
            Err(e) => {
                self.relink_pending.store(true, Ordering::Release);
                tracing::warn!(error = %e, "cannot read the workloads to rebuild the --allow policy links; keeping the links in force and retrying");
                return;
            }
        };
        self.relink_pending.store(false, Ordering::Release);
        if let Err(e) = self.policy.relink(&ws) {
            tracing::error!(error = %e, "could not rebuild the --allow policy links");
        }
    }

    /// Rebuild the `--allow` links if an earlier [`Shared::relink`] could not.
    pub fn relink_if_pending(&self) {
        if self
            .relink_pending
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.relink();
        }
    }
}
