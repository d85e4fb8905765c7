//! `leashctl policy`: checking, applying, showing, diffing and explaining Cedar policy.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use leash_proto::cli::{parse_secs, print_str, Fail};
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::lease::wait_for;
use crate::output::{self, Out};

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Validate a policy file against the schema (errors carry line:col).
    Check {
        /// Cedar policy file.
        file: PathBuf,
    },
    /// Validate and apply a policy file as a new version; active leases it no longer
    /// permits are revoked and wiped.
    Apply {
        /// Cedar policy file.
        file: PathBuf,
        /// Wait until every host has wiped what the change revoked.
        #[arg(long)]
        wait: bool,
        /// How long to wait.
        #[arg(long, default_value = "30s", requires = "wait")]
        timeout: String,
    },
    /// Print the policy in force (with the --allow links), or an older version.
    Show {
        /// A past version.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        out: Out,
    },
    /// Diff the policy in force against FILE, or against the previous version.
    Diff {
        /// Policy file to compare with.
        file: Option<PathBuf>,
    },
    /// Decide a request without issuing anything, and say which policies decided it.
    Explain {
        /// Workload.
        #[arg(long)]
        workload: String,
        /// Credential.
        #[arg(long)]
        credential: String,
        /// Action class (default: the credential's).
        #[arg(long)]
        action: Option<String>,
        /// Host (its labels are what policy sees).
        #[arg(long)]
        host: Option<String>,
        /// Requested TTL.
        #[arg(long)]
        ttl: Option<String>,
        /// Audience.
        #[arg(long)]
        audience: Option<String>,
        /// On-behalf-of principal.
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// Decide as of this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        out: Out,
    },
}

fn read_file(path: &Path) -> Result<String, Fail> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))
}

/// Run one `leashctl policy` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: PolicyCmd) -> Result<(), Fail> {
    match cmd {
        PolicyCmd::Check { file } => {
            let text = read_file(&file)?;
            let r = c.policy_check(v1::PolicyText { text }).await?.into_inner();
            if r.problems.is_empty() {
                eprintln!("{}: valid", file.display());
                return Ok(());
            }
            for p in &r.problems {
                if p.line > 0 {
                    eprintln!("{}:{}:{}: {}", file.display(), p.line, p.col, p.message);
                } else {
                    eprintln!("{}: {}", file.display(), p.message);
                }
            }
            Err(Fail(
                format!("{} problem(s) in {}", r.problems.len(), file.display()),
                1,
            ))
        }
        PolicyCmd::Apply {
            file,
            wait,
            timeout,
        } => {
            let text = read_file(&file)?;
            let r = c.policy_apply(v1::PolicyText { text }).await?.into_inner();
            eprintln!(
                "policy version {} applied; {} active lease(s) no longer permitted were revoked",
                r.version, r.revoked
            );
            outln!("{}", r.version);
            if wait && r.revocation_seq > 0 {
                let timeout = parse_secs(&timeout).map_err(Fail::usage)?;
                wait_for(c, r.revocation_seq, timeout).await?;
            }
            Ok(())
        }
        PolicyCmd::Show { version, out } => {
            let r = c
                .policy_show(v1::PolicyShowRequest {
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            output::policy(&r, out.output);
            Ok(())
        }
        PolicyCmd::Diff { file } => {
            let cur = c
                .policy_show(v1::PolicyShowRequest { version: 0 })
                .await?
                .into_inner();
            let (old, new, label) = match file {
                Some(f) => (
                    cur.text.clone(),
                    read_file(&f)?,
                    format!("version {} -> {}", cur.version, f.display()),
                ),
                None if cur.version > 1 => {
                    let prev = c
                        .policy_show(v1::PolicyShowRequest {
                            version: cur.version - 1,
                        })
                        .await?
                        .into_inner();
                    (
                        prev.text,
                        cur.text.clone(),
                        format!("version {} -> {}", cur.version - 1, cur.version),
                    )
                }
                None => (
                    String::new(),
                    cur.text.clone(),
                    format!("nothing -> version {}", cur.version),
                ),
            };
            outln!("--- {label}");
            print_str(&leash_control_plane::policy::diff(&old, &new));
            Ok(())
        }
        PolicyCmd::Explain {
            workload,
            credential,
            action,
            host,
            ttl,
            audience,
            on_behalf_of,
            at,
            out,
        } => {
            let at_unix = match at {
                None => 0,
                Some(t) => humantime::parse_rfc3339_weak(&t)
                    .map_err(|e| Fail::usage(format!("--at {t:?}: {e}")))?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            };
            let r = c
                .policy_explain(v1::PolicyExplainRequest {
                    workload,
                    credential,
                    action: action.unwrap_or_default(),
                    host: host.unwrap_or_default(),
                    ttl_seconds: match ttl {
                        Some(t) => parse_secs(&t).map_err(Fail::usage)?,
                        None => 0,
                    },
                    audience: audience.unwrap_or_default(),
                    on_behalf_of: on_behalf_of.unwrap_or_default(),
                    at_unix,
                    task: String::new(),
                })
                .await?
                .into_inner();
            output::explain(&r, out.output);
            match (
                r.decision.as_str(),
                r.approval_required && r.refusals.is_empty(),
            ) {
                ("allow", _) => Ok(()),
                (_, true) => Err(Fail("the request would wait for an approval".into(), 3)),
                _ => Err(Fail("the request would be denied".into(), 2)),
            }
        }
    }
}
