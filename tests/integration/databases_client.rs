//! A postgres credential as its consumers see it, through the real `leash`, agent and
//! HTTP API, against a real throwaway PostgreSQL server (`leash_tests::pg`): `leash get`
//! prints the connection URL, `--field` and `--output json` give its parts, the HTTP API
//! answers the same document, `leash exec` and `leash://` references hand on the URL (or
//! a field) and the masking of the command's output covers the URL and the password, and
//! `leash render` fills both. A real client (`psql`) logs in with what was handed on.
//!
//! Scripts write what they see to files in a work dir; tests compare, and never print a
//! password.

use std::path::Path;

use leash_tests::pg::Pg;
use leash_tests::Cluster;

use crate::agent_http::{curl, have};
use crate::tasks::{exec, read, workdir};

const ADMIN_PASSWORD: &str = "client-admin-pw";

/// A server with database `app`, a cluster with credential `app-db` (grants read and
/// write) and workload `ci/db` (the test's uid) allowed it.
fn setup() -> (Pg, Cluster) {
    let pg = Pg::start();
    let admin_url = pg.app_database(ADMIN_PASSWORD);
    // The schema is visible to every role; what a role may do with its tables comes from
    // the credential's grants.
    pg.sql("app", "GRANT USAGE ON SCHEMA app TO PUBLIC");
    let c = Cluster::start();
    let dsn = c.dir().join("admin-dsn");
    std::fs::write(&dsn, &admin_url).expect("write the admin DSN");
    c.credential(
        "app-db",
        &[
            "--kind",
            "postgres",
            "--connection-file",
            &dsn.display().to_string(),
            "--grant",
            "read=GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{name}}",
            "--grant",
            "write=GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {{name}}",
            "--ttl",
            "15m",
        ],
    );
    std::fs::remove_file(&dsn).expect("remove the admin DSN");
    c.my_workload("ci/db", "team-db", &["app-db"]);
    (pg, c)
}

/// `psql URL -c SQL` (unaligned, tuples only): exit code, stdout, stderr.
fn psql(pg: &Pg, url: &str, sql: &str) -> (i32, String, String) {
    let out = pg
        .server_command("psql")
        .args(["-X", "-A", "-t", url, "-c", sql])
        .output()
        .expect("run psql");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn get_prints_the_url_and_its_fields_and_the_http_api_answers_the_same() {
    leash_tests::require_root();
    let (pg, c) = setup();
    let doc = c.leash(&["get", "app-db", "--output", "json"]).json();
    let password = doc["password"].as_str().unwrap_or_default().to_string();
    c.remember_secret(&password);
    let mut keys: Vec<&str> = doc
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "action",
            "cached",
            "dbname",
            "expires_at",
            "expires_at_unix",
            "host",
            "kind",
            "lease_id",
            "password",
            "port",
            "url",
            "user",
            "workload"
        ],
        "the document's fields"
    );
    assert_eq!(doc["kind"], "postgres");
    assert_eq!(password.len(), 43, "32 random bytes, URL-safe base64");
    assert_eq!(doc["port"].as_u64(), Some(u64::from(pg.port())));
    assert_eq!(doc["dbname"], "app");
    let url = doc["url"].as_str().unwrap_or_default().to_string();
    let user = doc["user"].as_str().unwrap_or_default().to_string();
    assert!(
        url.starts_with(&format!("postgresql://{user}:")),
        "the URL does not name the role"
    );

    // Text: the URL with a newline; each field on its own line (the port as a number).
    let out = c.leash(&["get", "app-db"]);
    assert!(
        out.code(0).stdout == format!("{url}\n"),
        "leash get app-db is not the URL"
    );
    for (field, want) in [
        ("user", user.clone()),
        ("password", password.clone()),
        ("url", url.clone()),
        ("host", doc["host"].as_str().unwrap_or_default().to_string()),
        ("port", pg.port().to_string()),
        ("dbname", "app".to_string()),
    ] {
        let out = c.leash(&["get", "app-db", "--field", field]);
        assert!(out.code(0).stdout == format!("{want}\n"), "--field {field}");
    }
    c.leash(&["get", "app-db", "--field", "pasword"])
        .code(1)
        .stderr_has(&["no field \"pasword\"", "\"password\""]);
    let d = c
        .leash(&["get", "app-db", "--field", "port", "--output", "json"])
        .json();
    assert_eq!(
        (d["field"].as_str(), d["value"].as_u64()),
        (Some("port"), Some(u64::from(pg.port())))
    );
    assert!(
        d.get("password").is_none(),
        "asked for the port, got the password"
    );

    // The role logs in with the URL, and its grant holds.
    let (code, rows, err) = psql(&pg, &url, "SELECT current_user, name FROM app.items");
    assert_eq!(
        (code, rows.as_str()),
        (0, format!("{user}|one").as_str()),
        "{err}"
    );
    let (code, _, err) = psql(&pg, &url, "INSERT INTO app.items VALUES (9, 'nine')");
    assert_ne!(code, 0, "the read grant allowed an INSERT");
    assert!(err.contains("permission denied"), "{err}");

    // The HTTP API: the same document (the same cached lease), and field=.
    if have("curl") {
        let (s, v) = curl(&c, "/v1/credentials/app-db");
        assert_eq!(s, 200, "{}", v["error"]);
        assert_eq!(v["lease_id"], doc["lease_id"]);
        assert_eq!(v["cached"], true);
        for k in ["kind", "user", "password", "host", "port", "dbname", "url"] {
            assert_eq!(v[k], doc[k], "{k}");
        }
        let (s, v) = curl(&c, "/v1/credentials/app-db?field=password");
        assert_eq!(s, 200, "{}", v["error"]);
        assert_eq!(
            (v["field"].as_str(), v["value"].as_str()),
            (Some("password"), Some(password.as_str()))
        );
        assert!(
            v.get("url").is_none() && v.get("user").is_none(),
            "only the field"
        );
        let (s, v) = curl(&c, "/v1/credentials/app-db?field=nope");
        assert_eq!(s, 400);
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("no field \"nope\"") && !m.contains(&password),
            "{m}"
        );
    }
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn exec_hands_on_the_url_and_masks_the_url_and_the_password_alone() {
    leash_tests::require_root();
    let (pg, c) = setup();
    let work = workdir(&c, "db");
    let psql_bin = leash_tests::pg::bin_dir().expect("psql").join("psql");
    // The command writes the URL and its password to files, prints both, prints the
    // password alone (cut out of the URL by the script), and writes with psql.
    let script = format!(
        r#"printf %s "$DATABASE_URL" > url
pw=$(printf %s "$DATABASE_URL" | sed -E 's|^postgresql://[^:]*:([^@]*)@.*|\1|')
printf %s "$pw" > pw
printf %s "$PW" > pw_field
echo "url=$DATABASE_URL"
echo "password=$pw"
echo "field=$PW"
{psql} -X -q -A -t "$DATABASE_URL" -c "INSERT INTO app.items VALUES (2, 'two') RETURNING name" > inserted 2>&1"#,
        psql = psql_bin.display()
    );
    let out = exec(
        &c,
        &work,
        &[
            "--env",
            "DATABASE_URL=app-db:write",
            "--env",
            "PW=leash://app-db?action=write#password",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    out.code(0);
    let url = read(&work, "url");
    let pw = read(&work, "pw");
    c.remember_secret(&pw);
    assert_eq!(
        pw.len(),
        43,
        "the script did not find the password in the URL"
    );
    assert_eq!(
        read(&work, "pw_field"),
        pw,
        "#password is the URL's password"
    );
    assert!(url.starts_with("postgresql://") && url.contains(&pw));
    assert_eq!(read(&work, "inserted"), "two", "the write grant holds");
    assert_eq!(
        pg.sql("app", "SELECT name FROM app.items WHERE id = 2"),
        "two"
    );
    // Masked: the URL, and the password printed alone, whichever variable held it.
    for (line, want) in [
        ("url=", "url=<leash:app-db>"),
        ("password=", "password=<leash:app-db#password>"),
        ("field=", "field=<leash:app-db#password>"),
    ] {
        let got = out
            .stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} line in the output"));
        assert_eq!(got, want);
    }
    assert!(!out.stdout.contains(&pw) && !out.stderr.contains(&pw));
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn references_and_render_resolve_to_the_url_or_a_field() {
    leash_tests::require_root();
    let (_pg, c) = setup();
    let work = workdir(&c, "render");
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let doc = c.leash(&["get", "app-db", "--output", "json"]).json();
    let password = doc["password"].as_str().unwrap_or_default().to_string();
    c.remember_secret(&password);
    let out = c.leash(&["get", "leash://app-db#user"]);
    assert!(out.code(0).stdout == format!("{}\n", doc["user"].as_str().unwrap_or_default()));
    std::fs::write(
        work.join("app.conf.tmpl"),
        "url = {{ leash://app-db }}\npassword = {{ leash://app-db#password }}\nport = {{ leash://app-db#port }}\n",
    )
    .expect("template");
    c.leash(&[
        "render",
        &work.join("app.conf.tmpl").display().to_string(),
        "-o",
        &work.join("app.conf").display().to_string(),
    ])
    .code(0);
    let rendered = std::fs::read_to_string(work.join("app.conf")).expect("rendered");
    let want = format!(
        "url = {}\npassword = {password}\nport = {}\n",
        doc["url"].as_str().unwrap_or_default(),
        doc["port"]
    );
    assert!(
        rendered == want,
        "the rendered file is not the URL and the fields"
    );
    std::fs::remove_file(work.join("app.conf")).expect("remove");
    // An env file's reference, resolved by exec.
    std::fs::write(
        work.join(".env"),
        "DATABASE_URL=leash://app-db?action=read\n",
    )
    .expect("env file");
    exec(
        &c,
        &work,
        &[
            "--env-file",
            ".env",
            "--",
            "sh",
            "-c",
            r#"printf %s "$DATABASE_URL" > url"#,
        ],
    )
    .code(0);
    assert!(read(&work, "url").starts_with("postgresql://"));
    // A field a postgres credential does not have: named, never the value.
    c.leash(&["get", "leash://app-db#token"])
        .code(1)
        .stderr_has(&["no field \"token\""]);
    assert_no_password_in(&work, &password);
    c.assert_no_secret_leaked();
}

/// No file left under `dir` holds `password` except the ones a script wrote on purpose.
fn assert_no_password_in(dir: &Path, password: &str) {
    for f in leash_tests::files_under(dir) {
        if f.file_name().is_some_and(|n| n == "url") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            !text.contains(password),
            "{} holds the password",
            f.display()
        );
    }
}
