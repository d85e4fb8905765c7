//! `leashctl credential`: defining what can be issued.

use std::collections::HashMap;

use clap::Subcommand;
use leash_proto::cli::{parse_secs, Fail};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{self, Out, Output};

#[derive(Subcommand)]
pub(crate) enum CredentialCmd {
    /// Define a credential.
    Add {
        /// Name, e.g. deploy-api.
        name: String,
        /// Kind: jwt.
        #[arg(long, default_value = "jwt")]
        kind: String,
        /// Allowed audience (repeatable); the first is the default.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Default TTL.
        #[arg(long, default_value = "5m")]
        ttl: String,
        /// Largest TTL a caller may ask for (default: the larger of 1h and --ttl).
        #[arg(long)]
        max_ttl: Option<String>,
        /// Action used when a request names none.
        #[arg(long, default_value = "read")]
        default_action: String,
        /// Scopes for an action: ACTION=SCOPE (repeatable; several scopes per action add up).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[command(flatten)]
        out: Out,
    },
    /// List credentials.
    List(Out),
}

/// Run one `leashctl credential` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: CredentialCmd) -> Result<(), Fail> {
    match cmd {
        CredentialCmd::Add {
            name,
            kind,
            audiences,
            ttl,
            max_ttl,
            default_action,
            scopes,
            out,
        } => {
            let mut sc: HashMap<String, String> = HashMap::new();
            for s in &scopes {
                let (a, v) = s.split_once('=').ok_or_else(|| {
                    Fail::usage(format!("--scope {s:?} must look like ACTION=SCOPE"))
                })?;
                let e = sc.entry(a.to_string()).or_default();
                if !e.is_empty() {
                    e.push(' ');
                }
                e.push_str(v);
            }
            let r = c
                .add_credential(v1::Credential {
                    name,
                    kind,
                    audiences,
                    default_ttl_seconds: parse_secs(&ttl).map_err(Fail::usage)?,
                    max_ttl_seconds: match max_ttl {
                        Some(m) => parse_secs(&m).map_err(Fail::usage)?,
                        None => 0,
                    },
                    default_action,
                    scopes: sc,
                    created_at_unix: 0,
                })
                .await?
                .into_inner();
            eprintln!("credential {} added", r.name);
            if out.output == Output::Json {
                output::print_credential(&r, out.output);
            }
        }
        CredentialCmd::List(o) => {
            let r = c.list_credentials(v1::Empty {}).await?.into_inner();
            output::credentials(&r, o.output);
        }
    }
    Ok(())
}
