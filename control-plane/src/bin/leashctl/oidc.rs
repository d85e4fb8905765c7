//! `leashctl introspection-client` (who may call the HTTPS `/introspect` endpoint) and
//! `leashctl oidc export` (the discovery document and JWKS as static files).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use leash_proto::cli::{print_json, print_table, time, Fail};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{Out, Output};

#[derive(Subcommand)]
pub(crate) enum IntrospectionClientCmd {
    /// Create a client; prints its id and a secret, shown only this once.
    Create {
        /// The client id.
        name: String,
        /// What the client is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        out: Out,
    },
    /// List clients (never their secrets).
    List(Out),
    /// Remove a client; its secret stops working at once.
    Remove {
        /// The client id.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum OidcCmd {
    /// Write DIR/.well-known/openid-configuration and DIR/keys, the documents the HTTPS
    /// listener serves, for hosting the issuer on a static web host.
    Export {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
}

fn client_json(c: &v1::IntrospectionClientInfo) -> serde_json::Value {
    serde_json::json!({
        "client_id": c.client_id, "description": c.description,
        "created_at": time(c.created_at_unix), "created_by": c.created_by,
    })
}

/// Run one `leashctl introspection-client` command.
pub(crate) async fn clients(
    c: &mut AdminClient<Channel>,
    cmd: IntrospectionClientCmd,
) -> Result<(), Fail> {
    match cmd {
        IntrospectionClientCmd::Create {
            name,
            description,
            out,
        } => {
            let r = c
                .create_introspection_client(v1::CreateIntrospectionClientRequest {
                    name,
                    description,
                })
                .await?
                .into_inner();
            let info = r.client.unwrap_or_default();
            eprintln!(
                "introspection client {} created; store the secret now: it is shown only once",
                esc(&info.client_id)
            );
            if out.output == Output::Json {
                let mut v = client_json(&info);
                v["client_secret"] = r.client_secret.into();
                print_json(&v);
            } else {
                outln!("client_id: {}", info.client_id);
                outln!("client_secret: {}", r.client_secret);
            }
        }
        IntrospectionClientCmd::List(o) => {
            let r = c
                .list_introspection_clients(v1::Empty {})
                .await?
                .into_inner();
            if o.output == Output::Json {
                let v: Vec<_> = r.clients.iter().map(client_json).collect();
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = r
                    .clients
                    .iter()
                    .map(|c| {
                        vec![
                            c.client_id.clone(),
                            if c.description.is_empty() {
                                "-".into()
                            } else {
                                c.description.clone()
                            },
                            time(c.created_at_unix),
                            c.created_by.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["CLIENT_ID", "DESCRIPTION", "CREATED_AT", "CREATED_BY"],
                    &rows,
                );
            }
        }
        IntrospectionClientCmd::Remove { name } => {
            c.remove_introspection_client(v1::NameRequest { name: name.clone() })
                .await?;
            eprintln!("introspection client {} removed", esc(&name));
        }
    }
    Ok(())
}

/// Write `bytes` to `path` whole: a temporary file renamed into place.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Fail> {
    let fail = |e: std::io::Error| Fail(format!("cannot write {}: {e}", path.display()), 1);
    let tmp = path.with_extension("tmp-leashctl");
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Run one `leashctl oidc` command.
pub(crate) async fn oidc(c: &mut AdminClient<Channel>, cmd: OidcCmd) -> Result<(), Fail> {
    match cmd {
        OidcCmd::Export { dir, force } => {
            let discovery = dir.join(".well-known").join("openid-configuration");
            let keys = dir.join("keys");
            if !force {
                if let Some(p) = [&discovery, &keys].into_iter().find(|p| p.exists()) {
                    return Err(Fail(
                        format!(
                            "{} exists; pass --force to replace it (and its companion file)",
                            p.display()
                        ),
                        1,
                    ));
                }
            }
            let r = c.oidc_documents(v1::Empty {}).await?.into_inner();
            let well_known = dir.join(".well-known");
            std::fs::create_dir_all(&well_known)
                .map_err(|e| Fail(format!("cannot create {}: {e}", well_known.display()), 1))?;
            write_file(&discovery, &r.discovery)?;
            write_file(&keys, &r.jwks)?;
            outln!("{}", discovery.display());
            outln!("{}", keys.display());
        }
    }
    Ok(())
}
