//! `leashctl join-token`: the one-time tokens that let a host enroll.

use clap::Subcommand;
use leash_proto::cli::{parse_secs, time, Fail};
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::input::kv;
use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum JoinTokenCmd {
    /// Create a token; prints only the token on stdout.
    Create {
        /// How long it may be used.
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// Bind the host name.
        #[arg(long)]
        name: Option<String>,
        /// Bind a label (repeatable), k=v.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List tokens (never their secrets).
    List(Out),
    /// Revoke an unused token.
    Revoke {
        /// Token id (from `list`).
        id: String,
    },
}

/// Run one `leashctl join-token` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: JoinTokenCmd) -> Result<(), Fail> {
    match cmd {
        JoinTokenCmd::Create { ttl, name, labels } => {
            let r = c
                .create_join_token(v1::CreateJoinTokenRequest {
                    ttl_seconds: parse_secs(&ttl).map_err(Fail::usage)?,
                    name: name.unwrap_or_default(),
                    labels: kv(&labels, "--label")?,
                })
                .await?
                .into_inner();
            eprintln!("join token {} expires at {}", r.id, time(r.expires_at_unix));
            outln!("{}", r.token);
        }
        JoinTokenCmd::List(o) => {
            let r = c.list_join_tokens(v1::Empty {}).await?.into_inner();
            output::join_tokens(&r, o.output);
        }
        JoinTokenCmd::Revoke { id } => {
            c.revoke_join_token(v1::NameRequest { name: id.clone() })
                .await?;
            eprintln!("join token {id} revoked");
        }
    }
    Ok(())
}
