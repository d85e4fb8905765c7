//! Unit tests of the `postgres` kind's pure parts: names, placeholders, quoting, the
//! marker, the SCRAM verifier, connection strings and the material.

use super::sql::{self, RoleFields, Values};
use super::{conn, material};
use crate::model::PostgresDef;

fn fields<'a>(workload: &'a str, lease: &'a str) -> RoleFields<'a> {
    RoleFields {
        workload,
        lease,
        credential: "app-db",
        action: "write",
    }
}

#[test]
fn role_names_take_only_safe_characters_and_fit_63_bytes() {
    let n = sql::role_name(
        sql::DEFAULT_TEMPLATE,
        fields("Billing.API/v2-x", "l-0123456789abcdef0123"),
    )
    .expect("fits");
    assert_eq!(n, "leash_billing_api_v2_x_l_0123456789abcdef0123");
    let long = "w".repeat(40);
    let e = sql::role_name(
        sql::DEFAULT_TEMPLATE,
        fields(&long, "l-0123456789abcdef0123"),
    )
    .expect_err("too long");
    assert!(e.0.contains("69 bytes") && e.0.contains("63"), "{e}");
    let n = sql::role_name("{action}_{credential}_{lease}", fields("w", "l-1")).expect("fits");
    assert_eq!(n, "write_app_db_l_1");
}

#[test]
fn templates_are_checked_at_add() {
    assert!(sql::check_template(sql::DEFAULT_TEMPLATE).is_ok());
    let e = sql::check_template("leash_{workload}").expect_err("no lease");
    assert!(e.0.contains("must contain {lease}"), "{e}");
    let e = sql::check_template("leash_{wrkload}_{lease}").expect_err("typo");
    assert!(e.0.contains("unknown placeholder {wrkload}"), "{e}");
    let e = sql::check_template("Leash_{lease}").expect_err("upper case");
    assert!(e.0.contains("'L'"), "{e}");
    let e = sql::check_template("pg_{lease}").expect_err("reserved");
    assert!(e.0.contains("pg_"), "{e}");
    let e = sql::check_template(&format!("{}_{{lease}}", "x".repeat(41))).expect_err("long");
    assert!(e.0.contains("64 bytes"), "{e}");
    assert!(sql::check_template(&format!("{}_{{lease}}", "x".repeat(40))).is_ok());
}

#[test]
fn placeholders_are_checked_and_quoted_never_pasted() {
    let e =
        sql::check_statement("GRANT SELECT ON t TO {{nmae}}", "--grant write").expect_err("typo");
    assert_eq!(
        e.0,
        "unknown placeholder {{nmae}} in --grant write; the placeholders are {{name}}, {{password}}, {{expiration}}"
    );
    assert!(sql::check_statement("GRANT x TO {{name", "--grant read").is_err());
    assert!(sql::check_statement("  ", "--grant read").is_err());
    let v = Values {
        name: "a\"b",
        password: "p'w",
        expiration: "2030-01-01T00:00:00Z",
    };
    let s = sql::substitute(
        "GRANT r TO {{name}}; SELECT {{password}}, {{ expiration }}",
        "--grant read",
        v,
    )
    .expect("ok");
    assert_eq!(
        s,
        "GRANT r TO \"a\"\"b\"; SELECT 'p''w', '2030-01-01T00:00:00Z'"
    );
    assert!(!format!("{v:?}").contains("p'w"));
}

#[test]
fn the_create_statement_holds_the_verifier_not_the_password() {
    let password = sql::new_password().expect("rng");
    assert_eq!(password.len(), 43);
    assert!(password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    let verifier = sql::scram_verifier(&password).expect("rng");
    assert!(verifier.starts_with("SCRAM-SHA-256$64:"), "{verifier}");
    let text = sql::create_role(sql::NewRole {
        values: Values {
            name: "leash_w_l_1",
            password: &password,
            expiration: "2030-01-01T00:00:00Z",
        },
        verifier: &verifier,
        connection_limit: 5,
        marker: &sql::marker("l-1", "app-db", 7),
        grant: "GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{name}}",
        grant_flag: "--grant read",
    })
    .expect("ok");
    assert!(!text.contains(&password));
    assert!(text.contains("CONNECTION LIMIT 5"));
    assert!(text.contains("VALID UNTIL '2030-01-01T00:00:00Z'"));
    assert!(text.contains(
        "COMMENT ON ROLE \"leash_w_l_1\" IS 'leash-managed lease=l-1 credential=app-db created=7'"
    ));
    assert!(text.ends_with("TO \"leash_w_l_1\""));
}

#[test]
fn markers_round_trip_and_others_are_not_markers() {
    let m = sql::parse_marker(&sql::marker("l-abc", "app-db", 1700000000)).expect("marker");
    assert_eq!(
        (m.lease.as_str(), m.credential.as_str(), m.created),
        ("l-abc", "app-db", 1700000000)
    );
    assert!(sql::parse_marker("made by hand").is_none());
    assert!(sql::parse_marker("leash-managed lease=l-1").is_none());
    assert!(sql::parse_marker("leash-managedx lease=l-1 credential=c created=1").is_none());
}

#[test]
fn connection_strings_are_parsed_without_echoing_them() {
    let s = conn::parse("postgresql://leash_admin:s3cret-pw@db.example:6432/app?sslmode=disable")
        .expect("parses");
    assert_eq!(
        conn::summary(&s.def),
        "leash_admin@db.example:6432/app sslmode=disable"
    );
    assert!(!format!("{s:?}").contains("s3cret-pw"));
    let s = conn::parse("postgresql://leash_admin:pw@%2Ftmp%2Fpg:5433/app").expect("socket");
    assert!(s.def.socket);
    assert_eq!(s.def.host, "/tmp/pg");
    assert_eq!(
        conn::summary(&s.def),
        "leash_admin@/tmp/pg:5433/app (unix socket)"
    );
    let s = conn::parse("host=/run/pg user=adm password='a b' dbname=app sslmode=disable")
        .expect("pairs");
    assert_eq!((s.def.port, s.def.dbname.as_str()), (5432, "app"));
    for (dsn, part) in [
        ("", "empty"),
        ("postgresql://u:s3cret-pw@h:5432", "no database"),
        ("postgresql://:s3cret-pw@h:5432/app", "no user"),
        ("postgresql://u:s3cret-pw@h/app?sslmode=maybe", "sslmode"),
        ("postgresql://u:s3cret-pw@h/app?bogus=1", "bogus"),
        ("nonsense s3cret-pw", "could not be parsed"),
    ] {
        let e = conn::parse(dsn).expect_err(dsn).to_string();
        assert!(e.contains(part), "{dsn}: {e}");
        assert!(!e.contains("s3cret-pw"), "{e}");
    }
    let e =
        conn::parse("postgresql://u:pw@h/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .expect_err("no such file")
            .to_string();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn the_material_is_the_documented_json_with_a_url() {
    let mut def = PostgresDef {
        user: "leash_admin".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        dbname: "app".into(),
        sslmode: "require".into(),
        ..PostgresDef::default()
    };
    let v: serde_json::Value =
        serde_json::from_str(&material(&def, "leash_w_l_1", "pw_1")).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"user": "leash_w_l_1", "password": "pw_1", "host": "127.0.0.1",
            "port": 5432, "dbname": "app",
            "url": "postgresql://leash_w_l_1:pw_1@127.0.0.1:5432/app?sslmode=require"})
    );
    def.socket = true;
    def.host = "/tmp/x".into();
    let v: serde_json::Value = serde_json::from_str(&material(&def, "u", "p")).expect("json");
    assert_eq!(v["url"], "postgresql://u:p@%2Ftmp%2Fx:5432/app");
}
