//! The Leash control plane.
//!
//! It holds identities (workloads and their owners), credential definitions, the CA and
//! JWT signing keys, leases, the revocation log and the audit trail, and serves two
//! APIs: the agent-facing one over mutual TLS (`agent_api`), and the admin one on a
//! local Unix socket (`admin`). Both share one `state::Shared`; `server::run` wires them
//! together; `main.rs` is a thin
//! command-line shell around it so tests can start a control plane in-process too.
#![forbid(unsafe_code)]

pub mod actor;
pub mod admin;
pub mod agent_api;
pub mod approval;
pub mod audit;
pub mod audit_chain;
pub mod audit_verify;
pub mod backup;
pub mod checkpoints;
pub mod clock;
pub mod config;
pub mod enroll;
pub mod expiry;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod hub;
pub mod issuance;
pub mod issuer;
pub mod keys;
pub mod kinds;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod reconcile;
pub mod replicas;
pub mod retention;
pub mod revocation;
pub mod scheduled;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod wire;

/// A random identifier: `prefix-` followed by `bytes` random bytes in hex.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    // SystemRandom only fails if the OS has no randomness at all; then ids would be
    // zero, which the store's uniqueness checks still catch.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    format!("{prefix}-{}", hex::encode(b))
}
