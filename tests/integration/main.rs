//! Leash's integration tests: real `leash-control-plane` and `leash-agentd` processes on a
//! temp dir, driven by the real `leashctl` and `leash` and, where a test needs to speak
//! the protocol itself, by gRPC clients acting as an agent or a caller.
//!
//! - `control_plane`: enrollment, mTLS, Sync, Issue, claims, durability, bad input;
//! - `agent`: attestation, the workload socket, the cache, the control plane away;
//! - `revocation`: revocation push and wipe acknowledgment, disable, eviction, failing
//!   closed, expiry, timelines, introspection;
//! - `tasks`: `leash exec`, task-bound credentials wiped and completed when the task ends
//!   however it ends, membership by ancestry plus handle, the runner task API;
//! - `policy`: Cedar policy check, precedence, TTL / host / time restrictions, action
//!   scopes, re-evaluation on change, explain, `--allow` links;
//! - `human`: approvals, offboarding, the stale report, shared agents, transfers;
//! - `architecture`: no import circles and no over-long files in the daemons' sources;
//! - `sockets`, `inputs`, `host_trust`, `config`, `faults`, `partitions`: socket
//!   paths the CLIs trust, names and sizes taken from callers, what the control plane
//!   believes a host about, configuration bounds, and the fault campaign (kill -9 under
//!   load, a full disk, an agent cut off);
//! - `secrets_client`: `leash://` references, `leash exec --env-file` / `--resolve-env`,
//!   masking of injected values (pipes and a pty), `leash render`.
//! - `secrets_e2e`: real secrets through every surface of the host: `leash get` (exact
//!   bytes, JSON, fields, exit codes), `leash exec` env files and environment, masking,
//!   the HTTP API, rotation under a running task, `leash render`.
//! - `databases`: PostgreSQL roles per lease against a throwaway server the harness
//!   starts (`leash_tests::pg`).
//! - `spiffe`: the SPIFFE Workload API on the agent socket through the Rust `spiffe`
//!   crate and the Python `spiffe` package: SVIDs, bundles, validation, mutual TLS,
//!   revocation on open streams, tasks.
//! - `databases_ends`: every ending path of a PostgreSQL lease and its faults: the
//!   database down at revoke, `kill -9` with a drop queued, offboarding, eviction,
//!   disabling, a policy change, `credential remove`, `revoke --wait` counting drops.
//!
//! Tests that need root (a second uid through `setpriv`, namespaces, tmpfs) are marked
//! `#[ignore = "needs root: …"]`: the runner reports them as skipped when not root, and
//! `cargo xtask test` includes them when it runs as root, as CI does.

mod agent;
mod agent_http;
mod architecture;
mod audit_chain;
mod authority;
mod config;
mod control_plane;
mod databases;
mod databases_client;
mod databases_ends;
mod faults;
mod host_trust;
mod human;
mod inputs;
mod key_rotation;
mod master_key;
mod metrics;
mod oidc;
mod partitions;
mod pg_store;
mod policy;
mod pty;
mod revocation;
mod secrets;
mod secrets_client;
mod secrets_e2e;
mod sockets;
mod spiffe;
mod svid_cp;
mod tasks;

use std::path::Path;

use leash_agentd::tls::{self, Trust};
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use leash_tests::Cluster;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;

/// The audience of the `api` credential [`basic`] defines.
pub const API_AUD: &str = "https://api.example";

/// A runtime for the tests that speak gRPC themselves.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The set-up most tests share: credential `api` and workload `ci/job` (owner
/// `team-ci`, the test's own uid) allowed it, known to every running agent.
pub fn basic(c: &Cluster) {
    c.credential("api", &["--audience", API_AUD, "--ttl", "5m"]);
    c.my_workload("ci/job", "team-ci", &["api"]);
}

/// The host certificate and key an agent saved in its state dir.
pub fn host_credentials(
    state_dir: &Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let cert = std::fs::read(state_dir.join("host.crt")).expect("host.crt");
    let key = std::fs::read(state_dir.join("host.key")).expect("host.key");
    (
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
}

/// A control-plane client over TLS that pins `c`'s CA and presents `client` (or no
/// certificate at all).
pub async fn cp_client(
    c: &Cluster,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ControlPlaneClient<Channel>, tls::TlsError> {
    assert!(
        c.ca_pin.starts_with("sha256:"),
        "the control plane logged no CA pin"
    );
    let cfg = tls::client_config(Trust::Pin(c.ca_pin.clone()), client)?;
    let ch = tls::connect(&[c.addr.to_string()], cfg).await?;
    Ok(ControlPlaneClient::new(ch))
}

/// The event types of a `lease show --output json` timeline, in order.
pub fn timeline_types(lease: &serde_json::Value) -> Vec<String> {
    lease["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["type"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Assert that `lease`'s timeline holds each event type of `order`, in that order (the
/// first of each type counts).
pub fn assert_timeline_order(lease: &serde_json::Value, order: &[&str]) {
    let types = timeline_types(lease);
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("no {t} on the timeline {types:?}"))
    };
    assert!(
        order.windows(2).all(|w| pos(w[0]) < pos(w[1])),
        "the timeline {types:?} is not in the order {order:?}"
    );
}

/// The claims of a JWT, decoded without verifying it (tests verify elsewhere). Panics
/// never print the token.
pub fn claims(token: &str) -> serde_json::Value {
    jwt_part(token, 1)
}

/// The header of a JWT (`alg`, `kid`), decoded without verifying it.
pub fn header(token: &str) -> serde_json::Value {
    jwt_part(token, 0)
}

fn jwt_part(token: &str, n: usize) -> serde_json::Value {
    use base64::Engine;
    let payload = token
        .split('.')
        .nth(n)
        .unwrap_or_else(|| panic!("not a JWT ({} bytes)", token.len()));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_else(|e| panic!("the JWT payload is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("the JWT payload is not JSON: {e}"))
}

/// Write a Cedar policy file into the cluster's temp dir; returns its path.
pub fn policy_file(c: &Cluster, name: &str, text: &str) -> std::path::PathBuf {
    let p = c.dir().join(name);
    std::fs::write(&p, text).expect("write policy file");
    p
}

/// `leashctl policy apply FILE [EXTRA]` with `text`, which must succeed; returns the
/// output.
pub fn apply_policy(c: &Cluster, name: &str, text: &str, extra: &[&str]) -> leash_tests::Output {
    let p = policy_file(c, name, text);
    let p = p.to_str().expect("utf-8 path").to_string();
    let mut args = vec!["policy", "apply", p.as_str()];
    args.extend_from_slice(extra);
    let out = c.leashctl(&args);
    out.code(0);
    out
}
mod audit_pg;
mod backup;
mod dist;
mod ha_ops;
mod ha_replicas;
mod remote_admin;
mod spans;
