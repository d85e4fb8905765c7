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
    /// Every event since a time ago (e.g. 1h).
    Export {
        /// How far back.
        #[arg(long, default_value = "1h")]
        since: String,
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
        },
        AuditCmd::Export { since } => v1::AuditTailRequest {
            follow: false,
            since_unix_ms: system_now_ms()
                - i64::from(parse_secs(&since).map_err(Fail::usage)?) * 1000,
            limit: 0,
        },
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
