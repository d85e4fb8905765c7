//! `leashctl admin-cert issue|revoke|list`: certificates for remote administration.
//! `issue` prints a one-time code for `leashctl login` (shown once; the control plane
//! keeps only its hash).

use clap::Subcommand;
use leash_proto::cli::{parse_secs, print_json, print_table, time, Fail};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::output::{Out, Output};

#[derive(Subcommand)]
pub(crate) enum AdminCertCmd {
    /// Issue a one-time login code for an admin; prints only the code on stdout.
    Issue {
        /// The admin's name (recorded as the actor of what they do).
        #[arg(long)]
        name: String,
        /// viewer, approver, operator or admin.
        #[arg(long)]
        role: String,
        /// Lifetime of the certificate the code is redeemed for (5m to 30d).
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// Revoke an admin's certificate: refused from its next call.
    Revoke {
        /// The admin's name.
        name: String,
    },
    /// List admin certificates (never their codes).
    List(Out),
}

fn json(c: &v1::AdminCertInfo) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "role": c.role, "state": c.state, "ttl_seconds": c.ttl_seconds,
        "not_after": (c.not_after_unix > 0).then(|| time(c.not_after_unix)),
        "serial": (!c.serial.is_empty()).then_some(&c.serial),
        "issued_by": c.issued_by, "issued_at": time(c.issued_at_unix),
        "code_expires_at": (c.code_expires_at_unix > 0).then(|| time(c.code_expires_at_unix)),
    })
}

/// Run one `leashctl admin-cert` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: AdminCertCmd) -> Result<(), Fail> {
    match cmd {
        AdminCertCmd::Issue { name, role, ttl } => {
            let r = c
                .issue_admin_cert(v1::IssueAdminCertRequest {
                    name,
                    role,
                    ttl_seconds: parse_secs(&ttl).map_err(Fail::usage)?,
                })
                .await?
                .into_inner();
            if let Some(i) = &r.info {
                eprintln!(
                    "login code for {} (role {}); redeem it before {} with `leashctl login --server https://HOST:PORT --code CODE`",
                    i.name,
                    i.role,
                    time(i.code_expires_at_unix)
                );
            }
            outln!("{}", r.code);
        }
        AdminCertCmd::Revoke { name } => {
            let r = c
                .revoke_admin_cert(v1::NameRequest { name })
                .await?
                .into_inner();
            eprintln!("admin certificate of {} revoked", r.name);
        }
        AdminCertCmd::List(o) => {
            let r = c.list_admin_certs(v1::Empty {}).await?.into_inner();
            if o.output == Output::Json {
                print_json(&r.certs.iter().map(json).collect::<Vec<_>>());
            } else {
                let rows: Vec<Vec<String>> = r
                    .certs
                    .iter()
                    .map(|c| {
                        vec![
                            esc(&c.name).to_string(),
                            c.role.clone(),
                            c.state.clone(),
                            if c.not_after_unix > 0 {
                                time(c.not_after_unix)
                            } else {
                                "-".into()
                            },
                            esc(&c.issued_by).to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "STATE", "EXPIRES", "ISSUED BY"], &rows);
            }
        }
    }
    Ok(())
}
