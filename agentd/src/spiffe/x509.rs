//! X.509-SVIDs: the key pair and CSR the agent makes for each one, and the
//! FetchX509SVID stream.
//!
//! The key pair is P-256, made in memory for every Issue; its PKCS#8 DER is kept only as
//! the cache entry's secret (locked, never on disk, wiped with the entry) and the CSR is
//! what goes to the control plane, through the same path as `Fetch` (policy, leases, the
//! task the caller runs inside, wipe, usage reports) for the `x509` credential the
//! agent was started with (`--spiffe-x509-credential`, default `spiffe-x509`).
//!
//! A stream sends the caller's SVIDs (one per workload it matches), then a new message
//! whenever that set changes: renewal at half life, a revocation (the revoked SVID is
//! gone at once; a new one is issued if policy still permits), a changed bundle. It
//! waits on the cache's generation and the bundle, not on a timer; the only timer
//! re-reads the agent's clock for the renewal point. When the caller is entitled to no
//! SVID any more (workload disabled or removed, policy now refuses), the stream ends with
//! `PermissionDenied`, which SPIFFE clients treat as "no identity": they drop what they
//! hold and retry.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::StreamExt;
use leash_proto::reason::Reason;
use leash_proto::spiffe as pb;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use zeroize::Zeroize;

use crate::cache::Entry;
use crate::calls::{CallError, Calls, Obtain};
use crate::secret::Secret;

use super::bundle;
use super::caller::{spiffe_id, Caller};
use super::error::SpiffeError;

/// How often a waiting stream re-reads the agent's clock for its renewal point (the
/// clock may be moved).
const RENEW_TICK: Duration = Duration::from_millis(250);

/// A new P-256 key pair: its CSR (DER) and its PKCS#8 DER private key, held as a
/// [`Secret`] (base64 text, which is what a `Secret` holds).
pub fn make_key() -> Result<(Vec<u8>, Secret), CallError> {
    let fail = |e: rcgen::Error| {
        CallError::new(
            Reason::Unavailable,
            format!("cannot make a key pair for an X.509-SVID: {e}"),
        )
    };
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = CertificateParams::default();
    // The control plane sets every name itself; the CSR only carries the key.
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&kp).map_err(fail)?;
    let mut der = kp.serialize_der();
    let key = Secret::new(STANDARD.encode(&der));
    der.zeroize();
    Ok((csr.der().to_vec(), key))
}

/// The private key of an X.509-SVID entry, as DER.
fn key_der(e: &Entry) -> Vec<u8> {
    STANDARD.decode(e.token.expose()).unwrap_or_default()
}

/// What the caller was last sent: each SVID's lease, and the bundle.
type Sent = (Vec<String>, Vec<u8>);

/// The caller's SVIDs now, issuing what is missing or past half its life.
async fn current(
    calls: &Calls,
    caller: &Caller,
) -> Result<(pb::X509svidResponse, Sent, i64), SpiffeError> {
    let agent = calls.agent();
    let ws = caller.workloads(calls)?;
    let td = agent.identity().desc.trust_domain.clone();
    let credential = &agent.config.spiffe_x509_credential;
    let bundle = bundle::x509_bundle(agent, agent.bundle().borrow().as_deref());
    let still = || caller.still_in_task(calls);
    let make = make_key;
    let how = Obtain {
        task_name: caller.task_name(),
        fresh: false,
        audiences: &[],
        x509: Some(&make),
        still_in_task: &still,
    };
    let mut svids = Vec::with_capacity(ws.len());
    let mut leases = Vec::with_capacity(ws.len());
    let mut renew_at = i64::MAX;
    let mut refused = None;
    for w in &ws {
        let key = caller.key(w, credential, String::new());
        match calls.obtain(&caller.attested, w, &key, &how).await {
            Ok((e, _)) => {
                let half = e.expires_at.saturating_sub(e.issued_at) / 2;
                renew_at = renew_at.min(e.issued_at.saturating_add(half));
                leases.push(e.lease_id.clone());
                svids.push(pb::X509svid {
                    spiffe_id: spiffe_id(&td, &w.name),
                    x509_svid: e.chain_der.concat(),
                    x509_svid_key: key_der(&e),
                    bundle: bundle.clone(),
                    hint: String::new(),
                });
            }
            Err(e) if matches!(e.reason(), Reason::Denied | Reason::NotFound) => {
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if svids.is_empty() {
        return Err(match refused {
            Some(e) => {
                SpiffeError::NoIdentity(format!("this caller is entitled to no X.509-SVID: {e}"))
            }
            None => SpiffeError::NoIdentity("this caller is entitled to no X.509-SVID".into()),
        });
    }
    let resp = pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: Default::default(),
    };
    Ok((resp, (leases, bundle), renew_at))
}

/// What a FetchX509SVID stream sends: its first message, then every change.
pub type Updates = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::X509svidResponse, Status>> + Send + 'static>,
>;

/// What a stream waits on between messages, taken before the message it follows was
/// made, so a change while it was made wakes the next pass.
struct Watch {
    generation: tokio::sync::watch::Receiver<u64>,
    bundle: tokio::sync::watch::Receiver<Option<Arc<leash_proto::v1::TrustBundle>>>,
}

impl Watch {
    fn new(calls: &Calls) -> Watch {
        let agent = calls.agent();
        let mut w = Watch {
            generation: agent.cache.subscribe(),
            bundle: agent.bundle(),
        };
        w.mark_seen();
        w
    }

    /// Marked seen before reading, so a change while a pass runs wakes the next.
    fn mark_seen(&mut self) {
        self.generation.borrow_and_update();
        self.bundle.borrow_and_update();
    }
}

/// Count a message's SVIDs as used by the caller (usage reports).
fn record_use(calls: &Calls, caller: &Caller, sent: &Sent) {
    let a = &caller.attested;
    for lease in &sent.0 {
        calls
            .agent()
            .record_use(lease, a.pid, a.exe_path.as_deref().unwrap_or(""));
    }
}

/// FetchX509SVID: the caller's SVIDs, then every change, until the caller goes away or
/// is entitled to none.
///
/// The first message is made here, before the response starts, so it leaves with the
/// response headers (one write, one wake-up of the client) and a refusal is the call's
/// status; a task then waits for changes and sends the rest.
pub async fn open(calls: Arc<Calls>, caller: Caller) -> Result<Updates, SpiffeError> {
    let watch = Watch::new(&calls);
    let (first, sent, renew_at) = current(&calls, &caller).await?;
    record_use(&calls, &caller, &sent);
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(follow(calls, caller, tx, watch, sent, renew_at));
    let first = futures::stream::once(std::future::ready(Ok(first)));
    Ok(Box::pin(first.chain(ReceiverStream::new(rx))))
}

/// Messages a stream may have queued for a slow client before it waits.
const STREAM_BUFFER: usize = 4;

/// The rest of a stream after its first message (`last`, renewing at `renew_at`).
async fn follow(
    calls: Arc<Calls>,
    caller: Caller,
    tx: mpsc::Sender<Result<pb::X509svidResponse, Status>>,
    mut watch: Watch,
    last: Sent,
    mut renew_at: i64,
) {
    let agent = calls.agent().clone();
    let mut last = last;
    loop {
        loop {
            tokio::select! {
                r = watch.generation.changed() => if r.is_err() { return } else { break },
                r = watch.bundle.changed() => if r.is_err() { return } else { break },
                _ = tx.closed() => return,
                _ = tokio::time::sleep(RENEW_TICK) => {
                    if agent.clock.now() >= renew_at {
                        break;
                    }
                }
            }
        }
        watch.mark_seen();
        match current(&calls, &caller).await {
            Ok((resp, sent, at)) => {
                renew_at = at;
                if last != sent {
                    record_use(&calls, &caller, &sent);
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    last = sent;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pair_is_p256_with_a_csr_that_carries_it() {
        let (csr, key) = make_key().expect("key");
        let der = STANDARD.decode(key.expose()).expect("base64");
        let kp = KeyPair::try_from(der.as_slice()).expect("pkcs8");
        assert!(kp.is_compatible(&PKCS_ECDSA_P256_SHA256));
        let parsed =
            rcgen::CertificateSigningRequestParams::from_der(&csr.clone().into()).expect("csr");
        use rcgen::PublicKeyData;
        assert_eq!(parsed.public_key.der_bytes(), kp.der_bytes());
        let (_, other) = make_key().expect("key");
        assert_ne!(
            other.fingerprint(),
            key.fingerprint(),
            "a new key each time"
        );
    }
}
