//! A credential kind for the control plane's unit tests: a token that names its lease,
//! and a record of every lease it was asked to end. Adding it took this module, its
//! `mod` line and one `Registry::add` call: no edit to issuance or the handlers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use leash_proto::v1;

use super::{CredentialKind, Env, KindError, KindEvent, Material, MintRequest, Minted};
use crate::model::Lease;

/// The test kind `recorder`.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Ids of the leases whose end step ran, in order.
    pub ended: Arc<Mutex<Vec<String>>>,
    /// How many end steps fail before they succeed.
    pub failures: Arc<AtomicU32>,
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
            events: Vec::new(),
        })
    }

    fn ends_outside(&self) -> bool {
        true
    }

    async fn end(&self, _env: Env<'_>, lease: &Lease) -> Result<Vec<KindEvent>, KindError> {
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
        Ok(Vec::new())
    }
}
