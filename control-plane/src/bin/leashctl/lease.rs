//! `leashctl lease` and `leashctl revoke`: issued credentials, taking them back, and
//! waiting until every host has wiped them (also used by `policy apply` and `owner
//! offboard`).

use clap::{ArgGroup, Subcommand};
use leash_proto::cli::{parse_secs, Fail};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum LeaseCmd {
    /// List leases.
    List {
        /// Only this workload's.
        #[arg(long)]
        workload: Option<String>,
        /// Only active ones.
        #[arg(long)]
        active: bool,
        #[command(flatten)]
        out: Out,
    },
    /// A lease and its timeline.
    Show {
        /// Lease id.
        id: String,
        #[command(flatten)]
        out: Out,
    },
}

/// Run one `leashctl lease` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: LeaseCmd) -> Result<(), Fail> {
    match cmd {
        LeaseCmd::List {
            workload,
            active,
            out,
        } => {
            let r = c
                .list_leases(v1::ListLeasesRequest {
                    workload: workload.unwrap_or_default(),
                    active_only: active,
                })
                .await?
                .into_inner();
            output::leases(&r, out.output);
        }
        LeaseCmd::Show { id, out } => {
            let r = c
                .get_lease(v1::NameRequest { name: id })
                .await?
                .into_inner();
            let l = r.lease.unwrap_or_default();
            let timeline: Vec<serde_json::Value> = r
                .timeline
                .iter()
                .filter_map(|e| serde_json::from_str(&e.json).ok())
                .collect();
            output::lease(&l, timeline, out.output);
        }
    }
    Ok(())
}

#[derive(clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["lease", "workload", "credential", "owner", "host", "all", "wait_seq"])))]
#[command(group(ArgGroup::new("waiting").args(["wait", "wait_seq"])))]
pub(crate) struct RevokeArgs {
    /// One lease.
    #[arg(long)]
    lease: Option<String>,
    /// Every lease of a workload.
    #[arg(long)]
    workload: Option<String>,
    /// Every lease of a credential.
    #[arg(long)]
    credential: Option<String>,
    /// Every lease of an owner's workloads.
    #[arg(long)]
    owner: Option<String>,
    /// Every lease on a host.
    #[arg(long)]
    host: Option<String>,
    /// Everything.
    #[arg(long)]
    all: bool,
    /// Why (recorded).
    #[arg(long)]
    reason: Option<String>,
    /// Wait until every host has wiped.
    #[arg(long)]
    wait: bool,
    /// Revoke nothing: wait again on the revocation at sequence SEQ (the number
    /// `revoke` printed), as `--wait` does; on any control plane of a shared store.
    #[arg(long, value_name = "SEQ", conflicts_with = "reason")]
    wait_seq: Option<u64>,
    /// How long to wait.
    #[arg(long, default_value = "30s", requires = "waiting")]
    timeout: String,
}

/// `leashctl revoke`.
pub(crate) async fn revoke(c: &mut AdminClient<Channel>, a: RevokeArgs) -> Result<(), Fail> {
    use v1::revocation_target_spec::Target;
    let timeout = parse_secs(&a.timeout).map_err(Fail::usage)?;
    if let Some(seq) = a.wait_seq {
        return wait_for(c, seq, timeout).await;
    }
    let target = if let Some(v) = a.lease {
        Target::Lease(v)
    } else if let Some(v) = a.workload {
        Target::Workload(v)
    } else if let Some(v) = a.credential {
        Target::Credential(v)
    } else if let Some(v) = a.owner {
        Target::Owner(v)
    } else if let Some(v) = a.host {
        Target::Host(v)
    } else {
        Target::All(true)
    };
    let r = c
        .revoke(v1::RevokeRequest {
            target: Some(v1::RevocationTargetSpec {
                target: Some(target),
            }),
            reason: a.reason.unwrap_or_default(),
        })
        .await?
        .into_inner();
    report(
        c,
        r.leases_revoked,
        r.seq,
        &r.hosts,
        a.wait.then_some(timeout),
    )
    .await
}

/// Say what a revocation took back and where it is pushed; then print its sequence
/// number, or with `wait` (seconds) follow it until every host has wiped (see
/// [`wait_for`]). What `revoke` prints, and every command that revokes as it does
/// (`secret rotate`, `secret remove`).
pub(crate) async fn report(
    c: &mut AdminClient<Channel>,
    leases: u32,
    seq: u64,
    hosts: &[String],
    wait: Option<u32>,
) -> Result<(), Fail> {
    eprintln!(
        "revoked {leases} lease(s) at sequence {seq}; pushing to {} host(s)",
        hosts.len()
    );
    match wait {
        None => {
            outln!("{seq}");
            Ok(())
        }
        Some(timeout) => wait_for(c, seq, timeout).await,
    }
}

/// Follow a revocation until every host has wiped it and every end step outside Leash
/// (a database role dropped) is done, or `timeout` seconds pass (exit 6).
pub(crate) async fn wait_for(
    c: &mut AdminClient<Channel>,
    seq: u64,
    timeout: u32,
) -> Result<(), Fail> {
    let mut stream = c
        .wait_revocation(v1::WaitRevocationRequest {
            seq,
            timeout_ms: timeout.saturating_mul(1000),
        })
        .await?
        .into_inner();
    let mut last = v1::RevocationProgress::default();
    // The server reports every change (a drop attempt that failed again is one); a line
    // that says nothing new is not printed again.
    let mut printed = String::new();
    while let Some(p) = stream.message().await? {
        let mut line = format!("wiped on {}/{} hosts", p.acked, p.total);
        if !p.pending_hosts.is_empty() {
            line.push_str(&format!("; {} not answering", p.pending_hosts.join(", ")));
        }
        if !p.failed_closed_hosts.is_empty() {
            line.push_str(&format!(
                "; {} offline past max_offline (already wiped by failing closed)",
                p.failed_closed_hosts.join(", ")
            ));
        }
        if p.ends_pending > 0 {
            line.push_str(&format!("; {}", ends_pending(&p)));
        }
        if line != printed {
            eprintln!("{line}");
            printed = line;
        }
        last = p;
    }
    if last.done {
        let ends = if last.ends_total > 0 {
            format!(
                "; {}/{} {}(s) done",
                last.ends_total,
                last.ends_total,
                esc(&last.end_step)
            )
        } else {
            String::new()
        };
        outln!(
            "wiped on {}/{} hosts in {} ms{ends}",
            last.acked,
            last.total,
            last.elapsed_ms
        );
        Ok(())
    } else {
        let mut why = Vec::new();
        if !last.pending_hosts.is_empty() {
            why.push(format!(
                "{} did not acknowledge the wipe",
                last.pending_hosts.join(", ")
            ));
        }
        if last.ends_pending > 0 {
            why.push(ends_pending(&last));
        }
        Err(Fail(
            format!("timed out after {}s: {}", timeout, why.join("; ")),
            6,
        ))
    }
}

/// "2 drop(s) pending (l-1: connection refused, …)": the end steps outside Leash a
/// revocation still waits for, with their last errors. What the control plane stored
/// is shown escaped (an error message cannot forge a line).
fn ends_pending(p: &v1::RevocationProgress) -> String {
    let step = if p.end_step.is_empty() {
        "end"
    } else {
        p.end_step.as_str()
    };
    let mut s = format!("{} {}(s) pending", p.ends_pending, esc(step));
    if !p.end_errors.is_empty() {
        let errors: Vec<String> = p.end_errors.iter().map(|e| esc(e).into_owned()).collect();
        s.push_str(&format!(" ({})", errors.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_end_steps_are_counted_with_their_errors_escaped() {
        let p = v1::RevocationProgress {
            ends_total: 3,
            ends_pending: 2,
            end_step: "drop".into(),
            end_errors: vec!["l-1: connection refused".into(), "l-2: a\nb".into()],
            ..Default::default()
        };
        assert_eq!(
            ends_pending(&p),
            "2 drop(s) pending (l-1: connection refused, l-2: a\\nb)"
        );
        let quiet = v1::RevocationProgress {
            ends_pending: 1,
            ..Default::default()
        };
        assert_eq!(ends_pending(&quiet), "1 end(s) pending");
    }
}
