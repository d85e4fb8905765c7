//! What a fetched credential gives the commands that use it (`get`, `exec`, `render`):
//! its kind, the text to hand on (a JWT, a secret's value, a postgres credential's
//! connection URL, or one `#field` of a JSON secret or a postgres credential), what of it
//! `leash exec` masks, and the request a `leash://` reference stands for.
//!
//! Errors name the credential and the field, never the value.

use leash_proto::reference::Reference;
use leash_proto::v1;

/// The kind of a fetched credential; an older control plane sends none, meaning `jwt`.
pub(crate) fn kind(r: &v1::FetchResponse) -> &str {
    if r.kind.is_empty() {
        "jwt"
    } else {
        &r.kind
    }
}

/// Whether the credential is a brokered secret (printed exactly, no newline added).
pub(crate) fn is_secret(r: &v1::FetchResponse) -> bool {
    kind(r) == "secret"
}

/// Whether the credential is a PostgreSQL login role (its material: a JSON object with
/// `user`, `password`, `host`, `port`, `dbname` and `url`).
pub(crate) fn is_postgres(r: &v1::FetchResponse) -> bool {
    kind(r) == leash_agentd::documents::POSTGRES
}

/// Field `field` of the JSON-format secret or postgres credential `name`: a string as it is, anything else as
/// compact JSON. Refused (naming the field, never the value) for anything that is not a
/// JSON secret, and for a field it does not have.
pub(crate) fn field(r: &v1::FetchResponse, name: &str, field: &str) -> Result<String, String> {
    Ok(match field_value(r, name, field)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// [`field`] as a JSON value (for `--output json`); the agent's HTTP API takes fields
/// the same way (`leash_agentd::documents::field`).
pub(crate) fn field_value(
    r: &v1::FetchResponse,
    name: &str,
    field: &str,
) -> Result<serde_json::Value, String> {
    leash_agentd::documents::field(r, name, field).map_err(|e| e.to_string())
}

/// The text a reference stands for: the whole credential (a postgres credential's
/// `url`), or one field.
pub(crate) fn text(r: &v1::FetchResponse, reference: &Reference) -> Result<String, String> {
    match &reference.field {
        Some(f) => field(r, &reference.name, f),
        None => leash_agentd::documents::text(r, &reference.name).map_err(|e| e.to_string()),
    }
}

/// What `leash exec` masks for credential `r`, injected as `text` by `reference`:
/// `(label, value)` pairs, the label being what replaces the value in the output.
///
/// For a postgres credential, its secret parts (the `url` and the `password`), whichever
/// field was injected: a program handed the URL may print the password alone, or one
/// handed the password may build and print a URL. Its other fields (user, host, port,
/// dbname) name the role and the server and are not masked, even when injected (a port
/// number or a database name masked everywhere in a log hides more than it protects).
/// For any other kind, the injected text.
pub(crate) fn masked(
    r: &v1::FetchResponse,
    reference: &Reference,
    text: &str,
) -> Vec<(String, String)> {
    if is_postgres(r) {
        return leash_agentd::documents::postgres_secrets(r)
            .into_iter()
            .map(|(f, v)| {
                let label = if f == "url" {
                    reference.name.clone()
                } else {
                    format!("{}#{f}", reference.name)
                };
                (label, v)
            })
            .collect();
    }
    let label = match &reference.field {
        Some(f) => format!("{}#{f}", reference.name),
        None => reference.name.clone(),
    };
    vec![(label, text.to_string())]
}

/// The Fetch a reference asks for, within task `task_handle` (empty: none).
pub(crate) fn request(reference: &Reference, task_handle: &str) -> v1::FetchRequest {
    v1::FetchRequest {
        credential: reference.name.clone(),
        action: reference.action.clone(),
        audience: reference.audience.clone(),
        ttl_seconds: reference.ttl_seconds,
        as_workload: reference.as_workload.clone(),
        task_handle: task_handle.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn secret(value: &str, format: &str) -> v1::FetchResponse {
        v1::FetchResponse {
            token: value.into(),
            kind: "secret".into(),
            version: 3,
            format: format.into(),
            lease_id: "l-1".into(),
            expires_at_unix: 1_795_887_998,
            workload: "ci/job".into(),
            action: "read".into(),
            ..Default::default()
        }
    }

    pub(crate) const PG_PASSWORD: &str = "c3VwZXJzZWNyZXRwYXNzd29yZGZvcmFsZWFzZTAwMDA";

    /// A postgres credential as the control plane serves it (the material of docs/DATABASES.md).
    pub(crate) fn postgres() -> v1::FetchResponse {
        v1::FetchResponse {
            token: format!(
                r#"{{"user":"leash_ci_job_l1","password":"{PG_PASSWORD}","host":"/run/postgresql","port":5432,"dbname":"app","url":"postgresql://leash_ci_job_l1:{PG_PASSWORD}@%2Frun%2Fpostgresql:5432/app"}}"#
            ),
            kind: "postgres".into(),
            format: "json".into(),
            lease_id: "l-9".into(),
            expires_at_unix: 1_795_887_998,
            workload: "ci/job".into(),
            action: "write".into(),
            ..Default::default()
        }
    }

    pub(crate) fn pg_url() -> String {
        format!("postgresql://leash_ci_job_l1:{PG_PASSWORD}@%2Frun%2Fpostgresql:5432/app")
    }

    #[test]
    fn a_postgres_reference_stands_for_the_url_or_a_field() {
        let r = postgres();
        assert!(is_postgres(&r) && !is_secret(&r));
        let whole = leash_proto::reference::parse("leash://app-db?action=write").unwrap();
        assert_eq!(text(&r, &whole).unwrap(), pg_url());
        let pw = leash_proto::reference::parse("leash://app-db#password").unwrap();
        assert_eq!(text(&r, &pw).unwrap(), PG_PASSWORD);
        let port = leash_proto::reference::parse("leash://app-db#port").unwrap();
        assert_eq!(text(&r, &port).unwrap(), "5432");
        let bad = leash_proto::reference::parse("leash://app-db#passwd").unwrap();
        let e = text(&r, &bad).unwrap_err();
        assert!(
            e.contains("no field \"passwd\"") && !e.contains(PG_PASSWORD),
            "{e}"
        );
        let broken = v1::FetchResponse {
            token: "{\"user\":\"x\"}".into(),
            ..postgres()
        };
        let e = text(&broken, &whole).unwrap_err();
        assert!(e.contains("is a postgres credential whose material"), "{e}");
    }

    #[test]
    fn exec_masks_the_url_and_the_password_of_a_postgres_credential() {
        let r = postgres();
        for spec in [
            "leash://app-db",
            "leash://app-db#password",
            "leash://app-db#user",
        ] {
            let reference = leash_proto::reference::parse(spec).unwrap();
            let t = text(&r, &reference).unwrap();
            let m = masked(&r, &reference, &t);
            assert_eq!(
                m,
                vec![
                    ("app-db".to_string(), pg_url()),
                    ("app-db#password".to_string(), PG_PASSWORD.to_string()),
                ],
                "{spec}"
            );
        }
        // Any other kind: what was injected, under the reference's label.
        let s = secret("sk_live_123456", "text");
        let reference = leash_proto::reference::parse("leash://stripe").unwrap();
        assert_eq!(
            masked(&s, &reference, "sk_live_123456"),
            vec![("stripe".to_string(), "sk_live_123456".to_string())]
        );
        let j = secret(r#"{"password":"hunter2-xyz"}"#, "json");
        let reference = leash_proto::reference::parse("leash://db#password").unwrap();
        assert_eq!(
            masked(&j, &reference, "hunter2-xyz"),
            vec![("db#password".to_string(), "hunter2-xyz".to_string())]
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&v1::FetchResponse::default()), "jwt");
        assert!(is_secret(&secret("v", "text")));
        assert!(!is_secret(&v1::FetchResponse::default()));
    }

    #[test]
    fn fields_of_a_json_secret() {
        let r = secret(
            r#"{"user":"svc","password":"hunter2-xyz","port":5432,"opts":{"tls":true}}"#,
            "json",
        );
        assert_eq!(field(&r, "db", "password").unwrap(), "hunter2-xyz");
        assert_eq!(field(&r, "db", "port").unwrap(), "5432");
        assert_eq!(field(&r, "db", "opts").unwrap(), r#"{"tls":true}"#);
        let e = field(&r, "db", "pass").unwrap_err();
        assert!(e.contains("no field \"pass\""), "{e}");
        assert!(
            e.contains("\"opts\", \"password\", \"port\", \"user\""),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "the error shows the value: {e}");
    }

    #[test]
    fn fields_only_of_json_secrets_and_never_the_value() {
        let e = field(&secret("sk_live_123456", "text"), "stripe", "x").unwrap_err();
        assert!(e.contains("a text-format secret"), "{e}");
        assert!(!e.contains("sk_live"), "{e}");
        let e = field(&secret("sk_live_123456", ""), "stripe", "x").unwrap_err();
        assert!(e.contains("text-format"), "{e}");
        let jwt = v1::FetchResponse {
            token: "eyJhbGciOi.x.y".into(),
            ..Default::default()
        };
        let e = field(&jwt, "api", "sub").unwrap_err();
        assert!(e.contains("is a jwt"), "{e}");
        let e = field(&secret("not json sk_live_1", "json"), "s", "x").unwrap_err();
        assert!(
            e.contains("not a JSON object") && !e.contains("sk_live"),
            "{e}"
        );
    }

    #[test]
    fn references_become_requests() {
        let r =
            leash_proto::reference::parse("leash://api?action=deploy&ttl=2m&as=ci/job#f").unwrap();
        let req = request(&r, "t-1.x");
        assert_eq!(req.credential, "api");
        assert_eq!(req.action, "deploy");
        assert_eq!(req.ttl_seconds, 120);
        assert_eq!(req.as_workload, "ci/job");
        assert_eq!(req.task_handle, "t-1.x");
        assert!(!req.fresh);
    }
}
