//! `leashctl audit` and `leashctl report`: the audit trail as JSON lines, and the
//! report of stale workloads.

use std::io::Write;

use clap::Subcommand;
use leash_proto::cli::{parse_secs, stdout_failed, Fail};
use leash_proto::clock::system_now_ms;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// The newest events; --follow keeps streaming.
    Tail {
        /// Keep streaming new events.
        #[arg(long)]
        follow: bool,
        /// How many past events.
        #[arg(long, default_value_t = 50)]
        lines: u32,
    },
    /// The chained trail as JSON lines (events with prev_hash and hash, the checkpoint
    /// key, checkpoints), from a time ago (e.g. 1h) or from an event id (e.g. 1 for all);
    /// --follow keeps streaming.
    Export {
        /// A time ago (30m, 2h, 7d) or an event id (digits only: from that event on).
        #[arg(long, default_value = "1h")]
        since: String,
        /// Keep streaming new events and checkpoints.
        #[arg(long)]
        follow: bool,
    },
    /// Check the chain and the signed checkpoints of the whole kept trail (or of an
    /// export); exit 1 naming the first event found edited, deleted, inserted,
    /// reordered or truncated.
    Verify {
        /// Verify this export (`audit export` output) instead of the control plane's trail.
        #[arg(long, value_name = "FILE")]
        from_export: Option<std::path::PathBuf>,
        /// The checkpoint key id to expect (the `key_id` of the export's `audit.key` line,
        /// written down at install): checkpoints signed by any other key do not verify.
        #[arg(long, value_name = "KEY_ID")]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ReportCmd {
    /// Workloads with no issuance for a while, and workloads whose owner was offboarded.
    Stale {
        /// e.g. 30d.
        #[arg(long, default_value = "30d")]
        unused_for: String,
        #[command(flatten)]
        out: Out,
    },
}

/// `leashctl audit tail` and `leashctl audit export`: each event as one JSON line, as
/// stored. A reader that goes away (`| head`) ends the command quietly.
pub(crate) async fn audit(c: &mut AdminClient<Channel>, cmd: AuditCmd) -> Result<(), Fail> {
    let req = match cmd {
        AuditCmd::Tail { follow, lines } => v1::AuditTailRequest {
            follow,
            since_unix_ms: 0,
            limit: lines,
            ..Default::default()
        },
        AuditCmd::Export { since, follow } => {
            let (after_id, since_unix_ms) = if since.bytes().all(|b| b.is_ascii_digit()) {
                let id: u64 = since
                    .parse()
                    .map_err(|_| Fail::usage(format!("--since {since}: not an event id")))?;
                (id.saturating_sub(1), 0)
            } else {
                let secs = parse_secs(&since).map_err(Fail::usage)?;
                (0, system_now_ms() - i64::from(secs) * 1000)
            };
            v1::AuditTailRequest {
                follow,
                since_unix_ms,
                limit: 0,
                chain: true,
                after_id,
            }
        }
        AuditCmd::Verify { from_export, key } => {
            return crate::audit_verify::verify(c, from_export, key.as_deref()).await
        }
    };
    let mut stream = c.audit_tail(req).await?.into_inner();
    let stdout = std::io::stdout();
    while let Some(e) = stream.message().await? {
        let mut out = stdout.lock();
        if let Err(e) = writeln!(out, "{}", e.json).and_then(|_| out.flush()) {
            stdout_failed(&e);
        }
    }
    Ok(())
}

/// Run one `leashctl report` command.
pub(crate) async fn report(c: &mut AdminClient<Channel>, cmd: ReportCmd) -> Result<(), Fail> {
    match cmd {
        ReportCmd::Stale { unused_for, out } => {
            let r = c
                .stale_report(v1::StaleReportRequest {
                    unused_for_seconds: parse_secs(&unused_for).map_err(Fail::usage)?,
                })
                .await?
                .into_inner();
            output::stale(&r, out.output);
        }
    }
    Ok(())
}
