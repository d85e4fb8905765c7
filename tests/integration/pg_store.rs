//! The control plane on the PostgreSQL store (`[store] kind = "postgres"`): issuance,
//! revocation with the wipe acknowledged, state kept across a `kill -9`, the schema
//! recorded in `schema_migrations`, a newer schema refused at start, and a URL that is
//! never printed.

use std::path::Path;
use std::process::Command;

use leash_tests::pg::Pg;
use leash_tests::process::bin;
use leash_tests::{Cluster, Options};

use crate::API_AUD;

/// The store role's password: must never appear in any output.
const STORE_PW: &str = "st0re-Secret-pw-91ad";

/// A database `leash` owned by the login role `leash_store`; its URL over the socket,
/// written to `dir/pg.url` (0600). Returns the file.
fn store_database(pg: &Pg, dir: &Path) -> std::path::PathBuf {
    pg.sql(
        "postgres",
        &format!("CREATE ROLE leash_store LOGIN PASSWORD '{STORE_PW}'"),
    );
    pg.sql("postgres", "CREATE DATABASE leash OWNER leash_store");
    let file = dir.join("pg.url");
    std::fs::write(&file, pg.socket_url("leash_store", STORE_PW, "leash")).expect("write url");
    std::fs::set_permissions(
        &file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod url");
    file
}

fn store_config(url_file: &Path) -> String {
    format!("[store]\nkind = \"postgres\"\nurl_file = {:?}\n", url_file.display().to_string())
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_control_plane_on_postgres_issues_revokes_and_keeps_its_state() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(Options::default().config(&store_config(&url)));
    assert_eq!(
        pg.sql("leash", "SELECT string_agg(version::text, ',') FROM schema_migrations"),
        "1",
        "the schema is recorded at its version"
    );
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let first = c.get("api", &["--as", "w1"]);
    assert!(!first.cached);
    // The lease is a row of the database, not of the data directory.
    assert_eq!(
        pg.sql(
            "leash",
            &format!(
                "SELECT count(*) FROM kv WHERE tree = 'leases' AND key = convert_to('{}', 'UTF8')",
                first.lease_id
            )
        ),
        "1"
    );
    assert!(
        !c.data_dir.join("db").exists(),
        "a postgres store writes no sled database"
    );
    let out = c.leashctl(&["revoke", "--lease", &first.lease_id, "--wait", "--timeout", "20s"]);
    out.code(0);
    assert!(out.stdout.contains("wiped on 1/1 hosts"), "{out}");
    let again = c.get("api", &["--as", "w1"]);
    assert_ne!(again.lease_id, first.lease_id, "the revoked lease is not served");

    // kill -9: everything acknowledged is in the database.
    c.restart_control_plane();
    let lease = c.lease(&first.lease_id);
    assert_eq!(lease["state"], "revoked", "{lease}");
    let out = c.leashctl(&["workload", "list"]);
    out.code(0);
    assert!(out.stdout.contains("w1"), "{out}");
    let logs = c.logs_dump();
    assert!(!logs.contains(STORE_PW), "the store's password was logged");
}

/// A database whose schema a newer control plane migrated: this one refuses to start,
/// saying so, with exit 1, and changes nothing.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_schema_newer_than_known_stops_the_start() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    pg.sql(
        "leash",
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO schema_migrations (version) VALUES (1), (999); \
         ALTER TABLE schema_migrations OWNER TO leash_store",
    );
    let config = tmp.path().join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\n{}",
            tmp.path().join("data").display().to_string(),
            tmp.path().join("run/admin.sock").display().to_string(),
            store_config(&url)
        ),
    )
    .expect("write config");
    let out = Command::new(bin("leash-control-plane"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("LEASH_STORE_URL")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("schema is at version 999, newer than this control plane knows (version 1)"),
        "{stderr}"
    );
    assert!(!stderr.contains(STORE_PW), "{stderr}");
    assert_eq!(
        pg.sql("leash", "SELECT count(*) FROM pg_tables WHERE tablename = 'kv'"),
        "0",
        "nothing was migrated"
    );
}

/// A wrong password: the start fails with exit 1 naming the database, never the URL's
/// password.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn an_unusable_store_url_stops_the_start_without_printing_it() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    store_database(&pg, tmp.path());
    let config = tmp.path().join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\n[store]\nkind = \"postgres\"\n",
            tmp.path().join("data").display().to_string(),
            tmp.path().join("run/admin.sock").display().to_string(),
        ),
    )
    .expect("write config");
    let wrong = pg.tcp_url("leash_store", "Wr0ng-pw-secret-77", "leash");
    let out = Command::new(bin("leash-control-plane"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("LEASH_STORE_URL", &wrong)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("Wr0ng-pw-secret-77"), "{stderr}");
}
