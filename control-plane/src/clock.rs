//! Time: the control plane decides by a [`Clock`] it is handed (see proto/src/clock.rs):
//! `server::run` makes one and hands it to the store, the connection registry, the
//! expiry sweeper and every service.

pub use leash_proto::clock::Clock;

/// Unix ms by the system clock, for what is not a decision: the `--since` of a CLI query,
/// log lines. Code that decides by time takes a [`Clock`] instead.
pub use leash_proto::clock::system_now_ms as now_ms;
