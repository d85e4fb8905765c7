//! How `leashctl` prints records: tables (stored text shown escaped, see
//! `leash_proto::cli::table`) and JSON.

use clap::ValueEnum;
use leash_proto::cli::{print_json, print_str, print_table, time};
use leash_proto::names::escape as esc;
use leash_proto::outln;
use leash_proto::v1;

/// `--output`: a table (or, for one record, lines of text), or JSON.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Table,
    Json,
}

/// The `--output` flag, for commands that print records.
#[derive(clap::Args)]
pub(crate) struct Out {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) output: Output,
}

fn workload_json(w: &v1::Workload) -> serde_json::Value {
    serde_json::json!({
        "name": w.name, "spiffe_id": w.spiffe_id, "owner": w.owner, "kind": w.kind,
        "selectors": w.selectors, "hosts": w.hosts, "allow": w.allow,
        "expires_at": (w.expires_at_unix > 0).then(|| time(w.expires_at_unix)),
        "disabled": w.disabled, "created_at": time(w.created_at_unix),
        "x509_svid_ttl_seconds": (w.x509_svid_ttl_seconds > 0).then_some(w.x509_svid_ttl_seconds),
    })
}

fn lease_json(l: &v1::Lease) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": l.id, "workload": l.workload, "credential": l.credential, "action": l.action,
        "audience": l.audience, "host": l.host,
        "task": (!l.task.is_empty()).then_some(&l.task),
        "on_behalf_of": (!l.on_behalf_of.is_empty()).then_some(&l.on_behalf_of),
        "issued_at": time(l.issued_at_unix), "expires_at": time(l.expires_at_unix),
        "seq": l.seq, "state": l.state,
        "reason": (!l.reason.is_empty()).then_some(&l.reason),
        "fingerprint": l.fingerprint, "policy_version": l.policy_version,
        "version": (l.version != 0).then_some(l.version),
    });
    // A lease whose kind undoes something outside Leash (a database role to drop).
    if !l.end_step.is_empty() || l.end_pending {
        v["end_step"] = l.end_step.clone().into();
        v["end_pending"] = l.end_pending.into();
        if l.end_pending {
            v["end_pending_since"] = time(l.end_pending_since_unix).into();
            v["end_pending_since_unix"] = l.end_pending_since_unix.into();
            v["end_attempts"] = l.end_attempts.into();
            v["end_last_error"] = l.end_last_error.clone().into();
        }
    }
    v
}

/// One workload (`workload show`, `workload add --output json`).
pub(crate) fn print_workload(w: &v1::Workload, out: Output) {
    if out == Output::Json {
        return print_json(&workload_json(w));
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
        "x509 ttl:   {}",
        if w.x509_svid_ttl_seconds == 0 {
            "- (the x509 credential's ttl)".to_string()
        } else {
            format!("{}s", w.x509_svid_ttl_seconds)
        }
    );
    outln!(
        "state:      {}",
        if w.disabled { "disabled" } else { "enabled" }
    );
}

/// One credential (`credential add --output json`).
pub(crate) fn print_credential(c: &v1::Credential, out: Output) {
    if out == Output::Json {
        return print_json(&credential_json(c));
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

pub(crate) fn credential_json(c: &v1::Credential) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": c.name, "kind": c.kind, "audiences": c.audiences,
        "default_ttl_seconds": c.default_ttl_seconds, "max_ttl_seconds": c.max_ttl_seconds,
        "default_action": c.default_action, "scopes": c.scopes,
    });
    if !c.connection_summary.is_empty() {
        v["owner"] = c.owner.clone().into();
        v["description"] = c.description.clone().into();
        v["labels"] = serde_json::json!(c.labels);
        v["actions"] = serde_json::json!(c.actions);
        v["connection_summary"] = c.connection_summary.clone().into();
        v["connection_version"] = c.connection_version.into();
        v["grants"] = serde_json::json!(c.grants);
        v["revoke_sql"] = c.revoke_sql.clone().into();
        v["role_template"] = c.role_template.clone().into();
        v["connection_limit"] = c.connection_limit.into();
        v["disabled"] = c.disabled.into();
    }
    v
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

/// `join-token list`.
pub(crate) fn join_tokens(r: &v1::ListJoinTokensResponse, output: Output) {
    if output == Output::Json {
        let v: Vec<_> = r
            .tokens
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id, "name": (!t.name.is_empty()).then_some(&t.name), "labels": t.labels,
                    "created_at": time(t.created_at_unix), "expires_at": time(t.expires_at_unix),
                    "state": t.state, "used_by": (!t.used_by.is_empty()).then_some(&t.used_by),
                })
            })
            .collect();
        print_json(&v);
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

/// `workload list`.
pub(crate) fn workloads(r: &v1::ListWorkloadsResponse, output: Output) {
    if output == Output::Json {
        print_json(&r.workloads.iter().map(workload_json).collect::<Vec<_>>());
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

/// `credential list`.
pub(crate) fn credentials(r: &v1::ListCredentialsResponse, output: Output) {
    if output == Output::Json {
        print_json(
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

/// `host list`: state and last contact.
pub(crate) fn hosts(r: &v1::ListHostsResponse, output: Output) {
    if output == Output::Json {
        let v: Vec<_> = r
            .hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name, "labels": h.labels, "enrolled_at": time(h.enrolled_at_unix),
                    "last_seen": time(h.last_seen_unix), "connected": h.connected,
                    "evicted": h.evicted, "cert_not_after": time(h.cert_not_after_unix),
                    "acked_seq": h.acked_seq,
                })
            })
            .collect();
        print_json(&v);
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

/// `lease list`.
pub(crate) fn leases(r: &v1::ListLeasesResponse, output: Output) {
    if output == Output::Json {
        print_json(&r.leases.iter().map(lease_json).collect::<Vec<_>>());
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

/// `owner list`.
pub(crate) fn owners(r: &v1::ListOwnersResponse, output: Output) {
    if output == Output::Json {
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
        print_json(&v);
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

/// `report stale`.
pub(crate) fn stale(r: &v1::StaleReportResponse, output: Output) {
    if output == Output::Json {
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
        print_json(&v);
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

/// `approval list`.
pub(crate) fn approvals(r: &v1::ListApprovalsResponse, output: Output) {
    if output == Output::Json {
        let v: Vec<_> = r
            .approvals
            .iter()
            .map(|a| {
                serde_json::json!({
                    "id": a.id, "workload": a.workload, "credential": a.credential,
                    "action": a.action, "host": a.host,
                    "on_behalf_of": (!a.on_behalf_of.is_empty()).then_some(&a.on_behalf_of),
                    "ttl_seconds": a.ttl_seconds, "audience": a.audience, "owner": a.owner,
                    "requested_at": time(a.requested_at_unix), "state": a.state,
                    "decided_by": (!a.decided_by.is_empty()).then_some(&a.decided_by),
                    "reason": (!a.reason.is_empty()).then_some(&a.reason),
                    "valid_until": (a.valid_until_unix > 0).then(|| time(a.valid_until_unix)),
                    "uses_left": a.uses_left, "policies": a.policies,
                })
            })
            .collect();
        print_json(&v);
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

/// `policy show`: the policy text with its version, when and by whom it was applied.
pub(crate) fn policy(r: &v1::PolicyShowResponse, output: Output) {
    if output == Output::Json {
        print_json(&serde_json::json!({
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
}

/// `policy explain`: the decision and what decided it.
pub(crate) fn explain(r: &v1::PolicyExplainResponse, output: Output) {
    if output == Output::Json {
        print_json(&serde_json::json!({
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
}

/// `lease show`: the lease and its timeline.
pub(crate) fn lease(l: &v1::Lease, timeline: Vec<serde_json::Value>, output: Output) {
    if output == Output::Json {
        let mut v = lease_json(l);
        v["timeline"] = serde_json::Value::Array(timeline);
        print_json(&v);
    } else {
        print_str(&lease_text(l, &timeline));
    }
}

/// What `lease show` says of the end step of a lease whose kind undoes something
/// outside Leash: `drop pending since <time>, last error <msg> (N attempts)` while it is
/// queued, `dropped` once done; nothing for an active lease or another kind.
fn end_line(l: &v1::Lease) -> Option<String> {
    let step = if l.end_step.is_empty() {
        "end"
    } else {
        l.end_step.as_str()
    };
    if l.end_pending {
        let mut s = format!("{} pending", esc(step));
        if l.end_pending_since_unix > 0 {
            s.push_str(&format!(" since {}", time(l.end_pending_since_unix)));
        }
        if !l.end_last_error.is_empty() {
            s.push_str(&format!(", last error {}", esc(&l.end_last_error)));
        }
        if l.end_attempts > 0 {
            s.push_str(&format!(" ({} attempts)", l.end_attempts));
        }
        return Some(s);
    }
    if l.end_step.is_empty() || l.state == "active" {
        return None;
    }
    Some(match step {
        "drop" => "dropped".to_string(),
        "end" => "ended".to_string(),
        other => format!("{} done", esc(other)),
    })
}

/// `lease show` as text. Every stored value is shown escaped (`leash_proto::names`):
/// whatever a lease's on-behalf-of, task name, reason or timeline holds, it cannot forge
/// a line (a `state:`) or send an escape sequence to the terminal.
fn lease_text(l: &v1::Lease, timeline: &[serde_json::Value]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "lease:      {}", esc(&l.id));
    let _ = writeln!(o, "workload:   {}", esc(&l.workload));
    // A kind without an audience (a secret, a database role) has none to show.
    let audience = if l.audience.is_empty() {
        String::new()
    } else {
        format!(", audience {}", esc(&l.audience))
    };
    let _ = writeln!(
        o,
        "credential: {} (action {}{audience})",
        esc(&l.credential),
        esc(&l.action),
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
    if let Some(end) = end_line(l) {
        let _ = writeln!(o, "end step:   {end}");
    }
    let _ = writeln!(o, "issued:     {}  (seq {})", time(l.issued_at_unix), l.seq);
    let _ = writeln!(o, "expires:    {}", time(l.expires_at_unix));
    let _ = writeln!(o, "fingerprint {}", esc(&l.fingerprint));
    let _ = writeln!(o, "timeline:");
    for e in timeline {
        let at = e["at_ms"].as_i64().unwrap_or(0);
        let t = time(at / 1000);
        let mut line = format!(
            "  {}.{:03}Z  {:<12}",
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
        // What an end step outside Leash did, or why it failed (never a secret).
        let d = &e["detail"];
        if let Some(n) = d["sessions_terminated"].as_u64() {
            line.push_str(&format!(" ({n} session(s) cut)"));
        }
        if let Some(err) = d["error"].as_str() {
            line.push_str(&format!(" ({})", esc(err)));
        }
        let _ = writeln!(o, "{line}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_show_says_how_the_end_step_stands() {
        let pending = v1::Lease {
            id: "l-1".into(),
            state: "revoked".into(),
            end_step: "drop".into(),
            end_pending: true,
            end_pending_since_unix: 1_700_000_000,
            end_last_error: "connection refused\nstate: active".into(),
            end_attempts: 3,
            ..Default::default()
        };
        let t = lease_text(&pending, &[]);
        assert!(
            t.contains(
                "end step:   drop pending since 2023-11-14T22:13:20Z, last error connection refused\\nstate: active (3 attempts)\n"
            ),
            "{t}"
        );
        let j = lease_json(&pending);
        assert_eq!(j["end_pending"], true);
        assert_eq!(j["end_attempts"], 3);
        assert_eq!(j["end_step"], "drop");
        assert_eq!(j["end_pending_since_unix"], 1_700_000_000_i64);

        let dropped = v1::Lease {
            end_pending: false,
            end_attempts: 0,
            ..pending.clone()
        };
        assert!(lease_text(&dropped, &[]).contains("end step:   dropped\n"));
        assert_eq!(lease_json(&dropped)["end_pending"], false);
        // An active lease has nothing to say yet, nor a lease of a kind with no end step.
        let active = v1::Lease {
            state: "active".into(),
            ..dropped.clone()
        };
        assert!(!lease_text(&active, &[]).contains("end step"));
        let jwt = v1::Lease {
            state: "revoked".into(),
            ..Default::default()
        };
        assert!(!lease_text(&jwt, &[]).contains("end step"));
        assert!(lease_json(&jwt).get("end_pending").is_none());
    }

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

    #[test]
    fn lease_show_names_an_audience_only_when_there_is_one() {
        let mut l = v1::Lease {
            credential: "app-db".into(),
            action: "read".into(),
            ..Default::default()
        };
        assert!(lease_text(&l, &[]).contains("credential: app-db (action read)\n"));
        l.audience = "https://api".into();
        assert!(lease_text(&l, &[])
            .contains("credential: app-db (action read, audience https://api)\n"));
    }
}
