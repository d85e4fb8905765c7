//! `leashctl host`: enrolled machines, and evicting one.

use clap::Subcommand;
use leash_proto::cli::Fail;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum HostCmd {
    /// List hosts with their last contact.
    List(Out),
    /// Evict a host: it wipes everything and is refused from now on.
    Evict {
        /// Host name.
        name: String,
    },
}

/// Run one `leashctl host` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: HostCmd) -> Result<(), Fail> {
    match cmd {
        HostCmd::List(o) => {
            let r = c.list_hosts(v1::Empty {}).await?.into_inner();
            output::hosts(&r, o.output);
        }
        HostCmd::Evict { name } => {
            c.evict_host(v1::NameRequest { name: name.clone() }).await?;
            eprintln!("host {name} evicted; it wipes everything and is refused from now on");
        }
    }
    Ok(())
}
