//! Time: the control plane decides by a [`Clock`] it is handed (see `leash_proto::clock`).

pub use leash_proto::clock::{system_now_ms as now_ms, Clock};
