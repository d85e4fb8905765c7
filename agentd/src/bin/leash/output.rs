//! What `leash` prints: the text and JSON forms of `get`, `whoami` and `status`.
//! Only `get`'s secret goes to stdout as bare text; notes go to stderr from the commands.

use clap::ValueEnum;
use leash_proto::cli::{print_json as json, print_str, time};
use leash_proto::outln;
use leash_proto::v1;

use crate::served;

/// `--output`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

/// `leash get`: the bare token (with a newline), a secret's value exactly as stored (no
/// newline added), a postgres credential's connection URL (with a newline), or the
/// credential with its lease as JSON. `field`: one field of a JSON secret (as stored) or
/// of a postgres credential (with a newline) instead of the whole value.
pub(crate) fn fetched(
    r: &v1::FetchResponse,
    name: &str,
    field: Option<&str>,
    output: Output,
) -> Result<(), String> {
    if output == Output::Json {
        json(&get_json(r, name, field)?);
    } else {
        print_str(&get_text(r, name, field)?);
    }
    Ok(())
}

/// What `leash get` prints as text.
pub(crate) fn get_text(
    r: &v1::FetchResponse,
    name: &str,
    field: Option<&str>,
) -> Result<String, String> {
    match field {
        // A postgres credential's fields are made by the control plane, not stored text:
        // printed as a line, like its URL.
        Some(f) if served::is_postgres(r) => Ok(format!("{}\n", served::field(r, name, f)?)),
        Some(f) => served::field(r, name, f),
        None if served::is_secret(r) => Ok(r.token.clone()),
        None => leash_agentd::documents::text(r, name)
            .map(|t| format!("{t}\n"))
            .map_err(|e| e.to_string()),
    }
}

/// The `leash get --output json` document: the one the agent's HTTP API answers
/// (`leash_agentd::documents`). With `field`, `value` is that field and `field` says which.
pub(crate) fn get_json(
    r: &v1::FetchResponse,
    name: &str,
    field: Option<&str>,
) -> Result<serde_json::Value, String> {
    match field {
        Some(f) => leash_agentd::documents::fetched_field(r, name, f).map_err(|e| e.to_string()),
        None => leash_agentd::documents::fetched(r, name).map_err(|e| e.to_string()),
    }
}

/// `leash whoami`.
pub(crate) fn whoami(r: v1::WhoAmIResponse, output: Output) {
    let a = r.attested.clone().unwrap_or_default();
    if output == Output::Json {
        json(&leash_agentd::documents::whoami(&r));
    } else {
        outln!("host:      {}", r.host);
        outln!("pid:       {}", a.pid);
        outln!("uid:       {} ({})", a.uid, a.user);
        outln!("gid:       {}", a.gid);
        outln!(
            "exe:       {}",
            if a.exe_path.is_empty() {
                "-"
            } else {
                &a.exe_path
            }
        );
        outln!("selectors:");
        for s in &a.selectors {
            outln!("  {s}");
        }
        if r.workloads.is_empty() {
            outln!("workloads: (none match)");
        } else {
            outln!("workloads:");
            for (w, id) in r.workloads.iter().zip(r.spiffe_ids.split(' ')) {
                outln!("  {w}  {id}");
            }
        }
    }
}

/// `leash status`, or only the agent's health when it could not attest the caller.
pub(crate) fn status(r: &v1::StatusResponse, output: Output) {
    if output == Output::Json {
        // The same document the agent's HTTP API answers.
        json(&leash_agentd::documents::status(r));
    } else if r.health_only {
        outln!("state:          {}", r.state);
        outln!("synced:         {}", r.synced);
        outln!("last seq:       {}", r.last_seq);
        outln!("last heartbeat: {}", time(r.last_heartbeat_unix_ms / 1000));
    } else {
        outln!("agent:          leash-agentd {}", r.version);
        outln!("host:           {}", r.host);
        outln!(
            "state:          {}{}",
            r.state,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.reason)
            }
        );
        outln!("synced:         {}", r.synced);
        outln!("last seq:       {}", r.last_seq);
        outln!("last heartbeat: {}", time(r.last_heartbeat_unix_ms / 1000));
        outln!("control plane:  {}", r.control_plane);
        outln!("max offline:    {}s", r.max_offline_secs);
        outln!("workloads:      {}", r.workloads);
        outln!("cached:         {} credential(s)", r.cached_credentials);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::served::tests::{pg_url, postgres, secret, PG_PASSWORD};

    #[test]
    fn a_secret_is_printed_exactly() {
        assert_eq!(
            get_text(&secret("sk_live_1", "text"), "s", None).unwrap(),
            "sk_live_1"
        );
        assert_eq!(
            get_text(&secret("line\n", "text"), "s", None).unwrap(),
            "line\n"
        );
        let jwt = v1::FetchResponse {
            token: "eyJ.a.b".into(),
            ..Default::default()
        };
        assert_eq!(get_text(&jwt, "api", None).unwrap(), "eyJ.a.b\n");
        let r = secret(r#"{"password":"p4ss","n":1}"#, "json");
        assert_eq!(get_text(&r, "db", Some("password")).unwrap(), "p4ss");
        assert_eq!(get_text(&r, "db", Some("n")).unwrap(), "1");
        assert!(get_text(&r, "db", Some("nope")).is_err());
    }

    #[test]
    fn json_of_a_secret() {
        let doc = get_json(&secret("sk_live_1", ""), "s", None).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "value": "sk_live_1", "version": 3, "lease_id": "l-1",
                "expires_at": "2026-11-28T17:46:38Z", "expires_at_unix": 1_795_887_998,
                "workload": "ci/job", "action": "read", "cached": false,
                "kind": "secret", "format": "text",
            })
        );
        let r = secret(r#"{"password":"p4ss","n":1}"#, "json");
        let doc = get_json(&r, "db", Some("n")).unwrap();
        assert_eq!(doc["value"], 1);
        assert_eq!(doc["field"], "n");
        assert_eq!(doc["format"], "json");
        let e = get_json(&r, "db", Some("user")).unwrap_err();
        assert!(
            e.contains("no field \"user\"") && !e.contains("p4ss"),
            "{e}"
        );
    }

    #[test]
    fn json_of_a_jwt_gains_kind() {
        let jwt = v1::FetchResponse {
            token: "eyJ.a.b".into(),
            audience: "https://api.example".into(),
            lease_id: "l-2".into(),
            ..Default::default()
        };
        let doc = get_json(&jwt, "api", None).unwrap();
        assert_eq!(doc["kind"], "jwt");
        assert_eq!(doc["token"], "eyJ.a.b");
        assert_eq!(doc["audience"], "https://api.example");
        assert!(doc.get("value").is_none() && doc.get("version").is_none());
    }

    #[test]
    fn get_of_a_postgres_credential_prints_the_url_or_a_field() {
        let r = postgres();
        assert_eq!(
            get_text(&r, "app-db", None).unwrap(),
            format!("{}\n", pg_url())
        );
        assert_eq!(
            get_text(&r, "app-db", Some("password")).unwrap(),
            format!("{PG_PASSWORD}\n")
        );
        assert_eq!(get_text(&r, "app-db", Some("port")).unwrap(), "5432\n");
        assert_eq!(
            get_text(&r, "app-db", Some("user")).unwrap(),
            "leash_ci_job_l1\n"
        );
        assert_eq!(
            get_text(&r, "app-db", Some("host")).unwrap(),
            "/run/postgresql\n"
        );
        assert_eq!(get_text(&r, "app-db", Some("dbname")).unwrap(), "app\n");
        assert_eq!(
            get_text(&r, "app-db", Some("url")).unwrap(),
            format!("{}\n", pg_url())
        );
        let e = get_text(&r, "app-db", Some("token")).unwrap_err();
        assert!(
            e.contains("no field \"token\"") && !e.contains(PG_PASSWORD),
            "{e}"
        );
    }

    #[test]
    fn json_of_a_postgres_credential_is_its_document() {
        let r = postgres();
        let doc = get_json(&r, "app-db", None).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "kind": "postgres", "user": "leash_ci_job_l1", "password": PG_PASSWORD,
                "host": "/run/postgresql", "port": 5432, "dbname": "app", "url": pg_url(),
                "lease_id": "l-9", "expires_at": "2026-11-28T17:46:38Z",
                "expires_at_unix": 1_795_887_998, "workload": "ci/job", "action": "write",
                "cached": false,
            })
        );
        assert!(doc.get("token").is_none() && doc.get("value").is_none());
        let doc = get_json(&r, "app-db", Some("port")).unwrap();
        assert_eq!(
            (doc["value"].as_u64(), doc["field"].as_str()),
            (Some(5432), Some("port"))
        );
        assert!(doc.get("password").is_none());
    }
}
