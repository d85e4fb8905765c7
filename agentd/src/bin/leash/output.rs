//! What `leash` prints: the text and JSON forms of `get`, `whoami` and `status`.
//! Only `get`'s secret goes to stdout as bare text; notes go to stderr from the commands.

use clap::ValueEnum;
use leash_proto::cli::{print_json as json, time};
use leash_proto::outln;
use leash_proto::v1;

/// `--output`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

/// `leash get`: the bare token, or the token with its lease as JSON.
pub(crate) fn fetched(r: &v1::FetchResponse, output: Output) {
    if output == Output::Json {
        json(&serde_json::json!({
            "token": r.token,
            "expires_at": time(r.expires_at_unix),
            "expires_at_unix": r.expires_at_unix,
            "lease_id": r.lease_id,
            "workload": r.workload,
            "action": r.action,
            "audience": r.audience,
            "cached": r.cached,
        }));
    } else {
        outln!("{}", r.token);
    }
}

/// `leash whoami`.
pub(crate) fn whoami(r: v1::WhoAmIResponse, output: Output) {
    let a = r.attested.clone().unwrap_or_default();
    if output == Output::Json {
        json(&leash_agentd::documents::whoami(&r));
    } else {
        outln!("host:      {}", r.host);
        outln!("pid:       {}", a.pid);
        outln!("uid:       {} ({})", a.uid, a.user);
        outln!("gid:       {}", a.gid);
        outln!(
            "exe:       {}",
            if a.exe_path.is_empty() {
                "-"
            } else {
                &a.exe_path
            }
        );
        outln!("selectors:");
        for s in &a.selectors {
            outln!("  {s}");
        }
        if r.workloads.is_empty() {
            outln!("workloads: (none match)");
        } else {
            outln!("workloads:");
            for (w, id) in r.workloads.iter().zip(r.spiffe_ids.split(' ')) {
                outln!("  {w}  {id}");
            }
        }
    }
}

/// `leash status`, or only the agent's health when it could not attest the caller.
pub(crate) fn status(r: &v1::StatusResponse, output: Output) {
    if output == Output::Json {
        // The same document the agent's HTTP API answers.
        json(&leash_agentd::documents::status(r));
    } else if r.health_only {
        outln!("state:          {}", r.state);
        outln!("synced:         {}", r.synced);
        outln!("last seq:       {}", r.last_seq);
        outln!("last heartbeat: {}", time(r.last_heartbeat_unix_ms / 1000));
    } else {
        outln!("agent:          leash-agentd {}", r.version);
        outln!("host:           {}", r.host);
        outln!(
            "state:          {}{}",
            r.state,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.reason)
            }
        );
        outln!("synced:         {}", r.synced);
        outln!("last seq:       {}", r.last_seq);
        outln!("last heartbeat: {}", time(r.last_heartbeat_unix_ms / 1000));
        outln!("control plane:  {}", r.control_plane);
        outln!("max offline:    {}s", r.max_offline_secs);
        outln!("workloads:      {}", r.workloads);
        outln!("cached:         {} credential(s)", r.cached_credentials);
    }
}
