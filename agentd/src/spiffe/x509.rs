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
/// status. The rest is made by the response stream itself when the server polls it for
/// its next message: no task of its own, so a client that takes the first message and
/// resets the stream (as `fetch_x509_svid` does) costs nothing more, and a stream whose
/// client went away is dropped with the call.
pub async fn open(calls: Arc<Calls>, caller: Caller) -> Result<Updates, SpiffeError> {
    let watch = Watch::new(&calls);
    let (first, sent, renew_at) = current(&calls, &caller).await?;
    record_use(&calls, &caller, &sent);
    let rest = Following {
        calls,
        caller,
        watch,
        last: sent,
        renew_at,
        ended: false,
    };
    let first = futures::stream::once(std::future::ready(Ok(first)));
    Ok(Box::pin(first.chain(futures::stream::unfold(rest, next))))
}

/// What the stream keeps between messages after its first.
struct Following {
    calls: Arc<Calls>,
    caller: Caller,
    watch: Watch,
    /// What the caller was last sent.
    last: Sent,
    /// When (agent clock, unix seconds) the SVIDs sent are past half their life.
    renew_at: i64,
    /// A refusal was sent: the stream ends.
    ended: bool,
}

/// The stream's next message: once something it watches changed (the cache, the bundle,
/// the renewal point) and the caller's SVIDs differ from what it was last sent. `None`
/// ends the stream.
async fn next(mut f: Following) -> Option<(Result<pb::X509svidResponse, Status>, Following)> {
    if f.ended {
        return None;
    }
    let clock = f.calls.agent().clock.clone();
    loop {
        loop {
            tokio::select! {
                r = f.watch.generation.changed() => if r.is_err() { return None } else { break },
                r = f.watch.bundle.changed() => if r.is_err() { return None } else { break },
                _ = tokio::time::sleep(RENEW_TICK) => {
                    if clock.now() >= f.renew_at {
                        break;
                    }
                }
            }
        }
        f.watch.mark_seen();
        match current(&f.calls, &f.caller).await {
            Ok((resp, sent, at)) => {
                f.renew_at = at;
                if f.last != sent {
                    record_use(&f.calls, &f.caller, &sent);
                    f.last = sent;
                    return Some((Ok(resp), f));
                }
            }
            Err(e) => {
                f.ended = true;
                return Some((Err(e.into()), f));
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
