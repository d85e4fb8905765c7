//! `leashctl credential`: defining what can be issued, showing a definition with its
//! leases and pending end steps, and removing one. A `postgres` credential's admin
//! connection string is read from a file or stdin, never from the command line.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use leash_proto::cli::{parse_secs, print_json, Fail};
use leash_proto::names::escape as esc;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::input::kv;
use crate::output::{self, Out, Output};

/// The longest connection string read.
const MAX_CONNECTION_BYTES: u64 = 64 * 1024;

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum CredentialCmd {
    /// Define a credential (kinds: jwt, postgres, x509).
    Add {
        /// Name, e.g. deploy-api.
        name: String,
        /// Kind: jwt, postgres or x509 (an X.509-SVID).
        #[arg(long, default_value = "jwt")]
        kind: String,
        /// Allowed audience (repeatable); the first is the default.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Default TTL (default: 5m; 1h for x509).
        #[arg(long)]
        ttl: Option<String>,
        /// Largest TTL a caller may ask for (default: the larger of 1h and --ttl).
        #[arg(long)]
        max_ttl: Option<String>,
        /// Action used when a request names none (default: read; for postgres, read if
        /// it has a grant, else the first grant's action).
        #[arg(long)]
        default_action: Option<String>,
        /// Scopes for an action: ACTION=SCOPE (repeatable; several scopes per action add up).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// postgres: the file holding the admin connection string (- for stdin).
        #[arg(long)]
        connection_file: Option<PathBuf>,
        /// postgres: ACTION=SQL run when a role is made for that action; {{name}},
        /// {{password}}, {{expiration}} are substituted quoted (repeatable).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// postgres: SQL run before a role is dropped ({{name}}, {{expiration}}).
        #[arg(long)]
        revoke_sql: Option<String>,
        /// postgres: role name template (default leash_{workload}_{lease}).
        #[arg(long)]
        role_template: Option<String>,
        /// postgres: CONNECTION LIMIT of each role (default 10).
        #[arg(long)]
        connection_limit: Option<u32>,
        /// Accountable team or person.
        #[arg(long)]
        owner: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// Label key=value (repeatable); policy sees them as the credential's tags.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        out: Out,
    },
    /// List credentials.
    List(Out),
    /// Show a credential: its definition (never a connection string's password),
    /// active leases and pending end steps (a postgres role's drop).
    Show {
        /// The credential.
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Remove a credential: revoke every lease (a postgres role is dropped), then delete
    /// the definition and anything stored sealed with it.
    Remove {
        /// The credential.
        name: String,
        /// Needed when it has active leases.
        #[arg(long)]
        yes: bool,
        /// Recorded with the revocation.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// The connection string from `path` (`-`: stdin); never echoed.
fn read_connection(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, Fail> {
    let mut buf = Zeroizing::new(Vec::new());
    let stdin = path.as_os_str() == "-";
    let what = if stdin {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let read = if stdin {
        std::io::stdin()
            .take(MAX_CONNECTION_BYTES + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONNECTION_BYTES + 1).read_to_end(&mut buf))
    };
    read.map_err(|e| {
        Fail::usage(format!(
            "cannot read the connection string from {what}: {e}"
        ))
    })?;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(Fail::usage(format!(
            "the connection string from {what} is empty; write the admin connection string (postgresql://USER:PASSWORD@HOST:PORT/DB?sslmode=verify-full) in it"
        )));
    }
    if buf.len() as u64 > MAX_CONNECTION_BYTES {
        return Err(Fail::usage(format!(
            "the connection string from {what} is over {MAX_CONNECTION_BYTES} bytes"
        )));
    }
    Ok(buf)
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
            connection_file,
            grants,
            revoke_sql,
            role_template,
            connection_limit,
            owner,
            description,
            labels,
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
            let mut gr: HashMap<String, String> = HashMap::new();
            for g in &grants {
                let (a, sql) = g.split_once('=').ok_or_else(|| {
                    Fail::usage("--grant must look like ACTION=SQL, e.g. --grant read=\"GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{name}}\"")
                })?;
                if gr.insert(a.trim().to_string(), sql.to_string()).is_some() {
                    return Err(Fail::usage(format!(
                        "--grant {a} is given twice; put several statements in one, separated by ;"
                    )));
                }
            }
            let postgres = kind == "postgres";
            if kind == "x509" {
                let mut wrong = Vec::new();
                for (given, flag) in [
                    (!audiences.is_empty(), "--audience"),
                    (!scopes.is_empty(), "--scope"),
                    (!grants.is_empty(), "--grant"),
                    (connection_file.is_some(), "--connection-file"),
                    (revoke_sql.is_some(), "--revoke-sql"),
                    (role_template.is_some(), "--role-template"),
                    (connection_limit.is_some(), "--connection-limit"),
                ] {
                    if given {
                        wrong.push(flag);
                    }
                }
                if !wrong.is_empty() {
                    return Err(Fail::usage(format!(
                        "--kind x509 takes no {}: an X.509-SVID names only the workload's SPIFFE ID; leave them out",
                        wrong.join(", ")
                    )));
                }
            }
            let ttl = ttl.unwrap_or_else(|| if kind == "x509" { "1h" } else { "5m" }.to_string());
            if !postgres
                && (connection_file.is_some()
                    || !grants.is_empty()
                    || revoke_sql.is_some()
                    || role_template.is_some()
                    || connection_limit.is_some())
            {
                return Err(Fail::usage(
                    "--connection-file, --grant, --revoke-sql, --role-template and --connection-limit are for --kind postgres",
                ));
            }
            let connection = match (&connection_file, postgres) {
                (Some(p), _) => read_connection(p)?,
                (None, true) => {
                    return Err(Fail::usage(
                        "--kind postgres needs --connection-file FILE (or - for stdin) holding the admin connection string; it is never taken from the command line",
                    ))
                }
                (None, false) => Zeroizing::new(Vec::new()),
            };
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
                    default_action: default_action.unwrap_or_default(),
                    scopes: sc,
                    owner: owner.unwrap_or_default(),
                    description: description.unwrap_or_default(),
                    labels: kv(&labels, "--label")?,
                    connection: connection.to_vec(),
                    grants: gr,
                    revoke_sql: revoke_sql.unwrap_or_default(),
                    role_template: role_template.unwrap_or_default(),
                    connection_limit: connection_limit.unwrap_or(0),
                    ..Default::default()
                })
                .await?
                .into_inner();
            eprintln!("credential {} added", esc(&r.name));
            if out.output == Output::Json {
                output::print_credential(&r, out.output);
            }
        }
        CredentialCmd::List(o) => {
            let r = c.list_credentials(v1::Empty {}).await?.into_inner();
            output::credentials(&r, o.output);
        }
        CredentialCmd::Show { name, out } => {
            let r = c
                .get_credential(v1::NameRequest { name })
                .await?
                .into_inner();
            show(&r, out.output);
        }
        CredentialCmd::Remove { name, yes, reason } => {
            let r = c
                .remove_credential(v1::RemoveCredentialRequest {
                    name: name.clone(),
                    yes,
                    reason,
                })
                .await?
                .into_inner();
            eprintln!(
                "credential {} removed; {} lease(s) revoked",
                esc(&name),
                r.leases
            );
        }
    }
    Ok(())
}

fn show(r: &v1::CredentialDetail, out: Output) {
    let c = r.credential.clone().unwrap_or_default();
    if out == Output::Json {
        let mut v = output::credential_json(&c);
        v["active_leases"] = r.active_leases.into();
        v["pending_ends"] = r.pending_ends.into();
        v["end_step"] = r.end_step.clone().into();
        return print_json(&v);
    }
    let mut lines = vec![
        format!("name: {}", esc(&c.name)),
        format!("kind: {}", esc(&c.kind)),
    ];
    if !c.owner.is_empty() {
        lines.push(format!("owner: {}", esc(&c.owner)));
    }
    if !c.description.is_empty() {
        lines.push(format!("description: {}", esc(&c.description)));
    }
    if c.disabled {
        lines.push("state: disabled (nothing is issued)".into());
    }
    if !c.connection_summary.is_empty() {
        lines.push(format!(
            "connection: {} (version {})",
            esc(&c.connection_summary),
            c.connection_version
        ));
        lines.push(format!("role template: {}", esc(&c.role_template)));
        lines.push(format!("connection limit: {}", c.connection_limit));
        let mut grants: Vec<_> = c.grants.iter().collect();
        grants.sort();
        for (a, sql) in grants {
            lines.push(format!("grant {}: {}", esc(a), esc(sql)));
        }
        if !c.revoke_sql.is_empty() {
            lines.push(format!("revoke sql: {}", esc(&c.revoke_sql)));
        }
    }
    if !c.audiences.is_empty() {
        lines.push(format!("audiences: {}", esc(&c.audiences.join(","))));
    }
    lines.push(format!(
        "ttl: {}s (max {}s), default action {}",
        c.default_ttl_seconds,
        c.max_ttl_seconds,
        esc(&c.default_action)
    ));
    lines.push(format!("active leases: {}", r.active_leases));
    if !r.end_step.is_empty() {
        lines.push(format!("pending {}s: {}", esc(&r.end_step), r.pending_ends));
    }
    leash_proto::cli::print_str(&(lines.join("\n") + "\n"));
}
