//! A credential kind for the control plane's unit tests: a token that names its lease,
//! and a record of every lease it was asked to end. Adding it took this module, its
//! `mod` line and one `Registry::add` call: no edit to issuance or the handlers.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use leash_proto::v1;

use super::{CredentialKind, Env, KindError, KindEvent, Material, MintRequest, Minted, Reconciled};
use crate::model::{Credential, Lease};

/// The test kind `recorder`.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Ids of the leases whose end step ran, in order.
    pub ended: Arc<Mutex<Vec<String>>>,
    /// How many end steps fail before they succeed.
    pub failures: Arc<AtomicU32>,
    /// How long each end step takes, in ms.
    pub end_ms: Arc<AtomicU64>,
    /// End steps running now, and the most that ever ran at once.
    pub running: Arc<AtomicUsize>,
    /// See `running`.
    pub most_running: Arc<AtomicUsize>,
    /// What the next reconcile reports undone (an `Err` fails it; none: nothing).
    pub reconcile: Arc<Mutex<Option<Result<Reconciled, String>>>>,
    /// The credentials reconcile was asked about, in order.
    pub reconciled: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// The leases ended so far.
    pub fn ended(&self) -> Vec<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl CredentialKind for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn validate(&self, def: &v1::Credential) -> Result<(), KindError> {
        if def.audiences.len() != 1 {
            return Err(KindError::Invalid(
                "a recorder credential takes exactly one --audience".into(),
            ));
        }
        Ok(())
    }

    async fn mint(&self, _env: Env<'_>, req: MintRequest<'_>) -> Result<Minted, KindError> {
        Ok(Minted {
            material: Material::Token(format!("recorded-{}", req.lease_id)),
            expires_at: req.now + i64::from(req.ttl),
            fingerprint: "recorder".into(),
            version: 0,
            format: String::new(),
            events: vec![KindEvent {
                kind: "recorder-set-up",
                detail: serde_json::json!({ "lease": req.lease_id }),
            }],
        })
    }

    fn ends_outside(&self) -> bool {
        true
    }

    fn end_failed_event(&self) -> &'static str {
        "recorder-end-failed"
    }

    fn end_step(&self) -> &'static str {
        "undo"
    }

    async fn end(&self, _env: Env<'_>, lease: &Lease) -> Result<Vec<KindEvent>, KindError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let ms = self.end_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(KindError::Unavailable(
                "the outside system did not answer".into(),
            ));
        }
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lease.id.clone());
        Ok(vec![KindEvent {
            kind: "recorder-undone",
            detail: serde_json::json!({ "lease": lease.id }),
        }])
    }

    async fn reconcile(
        &self,
        _env: Env<'_>,
        credential: &Credential,
    ) -> Result<Reconciled, KindError> {
        self.reconciled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(credential.name.clone());
        let next = self
            .reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Ok(Vec::new()));
        next.map_err(KindError::Unavailable)
    }
}
