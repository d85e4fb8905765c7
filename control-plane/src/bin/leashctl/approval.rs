//! `leashctl approval`: requests waiting for a human, approving and denying them.

use clap::Subcommand;
use leash_proto::cli::{parse_secs, time, Fail};
use leash_proto::names::escape as esc;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum ApprovalCmd {
    /// Pending requests (--all: decided and expired ones too).
    List {
        /// Include decided and expired requests.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Approve a request for a bounded time and number of uses.
    Approve {
        /// Approval id.
        id: String,
        /// How long the approval may be used (capped by the config's max_approval).
        #[arg(long = "for", default_value = "30m")]
        for_: String,
        /// How many issuances it covers.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Deny a request; the requester sees the reason.
    Deny {
        /// Approval id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Run one `leashctl approval` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: ApprovalCmd) -> Result<(), Fail> {
    match cmd {
        ApprovalCmd::List { all, out } => {
            let r = c
                .list_approvals(v1::ListApprovalsRequest { all })
                .await?
                .into_inner();
            output::approvals(&r, out.output);
        }
        ApprovalCmd::Approve { id, for_, uses } => {
            let a = c
                .approve(v1::ApproveRequest {
                    id,
                    for_seconds: parse_secs(&for_).map_err(Fail::usage)?,
                    uses,
                })
                .await?
                .into_inner();
            eprintln!(
                "approved {} ({} {} for {} on {}) until {}, {} use(s)",
                esc(&a.id),
                esc(&a.action),
                esc(&a.credential),
                esc(&a.workload),
                esc(&a.host),
                time(a.valid_until_unix),
                a.uses_left
            );
        }
        ApprovalCmd::Deny { id, reason } => {
            let a = c
                .deny_approval(v1::DenyApprovalRequest { id, reason })
                .await?
                .into_inner();
            eprintln!("denied {}", a.id);
        }
    }
    Ok(())
}
