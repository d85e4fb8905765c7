//! `leashctl`: the fleet admin's CLI, speaking the admin API on the control plane's
//! Unix socket. Errors map to exit codes through the reason each status carries.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use leash_proto::cli::{parse_secs, print_str, print_table, status_exit, time};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::socket_trust::{self, TrustError};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "leashctl", version, about = "Administer a Leash control plane")]
struct Cli {
    /// Admin socket of the control plane.
    #[arg(long, env = "LEASH_ADMIN_SOCKET", global = true)]
    admin_socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct Out {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand)]
enum Cmd {
    /// One-time tokens that let a host enroll.
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
    /// Non-human identities.
    #[command(subcommand)]
    Workload(WorkloadCmd),
    /// What can be issued.
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Enrolled machines.
    #[command(subcommand)]
    Host(HostCmd),
    /// Issued credentials.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Cedar policy: check, apply, show, diff, explain.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Take credentials back from every host.
    Revoke(RevokeArgs),
    /// Requests waiting for a human.
    #[command(subcommand)]
    Approval(ApprovalCmd),
    /// Who is accountable; offboarding.
    #[command(subcommand)]
    Owner(OwnerCmd),
    /// Reports.
    #[command(subcommand)]
    Report(ReportCmd),
    /// Ask whether a token is still active (RFC 7662 JSON).
    Introspect {
        /// The token, or `-` to read it from stdin.
        token: Option<String>,
    },
    /// Print the JSON Web Key Set verifiers use.
    Jwks,
    /// The audit trail, as JSON lines.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum JoinTokenCmd {
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

#[derive(Subcommand)]
enum WorkloadCmd {
    /// Register a workload.
    Add {
        /// Path-like name, e.g. ci/deploy-web.
        name: String,
        /// Accountable team or person.
        #[arg(long)]
        owner: Option<String>,
        /// service, job, agent, shared-agent or sandbox.
        #[arg(long, default_value = "service")]
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

#[derive(Subcommand)]
enum CredentialCmd {
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

#[derive(Subcommand)]
enum ApprovalCmd {
    /// Pending requests (--all: decided and expired ones too).
    List {
        /// Include decided and expired requests.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Approve a request for a bounded time and number of uses.
    Approve {
        /// Approval id.
        id: String,
        /// How long the approval may be used (capped by the config's max_approval).
        #[arg(long = "for", default_value = "30m")]
        for_: String,
        /// How many issuances it covers.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Deny a request; the requester sees the reason.
    Deny {
        /// Approval id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum OwnerCmd {
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

#[derive(Subcommand)]
enum ReportCmd {
    /// Workloads with no issuance for a while, and workloads whose owner was offboarded.
    Stale {
        /// e.g. 30d.
        #[arg(long, default_value = "30d")]
        unused_for: String,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
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

#[derive(Subcommand)]
enum HostCmd {
    /// List hosts with their last contact.
    List(Out),
    /// Evict a host: it wipes everything and is refused from now on.
    Evict {
        /// Host name.
        name: String,
    },
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// List leases.
    List {
        /// Only this workload's.
        #[arg(long)]
        workload: Option<String>,
        /// Only active ones.
        #[arg(long)]
        active: bool,
        #[command(flatten)]
        out: Out,
    },
    /// A lease and its timeline.
    Show {
        /// Lease id.
        id: String,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["lease", "workload", "credential", "owner", "host", "all"])))]
struct RevokeArgs {
    /// One lease.
    #[arg(long)]
    lease: Option<String>,
    /// Every lease of a workload.
    #[arg(long)]
    workload: Option<String>,
    /// Every lease of a credential.
    #[arg(long)]
    credential: Option<String>,
    /// Every lease of an owner's workloads.
    #[arg(long)]
    owner: Option<String>,
    /// Every lease on a host.
    #[arg(long)]
    host: Option<String>,
    /// Everything.
    #[arg(long)]
    all: bool,
    /// Why (recorded).
    #[arg(long)]
    reason: Option<String>,
    /// Wait until every host has wiped.
    #[arg(long)]
    wait: bool,
    /// How long to wait.
    #[arg(long, default_value = "30s", requires = "wait")]
    timeout: String,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The newest events; --follow keeps streaming.
    Tail {
        /// Keep streaming new events.
        #[arg(long)]
        follow: bool,
        /// How many past events.
        #[arg(long, default_value_t = 50)]
        lines: u32,
    },
    /// Every event since a time ago (e.g. 1h).
    Export {
        /// How far back.
        #[arg(long, default_value = "1h")]
        since: String,
    },
}

/// A failure with its exit code.
struct Fail(String, i32);

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        let (m, c) = status_exit(&s);
        Fail(m, c)
    }
}

fn usage(m: impl Into<String>) -> Fail {
    Fail(m.into(), 1)
}

/// `--admin-socket` / `$LEASH_ADMIN_SOCKET` if given, else the system control plane's
/// socket, else one under `$XDG_RUNTIME_DIR` (never a guessable path in `/tmp`).
fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        socket_trust::default_client_socket(
            Path::new(socket_trust::SYSTEM_ADMIN_SOCKET),
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        )
    })
}

/// Refuse a socket someone other than root or the caller could have set up, before
/// anything (a token to introspect, a request for a join token) is sent to it.
fn trusted_socket(socket: &Path) -> Result<(), Fail> {
    socket_trust::check_socket(socket, socket_trust::euid()).map_err(|e| match e {
        TrustError::Missing { .. } => Fail(format!(
            "no control plane answers at {}: {e}\nIs leash-control-plane running? Point leashctl at its admin socket with --admin-socket or $LEASH_ADMIN_SOCKET.",
            socket.display()
        ), 5),
        e => Fail(format!(
            "refusing to use the admin socket {}: {e}.\nUse the socket of the control plane root runs ({}), or one whose directories only root or you can change, with --admin-socket or $LEASH_ADMIN_SOCKET.",
            socket.display(),
            socket_trust::SYSTEM_ADMIN_SOCKET
        ), 5),
    })
}

fn kv(items: &[String], what: &str) -> Result<HashMap<String, String>, Fail> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| usage(format!("{what} {s:?} must look like key=value")))
        })
        .collect()
}

fn json_out<T: serde::Serialize>(v: &T) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn workload_json(w: &v1::Workload) -> serde_json::Value {
    serde_json::json!({
        "name": w.name, "spiffe_id": w.spiffe_id, "owner": w.owner, "kind": w.kind,
        "selectors": w.selectors, "hosts": w.hosts, "allow": w.allow,
        "expires_at": (w.expires_at_unix > 0).then(|| time(w.expires_at_unix)),
        "disabled": w.disabled, "created_at": time(w.created_at_unix),
    })
}

fn lease_json(l: &v1::Lease) -> serde_json::Value {
    serde_json::json!({
        "id": l.id, "workload": l.workload, "credential": l.credential, "action": l.action,
        "audience": l.audience, "host": l.host,
        "task": (!l.task.is_empty()).then_some(&l.task),
        "on_behalf_of": (!l.on_behalf_of.is_empty()).then_some(&l.on_behalf_of),
        "issued_at": time(l.issued_at_unix), "expires_at": time(l.expires_at_unix),
        "seq": l.seq, "state": l.state,
        "reason": (!l.reason.is_empty()).then_some(&l.reason),
        "fingerprint": l.fingerprint, "policy_version": l.policy_version,
    })
}

fn print_workload(w: &v1::Workload, out: Output) {
    if out == Output::Json {
        return json_out(&workload_json(w));
    }
    // Stored text is shown escaped: it cannot forge a line or reach the terminal as a
    // control sequence.
    outln!("name:       {}", esc(&w.name));
    outln!("spiffe id:  {}", esc(&w.spiffe_id));
    outln!("owner:      {}", esc(&w.owner));
    outln!("kind:       {}", esc(&w.kind));
    outln!("selectors:  {}", esc(&w.selectors.join(" ")));
    let hosts: Vec<String> = w
        .hosts
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect();
    outln!(
        "hosts:      {}",
        if hosts.is_empty() {
            "(all)".into()
        } else {
            hosts.join(",")
        }
    );
    outln!(
        "allow:      {}",
        if w.allow.is_empty() {
            "-".into()
        } else {
            esc(&w.allow.join(" ")).into_owned()
        }
    );
    outln!("expires at: {}", time(w.expires_at_unix));
    outln!(
        "state:      {}",
        if w.disabled { "disabled" } else { "enabled" }
    );
}

fn print_credential(c: &v1::Credential, out: Output) {
    if out == Output::Json {
        return json_out(&credential_json(c));
    }
    print_table(
        &[
            "NAME",
            "KIND",
            "AUDIENCES",
            "TTL",
            "MAX_TTL",
            "DEFAULT_ACTION",
            "SCOPES",
        ],
        &[credential_row(c)],
    );
}

fn credential_json(c: &v1::Credential) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "kind": c.kind, "audiences": c.audiences,
        "default_ttl_seconds": c.default_ttl_seconds, "max_ttl_seconds": c.max_ttl_seconds,
        "default_action": c.default_action, "scopes": c.scopes,
    })
}

fn credential_row(c: &v1::Credential) -> Vec<String> {
    let mut scopes: Vec<String> = c.scopes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    scopes.sort();
    vec![
        c.name.clone(),
        c.kind.clone(),
        c.audiences.join(","),
        format!("{}s", c.default_ttl_seconds),
        format!("{}s", c.max_ttl_seconds),
        c.default_action.clone(),
        if scopes.is_empty() {
            "-".into()
        } else {
            scopes.join(" ")
        },
    ]
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let socket = socket_path(cli.admin_socket);
    trusted_socket(&socket)?;
    let channel: Channel = leash_proto::uds::connect(&socket).await.map_err(|e| {
        Fail(
            format!(
                "{e}\nIs leash-control-plane running? Point leashctl at its admin socket with --admin-socket or $LEASH_ADMIN_SOCKET."
            ),
            5,
        )
    })?;
    let mut c = AdminClient::new(channel)
        .max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
    match cli.cmd {
        Cmd::JoinToken(JoinTokenCmd::Create { ttl, name, labels }) => {
            let r = c
                .create_join_token(v1::CreateJoinTokenRequest {
                    ttl_seconds: parse_secs(&ttl).map_err(usage)?,
                    name: name.unwrap_or_default(),
                    labels: kv(&labels, "--label")?,
                })
                .await?
                .into_inner();
            eprintln!("join token {} expires at {}", r.id, time(r.expires_at_unix));
            outln!("{}", r.token);
        }
        Cmd::JoinToken(JoinTokenCmd::List(o)) => {
            let r = c.list_join_tokens(v1::Empty {}).await?.into_inner();
            if o.output == Output::Json {
                let v: Vec<_> = r
                    .tokens
                    .iter()
                    .map(|t| serde_json::json!({
                        "id": t.id, "name": (!t.name.is_empty()).then_some(&t.name), "labels": t.labels,
                        "created_at": time(t.created_at_unix), "expires_at": time(t.expires_at_unix),
                        "state": t.state, "used_by": (!t.used_by.is_empty()).then_some(&t.used_by),
                    }))
                    .collect();
                json_out(&v);
            } else {
                let rows: Vec<Vec<String>> = r
                    .tokens
                    .iter()
                    .map(|t| {
                        let mut labels: Vec<String> =
                            t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        vec![
                            t.id.clone(),
                            if t.name.is_empty() {
                                "-".into()
                            } else {
                                t.name.clone()
                            },
                            if labels.is_empty() {
                                "-".into()
                            } else {
                                labels.join(",")
                            },
                            t.state.clone(),
                            time(t.expires_at_unix),
                            if t.used_by.is_empty() {
                                "-".into()
                            } else {
                                t.used_by.clone()
                            },
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "NAME", "LABELS", "STATE", "EXPIRES_AT", "USED_BY"],
                    &rows,
                );
            }
        }
        Cmd::JoinToken(JoinTokenCmd::Revoke { id }) => {
            c.revoke_join_token(v1::NameRequest { name: id.clone() })
                .await?;
            eprintln!("join token {id} revoked");
        }
        Cmd::Workload(WorkloadCmd::Add {
            name,
            owner,
            kind,
            selectors,
            hosts,
            allow,
            expires_at,
            out,
        }) => {
            let owner = owner.ok_or_else(|| {
                usage("every workload needs an owner: add --owner TEAM-OR-PERSON")
            })?;
            let expires_at_unix = match expires_at {
                None => 0,
                Some(t) => humantime::parse_rfc3339_weak(&t)
                    .map_err(|e| {
                        usage(format!(
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
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            eprintln!("workload {} added ({})", w.name, w.spiffe_id);
            if out.output == Output::Json {
                print_workload(&w, out.output);
            }
        }
        Cmd::Workload(WorkloadCmd::List(o)) => {
            let r = c.list_workloads(v1::Empty {}).await?.into_inner();
            if o.output == Output::Json {
                json_out(&r.workloads.iter().map(workload_json).collect::<Vec<_>>());
            } else {
                let rows: Vec<Vec<String>> = r
                    .workloads
                    .iter()
                    .map(|w| {
                        vec![
                            w.name.clone(),
                            w.owner.clone(),
                            w.kind.clone(),
                            w.selectors.join(","),
                            if w.allow.is_empty() {
                                "-".into()
                            } else {
                                w.allow.join(",")
                            },
                            if w.disabled {
                                "disabled".into()
                            } else {
                                "enabled".into()
                            },
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "OWNER", "KIND", "SELECTORS", "ALLOW", "STATE"],
                    &rows,
                );
            }
        }
        Cmd::Workload(WorkloadCmd::Show { name, out }) => {
            let w = c.get_workload(v1::NameRequest { name }).await?.into_inner();
            print_workload(&w, out.output);
        }
        Cmd::Workload(WorkloadCmd::Remove { name }) => {
            c.remove_workload(v1::NameRequest { name: name.clone() })
                .await?;
            eprintln!("workload {name} removed; its leases were revoked");
        }
        Cmd::Workload(WorkloadCmd::Disable { name, reason }) => {
            c.set_workload_disabled(v1::SetDisabledRequest {
                name: name.clone(),
                disabled: true,
                reason: reason.unwrap_or_default(),
            })
            .await?;
            eprintln!("workload {name} disabled; its leases were revoked");
        }
        Cmd::Workload(WorkloadCmd::Enable { name }) => {
            c.set_workload_disabled(v1::SetDisabledRequest {
                name: name.clone(),
                disabled: false,
                reason: String::new(),
            })
            .await?;
            eprintln!("workload {name} enabled");
        }
        Cmd::Workload(WorkloadCmd::Transfer { name, to }) => {
            let w = c
                .transfer_workload(v1::TransferRequest { name, to })
                .await?
                .into_inner();
            eprintln!("workload {} is now owned by {}", w.name, w.owner);
        }
        Cmd::Credential(CredentialCmd::Add {
            name,
            kind,
            audiences,
            ttl,
            max_ttl,
            default_action,
            scopes,
            out,
        }) => {
            let mut sc: HashMap<String, String> = HashMap::new();
            for s in &scopes {
                let (a, v) = s
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--scope {s:?} must look like ACTION=SCOPE")))?;
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
                    default_ttl_seconds: parse_secs(&ttl).map_err(usage)?,
                    max_ttl_seconds: match max_ttl {
                        Some(m) => parse_secs(&m).map_err(usage)?,
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
                print_credential(&r, out.output);
            }
        }
        Cmd::Credential(CredentialCmd::List(o)) => {
            let r = c.list_credentials(v1::Empty {}).await?.into_inner();
            if o.output == Output::Json {
                json_out(
                    &r.credentials
                        .iter()
                        .map(credential_json)
                        .collect::<Vec<_>>(),
                );
            } else {
                print_table(
                    &[
                        "NAME",
                        "KIND",
                        "AUDIENCES",
                        "TTL",
                        "MAX_TTL",
                        "DEFAULT_ACTION",
                        "SCOPES",
                    ],
                    &r.credentials.iter().map(credential_row).collect::<Vec<_>>(),
                );
            }
        }
        Cmd::Host(HostCmd::List(o)) => {
            let r = c.list_hosts(v1::Empty {}).await?.into_inner();
            if o.output == Output::Json {
                let v: Vec<_> = r
                    .hosts
                    .iter()
                    .map(|h| serde_json::json!({
                        "name": h.name, "labels": h.labels, "enrolled_at": time(h.enrolled_at_unix),
                        "last_seen": time(h.last_seen_unix), "connected": h.connected,
                        "evicted": h.evicted, "cert_not_after": time(h.cert_not_after_unix),
                        "acked_seq": h.acked_seq,
                    }))
                    .collect();
                json_out(&v);
            } else {
                let rows: Vec<Vec<String>> = r
                    .hosts
                    .iter()
                    .map(|h| {
                        let mut labels: Vec<String> =
                            h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        let state = if h.evicted {
                            "evicted"
                        } else if h.connected {
                            "connected"
                        } else {
                            "disconnected"
                        };
                        vec![
                            h.name.clone(),
                            if labels.is_empty() {
                                "-".into()
                            } else {
                                labels.join(",")
                            },
                            state.into(),
                            time(h.last_seen_unix),
                            time(h.cert_not_after_unix),
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "LABELS", "STATE", "LAST_SEEN", "CERT_NOT_AFTER"],
                    &rows,
                );
            }
        }
        Cmd::Host(HostCmd::Evict { name }) => {
            c.evict_host(v1::NameRequest { name: name.clone() }).await?;
            eprintln!("host {name} evicted; it wipes everything and is refused from now on");
        }
        Cmd::Lease(LeaseCmd::List {
            workload,
            active,
            out,
        }) => {
            let r = c
                .list_leases(v1::ListLeasesRequest {
                    workload: workload.unwrap_or_default(),
                    active_only: active,
                })
                .await?
                .into_inner();
            if out.output == Output::Json {
                json_out(&r.leases.iter().map(lease_json).collect::<Vec<_>>());
            } else {
                let rows: Vec<Vec<String>> = r
                    .leases
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.clone(),
                            l.workload.clone(),
                            l.credential.clone(),
                            l.action.clone(),
                            l.host.clone(),
                            l.state.clone(),
                            time(l.expires_at_unix),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "WORKLOAD",
                        "CREDENTIAL",
                        "ACTION",
                        "HOST",
                        "STATE",
                        "EXPIRES_AT",
                    ],
                    &rows,
                );
            }
        }
        Cmd::Lease(LeaseCmd::Show { id, out }) => {
            let r = c
                .get_lease(v1::NameRequest { name: id })
                .await?
                .into_inner();
            let l = r.lease.unwrap_or_default();
            let timeline: Vec<serde_json::Value> = r
                .timeline
                .iter()
                .filter_map(|e| serde_json::from_str(&e.json).ok())
                .collect();
            if out.output == Output::Json {
                let mut v = lease_json(&l);
                v["timeline"] = serde_json::Value::Array(timeline);
                json_out(&v);
            } else {
                print_str(&lease_text(&l, &timeline));
            }
        }
        Cmd::Revoke(a) => revoke(&mut c, a).await?,
        Cmd::Policy(p) => policy(&mut c, p).await?,
        Cmd::Approval(a) => approval(&mut c, a).await?,
        Cmd::Owner(OwnerCmd::List(o)) => {
            let r = c.list_owners(v1::Empty {}).await?.into_inner();
            if o.output == Output::Json {
                let v: Vec<_> = r
                    .owners
                    .iter()
                    .map(|x| {
                        serde_json::json!({
                            "owner": x.owner, "workloads": x.workloads,
                            "active_leases": x.active_leases, "offboarded": x.offboarded,
                        })
                    })
                    .collect();
                json_out(&v);
            } else {
                let rows: Vec<Vec<String>> = r
                    .owners
                    .iter()
                    .map(|x| {
                        vec![
                            x.owner.clone(),
                            x.workloads.join(","),
                            x.active_leases.to_string(),
                            if x.offboarded {
                                "offboarded".into()
                            } else {
                                "-".into()
                            },
                        ]
                    })
                    .collect();
                print_table(&["OWNER", "WORKLOADS", "ACTIVE_LEASES", "STATE"], &rows);
            }
        }
        Cmd::Owner(OwnerCmd::Offboard {
            owner,
            wait,
            timeout,
        }) => {
            let timeout = parse_secs(&timeout).map_err(usage)?;
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
                wait_for(&mut c, r.seq, timeout).await?;
            }
            outln!("workloads that need a new owner (leashctl workload transfer W --to OWNER, then enable):");
            for w in &r.workloads {
                outln!("  {}", esc(w));
            }
        }
        Cmd::Report(ReportCmd::Stale { unused_for, out }) => {
            let r = c
                .stale_report(v1::StaleReportRequest {
                    unused_for_seconds: parse_secs(&unused_for).map_err(usage)?,
                })
                .await?
                .into_inner();
            if out.output == Output::Json {
                let v: Vec<_> = r
                    .workloads
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "name": w.name, "owner": w.owner, "why": w.why,
                            "last_issued": time(w.last_issued_unix), "disabled": w.disabled,
                        })
                    })
                    .collect();
                json_out(&v);
            } else {
                let rows: Vec<Vec<String>> = r
                    .workloads
                    .iter()
                    .map(|w| {
                        vec![
                            w.name.clone(),
                            w.owner.clone(),
                            w.why.clone(),
                            time(w.last_issued_unix),
                            if w.disabled {
                                "disabled".into()
                            } else {
                                "enabled".into()
                            },
                        ]
                    })
                    .collect();
                print_table(&["WORKLOAD", "OWNER", "WHY", "LAST_ISSUED", "STATE"], &rows);
            }
        }
        Cmd::Introspect { token } => {
            let token = match token.as_deref() {
                None | Some("-") => {
                    let mut s = String::new();
                    std::io::stdin()
                        .take(64 * 1024)
                        .read_to_string(&mut s)
                        .map_err(|e| usage(format!("cannot read the token from stdin: {e}")))?;
                    s
                }
                Some(t) => t.to_string(),
            };
            if token.trim().is_empty() {
                return Err(usage(
                    "no token given: pass it as an argument or on stdin with `-`",
                ));
            }
            let r = c
                .introspect(v1::IntrospectRequest {
                    token: token.trim().to_string(),
                })
                .await?
                .into_inner();
            let v: serde_json::Value = serde_json::from_str(&r.json).unwrap_or_default();
            json_out(&v);
        }
        Cmd::Jwks => {
            let r = c.jwks(v1::Empty {}).await?.into_inner();
            let v: serde_json::Value = serde_json::from_str(&r.json).unwrap_or_default();
            json_out(&v);
        }
        Cmd::Audit(cmd) => {
            let req = match cmd {
                AuditCmd::Tail { follow, lines } => v1::AuditTailRequest {
                    follow,
                    since_unix_ms: 0,
                    limit: lines,
                },
                AuditCmd::Export { since } => v1::AuditTailRequest {
                    follow: false,
                    since_unix_ms: leash_control_plane::clock::now_ms()
                        - i64::from(parse_secs(&since).map_err(usage)?) * 1000,
                    limit: 0,
                },
            };
            let mut stream = c.audit_tail(req).await?.into_inner();
            let stdout = std::io::stdout();
            while let Some(e) = stream.message().await? {
                let mut out = stdout.lock();
                if let Err(e) = writeln!(out, "{}", e.json).and_then(|_| out.flush()) {
                    leash_proto::cli::stdout_failed(&e);
                }
            }
        }
    }
    Ok(())
}

fn read_file(path: &std::path::Path) -> Result<String, Fail> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
}

async fn policy(c: &mut AdminClient<Channel>, cmd: PolicyCmd) -> Result<(), Fail> {
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
                let timeout = parse_secs(&timeout).map_err(usage)?;
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
            if out.output == Output::Json {
                json_out(&serde_json::json!({
                    "version": r.version, "text": r.text, "rendered": r.rendered,
                    "applied_at": time(r.applied_at_unix), "applied_by": r.applied_by,
                }));
            } else {
                if r.version > 0 {
                    outln!(
                        "// version {} applied {} by {}",
                        r.version,
                        time(r.applied_at_unix),
                        r.applied_by
                    );
                }
                print_str(&r.rendered);
            }
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
                    .map_err(|e| usage(format!("--at {t:?}: {e}")))?
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
                        Some(t) => parse_secs(&t).map_err(usage)?,
                        None => 0,
                    },
                    audience: audience.unwrap_or_default(),
                    on_behalf_of: on_behalf_of.unwrap_or_default(),
                    at_unix,
                    task: String::new(),
                })
                .await?
                .into_inner();
            if out.output == Output::Json {
                json_out(&serde_json::json!({
                    "decision": r.decision, "approval_required": r.approval_required,
                    "policy_version": r.version, "refusals": r.refusals, "errors": r.errors,
                    "reasons": r.reasons.iter().map(|p| serde_json::json!({"id": p.id, "policy": p.text})).collect::<Vec<_>>(),
                }));
            } else {
                let d = if r.decision == "allow" {
                    "ALLOW".to_string()
                } else if r.approval_required && r.refusals.is_empty() {
                    "ALLOW AFTER APPROVAL".to_string()
                } else {
                    "DENY".to_string()
                };
                outln!("decision: {d} (policy version {})", r.version);
                for x in &r.refusals {
                    outln!("refused before policy: {x}");
                }
                if r.reasons.is_empty() {
                    outln!("no policy matched: default deny");
                }
                for p in &r.reasons {
                    outln!(
                        "determined by {}:\n  {}",
                        p.id,
                        p.text.trim().replace('\n', "\n  ")
                    );
                }
                for e in &r.errors {
                    outln!("evaluation error (policy skipped): {e}");
                }
            }
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

async fn approval(c: &mut AdminClient<Channel>, cmd: ApprovalCmd) -> Result<(), Fail> {
    match cmd {
        ApprovalCmd::List { all, out } => {
            let r = c
                .list_approvals(v1::ListApprovalsRequest { all })
                .await?
                .into_inner();
            if out.output == Output::Json {
                let v: Vec<_> = r
                    .approvals
                    .iter()
                    .map(|a| serde_json::json!({
                        "id": a.id, "workload": a.workload, "credential": a.credential,
                        "action": a.action, "host": a.host,
                        "on_behalf_of": (!a.on_behalf_of.is_empty()).then_some(&a.on_behalf_of),
                        "ttl_seconds": a.ttl_seconds, "audience": a.audience, "owner": a.owner,
                        "requested_at": time(a.requested_at_unix), "state": a.state,
                        "decided_by": (!a.decided_by.is_empty()).then_some(&a.decided_by),
                        "reason": (!a.reason.is_empty()).then_some(&a.reason),
                        "valid_until": (a.valid_until_unix > 0).then(|| time(a.valid_until_unix)),
                        "uses_left": a.uses_left, "policies": a.policies,
                    }))
                    .collect();
                json_out(&v);
            } else {
                let rows: Vec<Vec<String>> = r
                    .approvals
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.workload.clone(),
                            a.credential.clone(),
                            a.action.clone(),
                            a.host.clone(),
                            if a.on_behalf_of.is_empty() {
                                "-".into()
                            } else {
                                a.on_behalf_of.clone()
                            },
                            a.state.clone(),
                            time(a.requested_at_unix),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "WORKLOAD",
                        "CREDENTIAL",
                        "ACTION",
                        "HOST",
                        "ON_BEHALF_OF",
                        "STATE",
                        "REQUESTED_AT",
                    ],
                    &rows,
                );
            }
        }
        ApprovalCmd::Approve { id, for_, uses } => {
            let a = c
                .approve(v1::ApproveRequest {
                    id,
                    for_seconds: parse_secs(&for_).map_err(usage)?,
                    uses,
                })
                .await?
                .into_inner();
            eprintln!(
                "approved {} ({} {} for {} on {}) until {}, {} use(s)",
                esc(&a.id),
                esc(&a.action),
                esc(&a.credential),
                esc(&a.workload),
                esc(&a.host),
                time(a.valid_until_unix),
                a.uses_left
            );
        }
        ApprovalCmd::Deny { id, reason } => {
            let a = c
                .deny_approval(v1::DenyApprovalRequest { id, reason })
                .await?
                .into_inner();
            eprintln!("denied {}", a.id);
        }
    }
    Ok(())
}

async fn wait_for(c: &mut AdminClient<Channel>, seq: u64, timeout: u32) -> Result<(), Fail> {
    let mut stream = c
        .wait_revocation(v1::WaitRevocationRequest {
            seq,
            timeout_ms: timeout.saturating_mul(1000),
        })
        .await?
        .into_inner();
    let mut last = v1::RevocationProgress::default();
    while let Some(p) = stream.message().await? {
        let mut line = format!("wiped on {}/{} hosts", p.acked, p.total);
        if !p.pending_hosts.is_empty() {
            line.push_str(&format!("; {} not answering", p.pending_hosts.join(", ")));
        }
        if !p.failed_closed_hosts.is_empty() {
            line.push_str(&format!(
                "; {} offline past max_offline (already wiped by failing closed)",
                p.failed_closed_hosts.join(", ")
            ));
        }
        eprintln!("{line}");
        last = p;
    }
    if last.done {
        outln!(
            "wiped on {}/{} hosts in {} ms",
            last.acked,
            last.total,
            last.elapsed_ms
        );
        Ok(())
    } else {
        Err(Fail(
            format!(
                "timed out after {}s: {} did not acknowledge the wipe",
                timeout,
                last.pending_hosts.join(", ")
            ),
            6,
        ))
    }
}

async fn revoke(c: &mut AdminClient<Channel>, a: RevokeArgs) -> Result<(), Fail> {
    use v1::revocation_target_spec::Target;
    let target = if let Some(v) = a.lease {
        Target::Lease(v)
    } else if let Some(v) = a.workload {
        Target::Workload(v)
    } else if let Some(v) = a.credential {
        Target::Credential(v)
    } else if let Some(v) = a.owner {
        Target::Owner(v)
    } else if let Some(v) = a.host {
        Target::Host(v)
    } else {
        Target::All(true)
    };
    let timeout = parse_secs(&a.timeout).map_err(usage)?;
    let r = c
        .revoke(v1::RevokeRequest {
            target: Some(v1::RevocationTargetSpec {
                target: Some(target),
            }),
            reason: a.reason.unwrap_or_default(),
        })
        .await?
        .into_inner();
    eprintln!(
        "revoked {} lease(s) at sequence {}; pushing to {} host(s)",
        r.leases_revoked,
        r.seq,
        r.hosts.len()
    );
    if !a.wait {
        outln!("{}", r.seq);
        return Ok(());
    }
    wait_for(c, r.seq, timeout).await
}

fn main() -> ExitCode {
    // clap exits 2 on bad usage; Leash reserves 2 for "denied", so usage errors exit 1.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(5);
        }
    };
    let timeout_guard = Duration::from_secs(3600);
    match rt.block_on(async { tokio::time::timeout(timeout_guard, run(cli)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Fail(m, code))) => {
            eprintln!("error: {m}");
            ExitCode::from(code as u8)
        }
        Err(_) => {
            eprintln!("error: timed out");
            ExitCode::from(6)
        }
    }
}

/// `lease show` as text. Every stored value is shown escaped (`leash_proto::names`):
/// whatever a lease's on-behalf-of, task name, reason or timeline holds, it cannot forge
/// a line (a `state:`) or send an escape sequence to the terminal.
fn lease_text(l: &v1::Lease, timeline: &[serde_json::Value]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "lease:      {}", esc(&l.id));
    let _ = writeln!(o, "workload:   {}", esc(&l.workload));
    let _ = writeln!(
        o,
        "credential: {} (action {}, audience {})",
        esc(&l.credential),
        esc(&l.action),
        esc(&l.audience)
    );
    let _ = writeln!(o, "host:       {}", esc(&l.host));
    if !l.task.is_empty() {
        let _ = writeln!(o, "task:       {}", esc(&l.task));
    }
    if !l.on_behalf_of.is_empty() {
        let _ = writeln!(o, "on behalf:  {}", esc(&l.on_behalf_of));
    }
    let _ = writeln!(
        o,
        "state:      {}{}",
        esc(&l.state),
        if l.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&l.reason))
        }
    );
    let _ = writeln!(o, "issued:     {}  (seq {})", time(l.issued_at_unix), l.seq);
    let _ = writeln!(o, "expires:    {}", time(l.expires_at_unix));
    let _ = writeln!(o, "fingerprint {}", esc(&l.fingerprint));
    let _ = writeln!(o, "timeline:");
    for e in timeline {
        let at = e["at_ms"].as_i64().unwrap_or(0);
        let t = time(at / 1000);
        let mut line = format!(
            "  {}.{:03}Z  {:<10}",
            t.trim_end_matches('Z'),
            at % 1000,
            esc(e["type"].as_str().unwrap_or("?"))
        );
        if let Some(a) = e["actor"].as_str() {
            line.push_str(&format!(" by {}", esc(a)));
        }
        if let Some(r) = e["reason"].as_str() {
            line.push_str(&format!(" ({})", esc(r)));
        }
        let _ = writeln!(o, "{line}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_show_escapes_what_was_stored() {
        let l = v1::Lease {
            id: "l-1".into(),
            workload: "ci/job".into(),
            on_behalf_of: "eve\u{1b}[8m\nstate:      active".into(),
            state: "completed".into(),
            reason: "task x\rstate: active\u{7} ended".into(),
            ..Default::default()
        };
        let timeline = vec![serde_json::json!({
            "at_ms": 1_700_000_000_000_i64, "type": "completed",
            "actor": "h\u{1b}]0;pwned\u{7}", "reason": "a\nb\u{202e}",
        })];
        let t = lease_text(&l, &timeline);
        assert!(
            !t.chars()
                .any(|c| c != '\n' && (c.is_control() || leash_proto::names::is_invisible(c))),
            "{t:?}"
        );
        let states: Vec<&str> = t.lines().filter(|x| x.starts_with("state:")).collect();
        assert_eq!(
            states,
            ["state:      completed (task x\\rstate: active\\x07 ended)"],
            "{t}"
        );
        assert!(
            t.contains("on behalf:  eve\\x1b[8m\\nstate:      active\n"),
            "{t}"
        );
        assert!(
            t.contains(" by h\\x1b]0;pwned\\x07 (a\\nb\\u{202e})\n"),
            "{t}"
        );
    }
}
