//! `leashctl owner`: who is accountable for workloads, and offboarding.

use clap::Subcommand;
use leash_proto::cli::{parse_secs, Fail};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::lease::wait_for;
use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum OwnerCmd {
    /// Owners with their workloads and active leases.
    List(Out),
    /// Disable every workload of an owner and revoke their leases.
    Offboard {
        /// Owner.
        owner: String,
        /// Wait until every host has wiped.
        #[arg(long)]
        wait: bool,
        /// How long to wait.
        #[arg(long, default_value = "30s", requires = "wait")]
        timeout: String,
    },
}

/// Run one `leashctl owner` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: OwnerCmd) -> Result<(), Fail> {
    match cmd {
        OwnerCmd::List(o) => {
            let r = c.list_owners(v1::Empty {}).await?.into_inner();
            output::owners(&r, o.output);
        }
        OwnerCmd::Offboard {
            owner,
            wait,
            timeout,
        } => {
            let timeout = parse_secs(&timeout).map_err(Fail::usage)?;
            let r = c
                .offboard_owner(v1::NameRequest {
                    name: owner.clone(),
                })
                .await?
                .into_inner();
            eprintln!(
                "offboarded {owner}: {} workload(s) disabled, {} lease(s) revoked at sequence {}",
                r.workloads.len(),
                r.leases_revoked,
                r.seq
            );
            if wait {
                wait_for(c, r.seq, timeout).await?;
            }
            outln!("workloads that need a new owner (leashctl workload transfer W --to OWNER, then enable):");
            for w in &r.workloads {
                outln!("  {}", esc(w));
            }
        }
    }
    Ok(())
}
