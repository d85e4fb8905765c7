//! The Leash wire protocol, shared by `leash-control-plane` and `leash-agentd`.
//!
//! - [`v1`]: the generated gRPC services and messages (`proto/leash/v1`).
//! - [`spiffe`]: the SPIFFE Workload API (`proto/spiffe/workload.proto`).
//! - [`clock`]: the wall clock both daemons decide by, which tests can move.
//! - [`reason`]: the machine-readable error reasons carried on a `tonic::Status` and the
//!   exit codes the CLIs map them to.
//! - [`join_token`]: the join-token format (what the control plane mints and the agent
//!   reads).
//! - [`names`]: the rule for text a caller chooses, and the escaping of text shown back.
//! - [`socket_trust`]: the default socket paths and the check that a socket (or a socket
//!   directory) is one only root or the caller could have set up.
//! - [`cli`]: what both CLIs share (tables, JSON, exit codes of failed calls).
//! - [`startup`]: the start-up all four binaries share (arguments, logging, signals);
//!   behind the default `startup` feature.
//! - [`reference`]: `leash://NAME?action=…#field`, the references to credentials that
//!   files and environment variables hold.
//! - [`workload_kind`]: the kinds of workload, which both daemons decide by.
//! - [`envfile`]: the `.env`-style files of `leash exec --env-file` (`VAR=leash://…`
//!   and plain lines).
#![forbid(unsafe_code)]

pub mod admin_code;
pub mod cli;
pub mod clock;
pub mod envfile;
pub mod join_token;
pub mod names;
pub mod reason;
pub mod reference;
#[cfg(feature = "startup")]
pub mod shell_assets;
pub mod socket_trust;
#[cfg(feature = "startup")]
pub mod spans;
#[cfg(feature = "startup")]
pub mod startup;
pub mod uds;
pub mod workload_kind;

/// Generated code for package `leash.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("leash.v1");
}

/// Generated code for the SPIFFE Workload API (`proto/spiffe/workload.proto`, no package,
/// as the SPIFFE specification defines it).
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod spiffe {
    tonic::include_proto!("_");
}

/// Version of the agent <-> control plane protocol, sent in Enroll and Sync.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest gRPC message either side accepts or sends. Requests are small; this leaves
/// room for a snapshot of a few thousand workloads.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest message the workload socket accepts from a caller.
pub const MAX_WORKLOAD_REQUEST_BYTES: usize = 64 * 1024;
