//! `leashctl secret`: brokered secrets. A value is read from stdin or `--from-file`,
//! never from the command line (argv is visible to every user of the host), sent once,
//! and never printed: what is shown is a version's size and fingerprint.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use leash_proto::cli::{parse_secs, print_json, print_table, time, Fail};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::input::kv;
use crate::lease::report;
use crate::output::{Out, Output};

/// The most a value read by `leashctl` may be: the largest `max_secret_bytes` a control
/// plane accepts. The control plane checks its own, usually lower, limit.
const MAX_READ: u64 = 1024 * 1024;

#[derive(Subcommand)]
pub(crate) enum SecretCmd {
    /// Store a secret, or a new version of one; the value comes from stdin or --from-file.
    Put {
        /// Name, e.g. team-web/stripe-key.
        name: String,
        /// Accountable team or person (required for a new secret).
        #[arg(long)]
        owner: Option<String>,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// How the value is written: text, json (a JSON object) or env (KEY=VALUE lines).
        #[arg(long, value_parser = ["text", "json", "env"])]
        format: Option<String>,
        /// Default lease TTL (default 5m).
        #[arg(long)]
        ttl: Option<String>,
        /// Largest TTL a caller may ask for (default: the larger of 1h and --ttl).
        #[arg(long)]
        max_ttl: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// A label policy sees as a tag: key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// The only actions it serves, comma-separated (default: every action).
        #[arg(long, value_delimiter = ',')]
        actions: Vec<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Make a new value current and revoke every lease of an older version.
    Rotate {
        /// Name.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Wait until every host has wiped the older versions (as `revoke --wait`).
        #[arg(long, conflicts_with = "grace")]
        wait: bool,
        /// How long to wait.
        #[arg(long, default_value = "30s", requires = "wait")]
        timeout: String,
        /// Let older versions' leases run this long (or to their expiry, if sooner).
        #[arg(long)]
        grace: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the versions of a secret (never the values).
    Versions {
        /// Name.
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// A secret's definition and who used which version, where and when.
    Show {
        /// Name.
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Issue it to nobody, and revoke every lease of it.
    Disable {
        /// Name.
        name: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue it again.
    Enable {
        /// Name.
        name: String,
    },
    /// Revoke every lease of a secret and delete all its versions.
    Remove {
        /// Name.
        name: String,
        /// Revoke active leases (needed when there are some).
        #[arg(long)]
        yes: bool,
    },
    /// Store every variable of an env file as a secret; print its reference file.
    Import {
        /// The env file (VAR=value lines).
        #[arg(long)]
        env_file: PathBuf,
        /// Prefix of every secret's name, e.g. team-web/.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Accountable team or person of the new secrets.
        #[arg(long)]
        owner: String,
        /// Write the reference file here (mode 0644; never overwritten) instead of stdout.
        #[arg(long)]
        write_refs: Option<PathBuf>,
        /// Add a version to secrets that exist already (refused otherwise).
        #[arg(long)]
        new_version: bool,
    },
}

/// Run one `leashctl secret` command.
pub(crate) async fn run(c: &mut AdminClient<Channel>, cmd: SecretCmd) -> Result<(), Fail> {
    match cmd {
        SecretCmd::Put {
            name,
            owner,
            from_file,
            format,
            ttl,
            max_ttl,
            description,
            labels,
            actions,
            out,
        } => {
            let secs = |v: Option<String>| match v {
                Some(v) => parse_secs(&v).map_err(Fail::usage),
                None => Ok(0),
            };
            let req = v1::PutSecretRequest {
                default_ttl_seconds: secs(ttl)?,
                max_ttl_seconds: secs(max_ttl)?,
                labels: kv(&labels, "--label")?,
                value: read_value(from_file.as_deref())?.to_vec(),
                name,
                owner: owner.unwrap_or_default(),
                format: format.unwrap_or_default(),
                description: description.unwrap_or_default(),
                actions,
            };
            let r = c.put_secret(req).await?.into_inner();
            eprintln!(
                "secret {}: version {} ({} bytes, fingerprint {})",
                esc(&r.name),
                r.current_version,
                r.size,
                r.fingerprint
            );
            if out.output == Output::Json {
                print_json(&secret_json(&r));
            }
        }
        SecretCmd::Rotate {
            name,
            from_file,
            wait,
            timeout,
            grace,
            reason,
        } => {
            let timeout = parse_secs(&timeout).map_err(Fail::usage)?;
            let grace_seconds = match grace {
                Some(g) => parse_secs(&g).map_err(Fail::usage)?,
                None => 0,
            };
            let value = read_value(from_file.as_deref())?;
            let r = c
                .rotate_secret(v1::RotateSecretRequest {
                    name,
                    value: value.to_vec(),
                    grace_seconds,
                    reason: reason.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let s = r.secret.unwrap_or_default();
            eprintln!(
                "secret {}: version {} is current ({} bytes, fingerprint {})",
                esc(&s.name),
                s.current_version,
                s.size,
                s.fingerprint
            );
            if grace_seconds > 0 {
                eprintln!(
                    "{} lease(s) of older versions will be revoked at {} unless they end sooner",
                    r.leases_scheduled,
                    time(r.revoke_at_unix)
                );
                return Ok(());
            }
            report(
                c,
                r.leases_revoked,
                r.seq,
                &r.hosts,
                wait.then_some(timeout),
            )
            .await?;
        }
        SecretCmd::Versions { name, out } => {
            let r = c
                .list_secret_versions(v1::NameRequest { name })
                .await?
                .into_inner();
            versions(&r, out.output);
        }
        SecretCmd::Show { name, out } => {
            let r = c.get_secret(v1::NameRequest { name }).await?.into_inner();
            show(&r, out.output);
        }
        SecretCmd::Disable { name, reason } => {
            let r = c
                .set_secret_disabled(v1::SetDisabledRequest {
                    name,
                    disabled: true,
                    reason: reason.unwrap_or_default(),
                })
                .await?
                .into_inner();
            eprintln!("secret {} disabled; its leases are revoked", esc(&r.name));
        }
        SecretCmd::Enable { name } => {
            let r = c
                .set_secret_disabled(v1::SetDisabledRequest {
                    name,
                    disabled: false,
                    reason: String::new(),
                })
                .await?
                .into_inner();
            eprintln!("secret {} enabled", esc(&r.name));
        }
        SecretCmd::Remove { name, yes } => {
            let r = c
                .remove_secret(v1::RemoveSecretRequest {
                    name: name.clone(),
                    yes,
                })
                .await?
                .into_inner();
            eprintln!(
                "secret {} removed with its {} version(s)",
                esc(&name),
                r.versions_removed
            );
            report(c, r.leases_revoked, r.seq, &r.hosts, None).await?;
        }
        SecretCmd::Import {
            env_file,
            prefix,
            owner,
            write_refs,
            new_version,
        } => {
            crate::secret_import::import(
                c,
                crate::secret_import::Import {
                    env_file,
                    prefix,
                    owner,
                    write_refs,
                    new_version,
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// The value: all of `file`, or of stdin (a terminal too, to end of input). Never
/// empty; at most [`MAX_READ`] bytes. A trailing newline is part of the value.
pub(crate) fn read_value(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, Fail> {
    let mut buf = Zeroizing::new(Vec::new());
    let (what, read) = match file {
        Some(p) => (
            format!("{}", p.display()),
            std::fs::File::open(p).and_then(|f| f.take(MAX_READ + 1).read_to_end(&mut buf)),
        ),
        None => (
            "stdin".to_string(),
            std::io::stdin().take(MAX_READ + 1).read_to_end(&mut buf),
        ),
    };
    read.map_err(|e| Fail::usage(format!("cannot read the value from {what}: {e}")))?;
    if buf.is_empty() {
        return Err(Fail::usage(format!(
            "the value from {what} is empty; pipe it in (`printf %s \"$VALUE\" | leashctl secret …`) or use --from-file"
        )));
    }
    if buf.len() as u64 > MAX_READ {
        return Err(Fail::usage(format!(
            "the value from {what} is over {MAX_READ} bytes, more than any control plane accepts (max_secret_bytes)"
        )));
    }
    Ok(buf)
}

fn secret_json(s: &v1::SecretInfo) -> serde_json::Value {
    serde_json::json!({
        "name": s.name, "kind": "secret", "owner": s.owner, "format": s.format,
        "description": s.description, "labels": s.labels, "actions": s.actions,
        "default_action": s.default_action,
        "default_ttl_seconds": s.default_ttl_seconds, "max_ttl_seconds": s.max_ttl_seconds,
        "disabled": s.disabled, "current_version": s.current_version,
        "fingerprint": s.fingerprint, "size": s.size,
        "created_at": time(s.created_at_unix), "updated_at": time(s.updated_at_unix),
    })
}

fn versions(r: &v1::SecretVersionsResponse, output: Output) {
    if output == Output::Json {
        let vs: Vec<serde_json::Value> = r
            .versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version, "created_at": time(v.created_at_unix),
                    "created_by": v.created_by, "size": v.size,
                    "fingerprint": v.fingerprint, "current": v.current,
                })
            })
            .collect();
        return print_json(&serde_json::json!({ "name": r.name, "versions": vs }));
    }
    let rows: Vec<Vec<String>> = r
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                time(v.created_at_unix),
                v.created_by.clone(),
                v.size.to_string(),
                v.fingerprint.clone(),
                if v.current { "*" } else { "" }.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "VERSION",
            "CREATED",
            "CREATED_BY",
            "SIZE",
            "FINGERPRINT",
            "CURRENT",
        ],
        &rows,
    );
}

fn show(r: &v1::SecretDetail, output: Output) {
    let s = r.secret.clone().unwrap_or_default();
    if output == Output::Json {
        let mut doc = secret_json(&s);
        doc["active_leases"] = r.active_leases.into();
        doc["usage"] = r
            .usage
            .iter()
            .map(|u| {
                serde_json::json!({
                    "workload": u.workload, "version": u.version, "host": u.host,
                    "last_issued": time(u.last_issued_unix), "leases": u.leases,
                    "active": u.active,
                })
            })
            .collect();
        return print_json(&doc);
    }
    let dash = |v: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            esc(v).into_owned()
        }
    };
    let mut labels: Vec<String> = s
        .labels
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect();
    labels.sort();
    outln!("name:            {}", esc(&s.name));
    outln!("owner:           {}", dash(&s.owner));
    outln!("description:     {}", dash(&s.description));
    outln!("format:          {}", dash(&s.format));
    outln!("labels:          {}", dash(&labels.join(",")));
    outln!(
        "actions:         {}",
        if s.actions.is_empty() {
            "(all)".to_string()
        } else {
            esc(&s.actions.join(",")).into_owned()
        }
    );
    outln!("ttl:             {}s", s.default_ttl_seconds);
    outln!("max ttl:         {}s", s.max_ttl_seconds);
    outln!(
        "state:           {}",
        if s.disabled { "disabled" } else { "enabled" }
    );
    outln!(
        "current version: {} ({} bytes, fingerprint {}, since {})",
        s.current_version,
        s.size,
        s.fingerprint,
        time(s.updated_at_unix)
    );
    outln!("created:         {}", time(s.created_at_unix));
    outln!("active leases:   {}", r.active_leases);
    outln!();
    let rows: Vec<Vec<String>> = r
        .usage
        .iter()
        .map(|u| {
            vec![
                u.workload.clone(),
                u.version.to_string(),
                u.host.clone(),
                time(u.last_issued_unix),
                u.leases.to_string(),
                u.active.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "WORKLOAD",
            "VERSION",
            "HOST",
            "LAST_ISSUED",
            "LEASES",
            "ACTIVE",
        ],
        &rows,
    );
}
