//! Signed audit checkpoints: the control plane's own Ed25519 key, and the loop that
//! signs the chain's head every `[audit] checkpoint_every` events, and at least every
//! `checkpoint_interval` while there are new events, and the anchor a retention pass
//! leaves (see `audit_chain.rs` for what is signed).
//!
//! The private key is stored sealed under the master key (blob `audit-key`, rewrapped by
//! master key rotation like the CA and JWT keys); its public key is stored in the clear
//! (blob `audit-key.pub`, written again from the private key at every start), for
//! `leashctl audit export` and `verify`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::audit_chain::{key_id, Checkpoint, CheckpointKind, Link};
use crate::clock::Clock;
use crate::config::AuditConfig;
use crate::keys::{KeyError, MasterKey};
use crate::store::{Storage, StoreError};

/// The blob of the sealed private key.
pub const KEY_BLOB: &str = "audit-key";
/// The blob of the public key (raw 32 bytes).
pub const PUBLIC_BLOB: &str = "audit-key.pub";

/// How often the loop looks when no event woke it (for `checkpoint_interval`).
const TICK: Duration = Duration::from_secs(1);

/// What signing checkpoints can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The sealed key could not be opened or sealed.
    #[error("audit checkpoint key: {0}")]
    Key(#[from] KeyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored key is not an Ed25519 key, or one could not be made.
    #[error("audit checkpoint key {KEY_BLOB:?} is unusable ({0}): restore the data directory from a backup")]
    BadKey(String),
}

/// The checkpoint signing key.
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Signer {
    /// Open the stored key, or make one and store it (sealed), and (re)write its public
    /// key.
    pub async fn load_or_create(
        store: &dyn Storage,
        master: &MasterKey,
    ) -> Result<Signer, CheckpointError> {
        let _hold = master.hold_for_sealed_write().await;
        let key = match store.blob(KEY_BLOB)? {
            Some(sealed) => {
                let pkcs8 = master.open(KEY_BLOB, &sealed)?;
                Ed25519KeyPair::from_pkcs8(&pkcs8)
                    .map_err(|e| CheckpointError::BadKey(e.to_string()))?
            }
            None => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|e| CheckpointError::BadKey(e.to_string()))?;
                let sealed = master.seal(KEY_BLOB, pkcs8.as_ref())?;
                store.put_blob(KEY_BLOB, sealed).await?;
                Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|e| CheckpointError::BadKey(e.to_string()))?
            }
        };
        let public = key.public_key().as_ref().to_vec();
        if store.blob(PUBLIC_BLOB)?.as_deref() != Some(public.as_slice()) {
            store.put_blob(PUBLIC_BLOB, public.clone()).await?;
        }
        Ok(Signer {
            key_id: key_id(&public),
            key,
        })
    }

    /// The raw public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Sign that `at` is event `at.id` with `at.hash`, at `at_ms`.
    pub fn sign(&self, at: &Link, kind: CheckpointKind, at_ms: i64) -> Checkpoint {
        let msg = Checkpoint::signed_bytes(at.id, &at.hash, at_ms, kind, &self.key_id);
        Checkpoint {
            id: at.id,
            hash: at.hash.clone(),
            at_ms,
            kind,
            key_id: self.key_id.clone(),
            signature: base64::engine::general_purpose::STANDARD
                .encode(self.key.sign(&msg).as_ref()),
        }
    }
}

/// What the loop remembers between looks.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Event id and time of the last periodic checkpoint.
    last: Option<(u64, i64)>,
    /// Event id of the last anchor signed.
    anchor: Option<u64>,
}

impl Progress {
    /// Read from the stored checkpoints (once, at start).
    pub fn load(store: &dyn Storage) -> Result<Progress, StoreError> {
        let mut p = Progress::default();
        for cp in store.checkpoints(0)? {
            match cp.kind {
                CheckpointKind::Periodic => p.last = Some((cp.id, cp.at_ms)),
                CheckpointKind::Anchor => p.anchor = Some(cp.id),
            }
        }
        Ok(p)
    }
}

/// One look: sign the anchor if retention moved it, and the head if due. Returns the
/// checkpoints written.
pub async fn step(
    store: &dyn Storage,
    signer: &Signer,
    now_ms: i64,
    cfg: AuditConfig,
    p: &mut Progress,
) -> Result<Vec<Checkpoint>, StoreError> {
    let chain = store.audit_chain()?;
    let mut out = Vec::new();
    if let Some(a) = &chain.anchor {
        if p.anchor != Some(a.id) {
            let cp = signer.sign(a, CheckpointKind::Anchor, now_ms);
            store.put_checkpoint(cp.clone()).await?;
            p.anchor = Some(a.id);
            out.push(cp);
        }
    }
    let head = &chain.head;
    let (last_id, last_at) = p.last.unwrap_or((0, i64::MIN));
    let interval = i64::try_from(cfg.checkpoint_interval.as_millis()).unwrap_or(i64::MAX);
    let due = head.id >= chain.genesis
        && head.id > last_id
        && (head.id - last_id >= cfg.checkpoint_every
            || now_ms.saturating_sub(last_at) >= interval);
    if due {
        let cp = signer.sign(head, CheckpointKind::Periodic, now_ms);
        store.put_checkpoint(cp.clone()).await?;
        p.last = Some((cp.id, cp.at_ms));
        out.push(cp);
    }
    Ok(out)
}

/// Sign checkpoints forever, by `clock`: woken by every event written, and every
/// second for the interval.
pub async fn run(store: Arc<dyn Storage>, signer: Arc<Signer>, clock: Clock, cfg: AuditConfig) {
    let mut live = store.subscribe_events();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = match Progress::load(&*store) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the audit checkpoints; starting afresh");
            Progress::default()
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = live.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
                // Many events at once make one look.
                while live.try_recv().is_ok() {}
            }
        }
        if let Err(e) = step(&*store, &signer, clock.now_ms(), cfg, &mut progress).await {
            tracing::warn!(error = %e, "audit checkpoint failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use crate::store::SledStore;

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        Signer {
            key_id: key_id(key.public_key().as_ref()),
            key,
        }
    }

    async fn append(s: &SledStore, n: usize) {
        let evs = (0..n).map(|_| Event::new("x")).collect();
        s.append_events(evs).await.expect("append");
    }

    #[tokio::test]
    async fn a_checkpoint_every_n_events_and_at_least_every_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(dir.path(), Clock::default()).expect("open");
        let sig = signer();
        let cfg = AuditConfig {
            checkpoint_every: 3,
            checkpoint_interval: Duration::from_secs(3600),
        };
        let mut p = Progress::default();
        let ids = |v: Vec<Checkpoint>| v.iter().map(|c| c.id).collect::<Vec<_>>();
        let t0 = 1_000_000;
        // Nothing written yet: nothing to sign.
        assert!(ids(step(&*s, &sig, t0, cfg, &mut p).await.expect("step")).is_empty());
        append(&s, 2).await;
        assert_eq!(
            ids(step(&*s, &sig, t0, cfg, &mut p).await.expect("step")),
            [2]
        );
        append(&s, 2).await;
        assert!(ids(step(&*s, &sig, t0, cfg, &mut p).await.expect("step")).is_empty());
        append(&s, 1).await;
        assert_eq!(
            ids(step(&*s, &sig, t0, cfg, &mut p).await.expect("step")),
            [5]
        );
        append(&s, 1).await;
        assert!(ids(step(&*s, &sig, t0 + 1000, cfg, &mut p).await.expect("step")).is_empty());
        assert_eq!(
            ids(step(&*s, &sig, t0 + 3_600_000, cfg, &mut p)
                .await
                .expect("step")),
            [6],
            "the interval signs what the count has not"
        );
        // No new event: no new checkpoint, however long.
        assert!(ids(step(&*s, &sig, t0 + 9_000_000, cfg, &mut p)
            .await
            .expect("step"))
        .is_empty());
        let stored = s.checkpoints(0).expect("checkpoints");
        assert_eq!(ids(stored.clone()), [2, 5, 6]);
        assert!(stored.iter().all(|c| c.verify(sig.public_key())));
        let reloaded = Progress::load(&*s).expect("load");
        assert_eq!(reloaded.last, Some((6, t0 + 3_600_000)));
    }
}
