//! `leashctl key rotate-master`: replace the control plane's master key.

use clap::Subcommand;
use leash_proto::cli::Fail;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    /// Make a new master key and re-wrap every encrypted record under it, with no
    /// downtime. The old key no longer opens the data afterwards.
    RotateMaster,
}

pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: KeyCmd) -> Result<(), Fail> {
    match cmd {
        KeyCmd::RotateMaster => {
            let r = c.rotate_master_key(v1::Empty {}).await?.into_inner();
            println!(
                "master key rotated: {} -> {} ({} sealed records re-wrapped)",
                r.old_key_id, r.new_key_id, r.records
            );
            Ok(())
        }
    }
}
