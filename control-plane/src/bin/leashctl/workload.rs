//! `leashctl workload`: registering and managing non-human identities.

use clap::Subcommand;
use leash_proto::cli::{parse_secs, Fail};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_proto::workload_kind::WorkloadKind;
use tonic::transport::Channel;

use crate::input::kv;
use crate::output::{self, Out, Output};

#[derive(Subcommand)]
pub(crate) enum WorkloadCmd {
    /// Register a workload.
    Add {
        /// Path-like name, e.g. ci/deploy-web.
        name: String,
        /// Accountable team or person.
        #[arg(long)]
        owner: Option<String>,
        /// service, job, agent, shared-agent or sandbox.
        #[arg(long, default_value = WorkloadKind::Service.as_str())]
        kind: String,
        /// unix:uid:N, unix:user:U, unix:gid:N, unix:group:G, unix:path:P, unix:sha256:H (repeatable).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// Host-label selector k=v (repeatable): which hosts it is sent to.
        #[arg(long = "hosts")]
        hosts: Vec<String>,
        /// Credential it may get (repeatable).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// When it stops getting credentials (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
        /// How long its X.509-SVIDs live, e.g. 30m (default: the x509 credential's
        /// --ttl; never above its --max-ttl).
        #[arg(long)]
        x509_svid_ttl: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// List workloads.
    List(Out),
    /// Show one workload.
    Show {
        /// Name.
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Remove a workload (revokes its leases).
    Remove {
        /// Name.
        name: String,
    },
    /// Stop issuing to a workload and revoke its leases.
    Disable {
        /// Name.
        name: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue to a workload again.
    Enable {
        /// Name.
        name: String,
    },
    /// Give a workload a new owner.
    Transfer {
        /// Name.
        name: String,
        /// The new owner.
        #[arg(long)]
        to: String,
    },
}

/// Run one `leashctl workload` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: WorkloadCmd) -> Result<(), Fail> {
    match cmd {
        WorkloadCmd::Add {
            name,
            owner,
            kind,
            selectors,
            hosts,
            allow,
            expires_at,
            x509_svid_ttl,
            out,
        } => {
            let x509_svid_ttl_seconds = match x509_svid_ttl {
                None => 0,
                Some(t) => {
                    parse_secs(&t).map_err(|e| Fail::usage(format!("--x509-svid-ttl: {e}")))?
                }
            };
            let owner = owner.ok_or_else(|| {
                Fail::usage("every workload needs an owner: add --owner TEAM-OR-PERSON")
            })?;
            let expires_at_unix = match expires_at {
                None => 0,
                Some(t) => humantime::parse_rfc3339_weak(&t)
                    .map_err(|e| {
                        Fail::usage(format!(
                            "--expires-at {t:?}: {e}; write e.g. 2026-12-31T00:00:00Z"
                        ))
                    })?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            };
            let w = c
                .add_workload(v1::AddWorkloadRequest {
                    workload: Some(v1::Workload {
                        name,
                        owner,
                        kind,
                        selectors,
                        hosts: kv(&hosts, "--hosts")?,
                        allow,
                        expires_at_unix,
                        x509_svid_ttl_seconds,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            eprintln!("workload {} added ({})", w.name, w.spiffe_id);
            if out.output == Output::Json {
                output::print_workload(&w, out.output);
            }
        }
        WorkloadCmd::List(o) => {
            let r = c.list_workloads(v1::Empty {}).await?.into_inner();
            output::workloads(&r, o.output);
        }
        WorkloadCmd::Show { name, out } => {
            let w = c.get_workload(v1::NameRequest { name }).await?.into_inner();
            output::print_workload(&w, out.output);
        }
        WorkloadCmd::Remove { name } => {
            c.remove_workload(v1::NameRequest { name: name.clone() })
                .await?;
            eprintln!("workload {name} removed; its leases were revoked");
        }
        WorkloadCmd::Disable { name, reason } => {
            c.set_workload_disabled(v1::SetDisabledRequest {
                name: name.clone(),
                disabled: true,
                reason: reason.unwrap_or_default(),
            })
            .await?;
            eprintln!("workload {name} disabled; its leases were revoked");
        }
        WorkloadCmd::Enable { name } => {
            c.set_workload_disabled(v1::SetDisabledRequest {
                name: name.clone(),
                disabled: false,
                reason: String::new(),
            })
            .await?;
            eprintln!("workload {name} enabled");
        }
        WorkloadCmd::Transfer { name, to } => {
            let w = c
                .transfer_workload(v1::TransferRequest { name, to })
                .await?
                .into_inner();
            eprintln!("workload {} is now owned by {}", w.name, w.owner);
        }
    }
    Ok(())
}
