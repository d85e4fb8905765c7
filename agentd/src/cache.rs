//! The in-memory credential cache.
//!
//! Entries are keyed by everything that affected the decision (workload, credential,
//! audience, action, requested TTL, task, on-behalf-of), so a cached credential is only
//! ever served to a request it satisfies. Secrets live in [`Secret`]s: locked,
//! excluded from core dumps, zeroized when an entry is dropped. Nothing here is ever
//! written to disk.
//!
//! Revocations are applied here: matching entries are dropped at once, and the
//! revocation is remembered for a while so a credential whose Issue was in flight when
//! the revocation arrived (its issue sequence is below the revocation's) is dropped on
//! arrival instead of being served.
//!
//! Every change (an insert, a revocation, a sweep, a changed workload set) bumps a
//! generation that [`Cache::subscribe`] watches, so long-lived SPIFFE streams learn of
//! a revoked or renewed X.509-SVID at once rather than by polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::secret::Secret;

/// What a request asked for; the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Workload the caller was attested as.
    pub workload: String,
    /// Credential name.
    pub credential: String,
    /// Requested audience ("" = the credential's default).
    pub audience: String,
    /// Requested action ("" = the credential's default).
    pub action: String,
    /// Requested TTL in seconds (0 = default).
    pub ttl: u32,
    /// Task id, inside a task.
    pub task: Option<String>,
    /// On-behalf-of principal.
    pub obo: Option<String>,
}

/// A cached credential.
#[derive(Debug)]
pub struct Entry {
    /// The token.
    pub token: Secret,
    /// Lease id (`jti`).
    pub lease_id: String,
    /// Owner of the workload at issue (for revocation by owner).
    pub owner: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Control-plane sequence at issue.
    pub seq: u64,
    /// Action actually granted.
    pub action: String,
    /// Audience actually granted.
    pub audience: String,
    /// What the control plane said it is: kind (`jwt`, `secret`, …), version and format
    /// (brokered secrets).
    pub served: Served,
    /// An X.509-SVID's certificate chain (DER, leaf first); empty for other kinds. Its
    /// private key is the entry's secret (`token`, as base64 of the PKCS#8 DER).
    pub chain_der: Vec<Vec<u8>>,
}

/// The credential's kind, version and format, as the control plane issued it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// `jwt`, `secret`, …
    pub kind: String,
    /// A brokered secret's version; 0 for other kinds.
    pub version: u32,
    /// A brokered secret's format (`text`, `json`, `env`); empty for other kinds.
    pub format: String,
}

impl Entry {
    /// Past ~50% of its lifetime: refresh on the next request if the control plane is
    /// reachable.
    pub fn stale(&self, now: i64) -> bool {
        // Saturating: both times come from the control plane's answer.
        let half = self.expires_at.saturating_sub(self.issued_at) / 2;
        now >= self.issued_at.saturating_add(half)
    }
}

/// What a revocation covers, from the agent's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One lease.
    Lease(String),
    /// A workload.
    Workload(String),
    /// A credential.
    Credential(String),
    /// An owner's workloads.
    Owner(String),
    /// Everything on this host.
    All,
    /// A task.
    Task(String),
}

#[derive(Debug, Clone)]
struct Applied {
    seq: u64,
    target: Target,
    lease_ids: Vec<String>,
}

/// How many applied revocations to remember for the in-flight race.
const REMEMBER: usize = 1024;

/// The cache.
#[derive(Debug)]
pub struct Cache {
    map: RwLock<HashMap<Key, Arc<Entry>>>,
    applied: Mutex<Vec<Applied>>,
    generation: watch::Sender<u64>,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache {
            map: RwLock::default(),
            applied: Mutex::default(),
            generation: watch::channel(0).0,
        }
    }
}

fn covers(t: &Target, lease_ids: &[String], key: &Key, e: &Entry) -> bool {
    if lease_ids.iter().any(|id| id == &e.lease_id) {
        return true;
    }
    match t {
        Target::Lease(id) => &e.lease_id == id,
        Target::Workload(w) => &key.workload == w,
        Target::Credential(c) => &key.credential == c,
        Target::Owner(o) => &e.owner == o,
        Target::All => true,
        Target::Task(t) => key.task.as_deref() == Some(t.as_str()),
    }
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<Entry>>> {
        // Entries are inserted and removed whole; a panicking writer cannot leave a
        // half-made entry behind, so a poisoned lock is still consistent.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<Entry>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake everything watching the cache (see [`Cache::subscribe`]).
    pub fn touch(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A receiver that sees a new generation whenever an entry is added or dropped (or
    /// [`Cache::touch`] is called).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The unexpired entry for `key`.
    pub fn get(&self, key: &Key, now: i64) -> Option<Arc<Entry>> {
        self.read().get(key).filter(|e| e.expires_at > now).cloned()
    }

    /// Insert a freshly issued credential, unless a revocation already applied covers
    /// it (its Issue raced the revocation). Returns false when it was dropped.
    pub fn insert(&self, key: Key, entry: Entry) -> bool {
        self.insert_shared(key, entry).is_some()
    }

    /// [`Cache::insert`], returning the entry as the cache now holds it.
    pub fn insert_shared(&self, key: Key, entry: Entry) -> Option<Arc<Entry>> {
        {
            let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            if applied
                .iter()
                .any(|a| a.seq > entry.seq && covers(&a.target, &a.lease_ids, &key, &entry))
            {
                return None;
            }
        }
        let entry = Arc::new(entry);
        self.write().insert(key, entry.clone());
        self.touch();
        Some(entry)
    }

    /// Apply a revocation: drop (and so zeroize) every matching entry. Returns how many
    /// were wiped.
    pub fn revoke(&self, seq: u64, target: Target, lease_ids: Vec<String>) -> usize {
        let wiped = {
            let mut map = self.write();
            let before = map.len();
            map.retain(|k, e| !covers(&target, &lease_ids, k, e));
            before - map.len()
        };
        if wiped > 0 {
            self.touch();
        }
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        applied.push(Applied {
            seq,
            target,
            lease_ids,
        });
        if applied.len() > REMEMBER {
            let excess = applied.len() - REMEMBER;
            applied.drain(..excess);
        }
        wiped
    }

    /// Drop entries of workloads no longer known here.
    pub fn retain_workloads(&self, keep: impl Fn(&str) -> bool) -> usize {
        let dropped = {
            let mut map = self.write();
            let before = map.len();
            map.retain(|k, _| keep(&k.workload));
            before - map.len()
        };
        self.touch();
        dropped
    }

    /// The highest issue sequence of a credential held (0 when none).
    pub fn max_seq(&self) -> u64 {
        self.read().values().map(|e| e.seq).max().unwrap_or(0)
    }

    /// Forget the revocations remembered for the in-flight race: their sequences belong
    /// to a history the control plane no longer has (a store restored to an older point),
    /// and would drop credentials issued at its lower sequences.
    pub fn forget_applied(&self) {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Drop everything (eviction, failing closed, a control plane behind this agent).
    pub fn wipe_all(&self) -> usize {
        let n = {
            let mut map = self.write();
            let n = map.len();
            map.clear();
            n
        };
        self.touch();
        n
    }

    /// Drop expired entries; returns their lease ids.
    pub fn sweep(&self, now: i64) -> Vec<String> {
        let mut gone = Vec::new();
        self.write().retain(|_, e| {
            let keep = e.expires_at > now;
            if !keep {
                gone.push(e.lease_id.clone());
            }
            keep
        });
        if !gone.is_empty() {
            self.touch();
        }
        gone
    }

    /// Number of cached credentials.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Cached credentials by kind (for the metrics).
    pub fn count_by_kind(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for e in self.read().values() {
            *out.entry(e.served.kind.clone()).or_default() += 1;
        }
        out
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lease ids of entries bound to a task.
    pub fn task_leases(&self, task: &str) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(k, _)| k.task.as_deref() == Some(task))
            .map(|(_, e)| e.lease_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(w: &str) -> Key {
        Key {
            workload: w.into(),
            credential: "c".into(),
            audience: String::new(),
            action: String::new(),
            ttl: 0,
            task: None,
            obo: None,
        }
    }

    fn entry(id: &str, seq: u64, exp: i64) -> Entry {
        Entry {
            token: Secret::from("tok"),
            lease_id: id.into(),
            owner: "o".into(),
            issued_at: 0,
            expires_at: exp,
            seq,
            action: "read".into(),
            audience: "a".into(),
            served: Served::default(),
            chain_der: Vec::new(),
        }
    }

    #[test]
    fn keyed_by_everything_that_decided() {
        let c = Cache::default();
        assert!(c.insert(key("w"), entry("l1", 1, 100)));
        assert!(c.get(&key("w"), 10).is_some());
        let mut other = key("w");
        other.obo = Some("alice".into());
        assert!(
            c.get(&other, 10).is_none(),
            "on-behalf-of is part of the key"
        );
        assert!(c.get(&key("w"), 100).is_none(), "expired is never served");
    }

    #[test]
    fn revocation_wipes_and_closes_the_in_flight_race() {
        let c = Cache::default();
        c.insert(key("w"), entry("l1", 5, 100));
        c.insert(key("v"), entry("l2", 6, 100));
        assert_eq!(c.revoke(10, Target::Workload("w".into()), vec![]), 1);
        assert!(c.get(&key("w"), 1).is_none());
        assert!(c.get(&key("v"), 1).is_some());
        // An Issue for w that was answered at seq 8 arrives after revocation 10.
        assert!(
            !c.insert(key("w"), entry("l3", 8, 100)),
            "issued before the revocation"
        );
        // One issued after it is fine.
        assert!(c.insert(key("w"), entry("l4", 11, 100)));
        assert_eq!(c.revoke(12, Target::Lease("l2".into()), vec![]), 1);
        assert_eq!(c.wipe_all(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn every_change_bumps_the_generation_watchers_see() {
        let c = Cache::default();
        let mut rx = c.subscribe();
        assert!(!rx.has_changed().unwrap_or(true));
        c.insert(key("w"), entry("l1", 1, 100));
        assert!(rx.has_changed().unwrap_or(false), "insert");
        rx.borrow_and_update();
        assert_eq!(c.revoke(2, Target::Lease("other".into()), vec![]), 0);
        assert!(
            !rx.has_changed().unwrap_or(true),
            "nothing wiped, no wake-up"
        );
        assert_eq!(c.revoke(3, Target::Lease("l1".into()), vec![]), 1);
        assert!(rx.has_changed().unwrap_or(false), "revocation");
        rx.borrow_and_update();
        c.insert(key("w"), entry("l2", 4, 10));
        rx.borrow_and_update();
        assert_eq!(c.sweep(10).len(), 1);
        assert!(rx.has_changed().unwrap_or(false), "expiry");
    }

    #[test]
    fn sweep_and_staleness() {
        let c = Cache::default();
        c.insert(key("w"), entry("l1", 1, 10));
        c.insert(key("v"), entry("l2", 1, 100));
        assert_eq!(c.sweep(10), vec!["l1".to_string()]);
        let e = c.get(&key("v"), 1).expect("present");
        assert!(!e.stale(49));
        assert!(e.stale(50));
    }

    #[test]
    fn staleness_of_extreme_times_does_not_overflow() {
        let mut e = entry("l", 1, i64::MAX);
        e.issued_at = i64::MIN;
        assert!(!e.stale(i64::MIN));
        assert!(e.stale(i64::MAX));
        let e = entry("l", 1, 100);
        assert!(!e.stale(49));
        assert!(e.stale(50));
    }
}
