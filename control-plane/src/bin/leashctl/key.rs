//! `leashctl key`: the master key (`rotate-master`), and the JWT signing keys and CAs
//! (`rotate jwt|ca`, `list`).

use clap::{Subcommand, ValueEnum};
use leash_proto::cli::{print_json, print_table, time, Fail};
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{Out, Output};

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    /// Make a new master key and re-wrap every encrypted record under it, with no
    /// downtime. The old key no longer opens the data afterwards.
    RotateMaster,
    /// Make a new JWT signing key or CA: published at once (JWKS, CA bundle), signing
    /// after `[keys] publish_ahead`; the old one stays published until everything it
    /// signed has expired. Refused while a new key of that kind waits to become active.
    Rotate {
        /// Which key: `jwt` or `ca`.
        #[arg(value_enum)]
        kind: Kind,
        #[command(flatten)]
        out: Out,
    },
    /// List the JWT signing keys and CAs, with their states and dates.
    List {
        #[command(flatten)]
        out: Out,
    },
}

/// A key kind.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    /// The JWT signing key.
    Jwt,
    /// The X.509 CA.
    Ca,
}

fn key_json(k: &v1::KeyInfo) -> serde_json::Value {
    let at = |t: i64| (t > 0).then(|| time(t));
    let unix = |t: i64| (t > 0).then_some(t);
    serde_json::json!({
        "kind": k.kind, "id": k.id, "state": k.state,
        "created": time(k.created_unix), "created_unix": k.created_unix,
        "activates_at": at(k.activates_at_unix), "activates_at_unix": unix(k.activates_at_unix),
        "retiring_since": at(k.retiring_since_unix), "retiring_since_unix": unix(k.retiring_since_unix),
        "retires_at": at(k.retires_at_unix), "retires_at_unix": unix(k.retires_at_unix),
    })
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
        KeyCmd::Rotate { kind, out } => {
            let kind = match kind {
                Kind::Jwt => "jwt",
                Kind::Ca => "ca",
            };
            let k = c
                .rotate_key(v1::RotateKeyRequest { kind: kind.into() })
                .await?
                .into_inner();
            if out.output == Output::Json {
                print_json(&key_json(&k));
            } else {
                outln!(
                    "{} key {} published; it signs from {}",
                    k.kind,
                    k.id,
                    time(k.activates_at_unix)
                );
            }
            Ok(())
        }
        KeyCmd::List { out } => {
            let r = c.list_keys(v1::Empty {}).await?.into_inner();
            if out.output == Output::Json {
                print_json(&r.keys.iter().map(key_json).collect::<Vec<_>>());
            } else {
                let rows: Vec<Vec<String>> = r
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.kind.clone(),
                            k.id.clone(),
                            k.state.clone(),
                            time(k.created_unix),
                            time(k.activates_at_unix),
                            time(k.retires_at_unix),
                        ]
                    })
                    .collect();
                print_table(
                    &["KIND", "ID", "STATE", "CREATED", "ACTIVATES", "RETIRES"],
                    &rows,
                );
            }
            Ok(())
        }
    }
}
