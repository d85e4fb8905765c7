//! Operating the store: `leash-control-plane migrate --from-sled` (a sled control
//! plane's state moved into PostgreSQL, verified, refused a second time) and
//! `leash-control-plane status` (which store, and whether it answers).

use std::path::Path;
use std::process::Command;

use leash_tests::pg::Pg;
use leash_tests::process::{self, bin};
use leash_tests::{Cluster, Options};

use crate::API_AUD;

const STORE_PW: &str = "m1grate-Store-pw-7c2e";
const SECRET: &str = "db-pw-value-moved-with-the-store-55e1";

/// An empty database `leash` owned by `leash_store`; its URL in `dir/pg.url` (0600).
fn store_database(pg: &Pg, dir: &Path) -> std::path::PathBuf {
    pg.sql(
        "postgres",
        &format!("CREATE ROLE leash_store LOGIN PASSWORD '{STORE_PW}'"),
    );
    pg.sql("postgres", "CREATE DATABASE leash OWNER leash_store");
    let file = dir.join("pg.url");
    std::fs::write(&file, pg.socket_url("leash_store", STORE_PW, "leash")).expect("write url");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod url");
    file
}

fn store_table(url_file: &Path) -> String {
    format!(
        "\n[store]\nkind = \"postgres\"\nurl_file = {:?}\n",
        url_file.display().to_string()
    )
}

fn control_plane(args: &[&str], config: &Path) -> process::Output {
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(args).arg("--config").arg(config);
    process::run(cmd, None, std::time::Duration::from_secs(60))
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_sled_store_migrates_to_postgres_with_everything_and_only_once() {
    leash_tests::require_root();
    if leash_tests::sled_only("it migrates a sled store") {
        return;
    }
    let mut pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let target = tmp.path().join("target.toml");
    std::fs::write(&target, store_table(&url)).expect("write config");

    let mut c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.credential("api2", &["--audience", API_AUD]);
    c.leashctl_stdin(&["secret", "put", "db-pw", "--owner", "team-ci"], SECRET)
        .code(0);
    c.remember_secret(SECRET);
    c.my_workload("ci/job", "team-ci", &["api", "api2", "db-pw"]);
    let first = c.get("api", &["--as", "ci/job"]);
    let revoked = c.get("api2", &["--as", "ci/job"]);
    let out = c.leashctl(&["revoke", "--lease", &revoked.lease_id]);
    out.code(0);
    let events_before = c.audit().len();
    assert!(events_before > 0);
    // Status on sled: reachable, exit 0.
    let st = control_plane(&["status"], c.config_path());
    st.code(0);
    assert_eq!(st.json()["store"]["kind"], "sled", "{st}");
    assert_eq!(st.json()["store"]["reachable"], true, "{st}");

    // A running sled control plane holds its directory: the migration is refused.
    let busy = control_plane(
        &["migrate", "--from-sled", &c.data_dir.display().to_string()],
        &target,
    );
    busy.code(1);
    assert!(busy.stderr.contains("stop the control plane"), "{busy}");
    assert_eq!(
        pg.sql("leash", "SELECT to_regclass('kv') IS NULL"),
        "t",
        "the database was not touched"
    );

    assert_eq!(c.stop_control_plane(), 0);
    let out = control_plane(
        &["migrate", "--from-sled", &c.data_dir.display().to_string()],
        &target,
    );
    out.code(0);
    assert!(
        out.stdout.contains("counts and checksums verified"),
        "{out}"
    );
    assert!(out.stdout.contains("same master key"), "{out}");
    let leases_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("leases "))
        .unwrap_or_else(|| panic!("no leases line in {out}"));
    assert!(leases_line.split_whitespace().nth(1) == Some("2"), "{out}");
    // Every row, byte for byte: the database's count per tree is what was printed.
    assert_eq!(
        pg.sql("leash", "SELECT count(*) FROM kv WHERE tree = 'leases'"),
        "2"
    );
    assert!(!out.stdout.contains(STORE_PW) && !out.stderr.contains(STORE_PW));

    // A second run is refused and changes nothing.
    let rows = pg.sql("leash", "SELECT count(*) FROM kv");
    let again = control_plane(
        &["migrate", "--from-sled", &c.data_dir.display().to_string()],
        &target,
    );
    again.code(1);
    assert!(again.stderr.contains("is not empty"), "{again}");
    assert_eq!(pg.sql("leash", "SELECT count(*) FROM kv"), rows);

    // The same control plane (same data dir, so the same master key) on postgres.
    let mut cfg = std::fs::read_to_string(c.config_path()).expect("config");
    cfg.push_str(&store_table(&url));
    std::fs::write(c.config_path(), cfg).expect("write config");
    c.restart_control_plane();
    c.wait_caught_up_at(0);
    let list = c.leashctl(&["workload", "list"]);
    list.code(0);
    assert!(list.stdout.contains("ci/job"), "{list}");
    assert_eq!(c.lease(&first.lease_id)["state"], "active");
    assert_eq!(c.lease(&revoked.lease_id)["state"], "revoked");
    assert!(c.audit().len() >= events_before, "the audit log came along");
    // The sealed secret opens with the same master key, fetched for the first time now.
    let got = c.leash(&["get", "db-pw", "--as", "ci/job"]);
    got.code(0);
    assert_eq!(got.stdout.trim_end_matches('\n'), SECRET);
    // New writes carry on from the copied sequence.
    c.my_workload("ci/other", "team-ci", &["api"]);
    c.get("api", &["--as", "ci/other"]);

    // Status on postgres: reachable; once the database is down, exit 5.
    let st = control_plane(&["status"], c.config_path());
    st.code(0);
    assert_eq!(st.json()["store"]["kind"], "postgres", "{st}");
    assert_eq!(st.json()["store"]["reachable"], true, "{st}");
    pg.stop();
    let st = control_plane(&["status"], c.config_path());
    st.code(5);
    let j: serde_json::Value = serde_json::from_str(&st.stdout).expect("status prints JSON");
    assert_eq!(j["store"]["reachable"], false, "{st}");
    assert!(j["store"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("cannot reach PostgreSQL")));
    assert!(!st.stdout.contains(STORE_PW) && !st.stderr.contains(STORE_PW));
    pg.restart();
}

/// `/healthz` names the store and whether it answers: 200 with `reachable: true`, then
/// 503 with `reachable: false` while the database is down, and 200 again once it is back.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn healthz_names_the_store_and_is_unavailable_while_the_database_is_down() {
    leash_tests::require_root();
    if leash_tests::sled_only("it brings its own database") {
        return;
    }
    let mut pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let c = Cluster::with(Options::default().config(&format!(
        "{}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        store_table(&url)
    )));
    let ca = crate::oidc::ca_file(&c);
    let h = crate::oidc::curl(&c, &ca, "/healthz", &[], None);
    assert_eq!(h.status, 200, "{h:?}");
    let j = h.json();
    assert_eq!(j["status"], "ok", "{j}");
    assert_eq!(j["store"]["kind"], "postgres", "{j}");
    assert_eq!(j["store"]["reachable"], true, "{j}");

    pg.stop();
    let h = crate::oidc::curl(&c, &ca, "/healthz", &[], None);
    assert_eq!(h.status, 503, "{h:?}");
    let j = h.json();
    assert_eq!(j["status"], "unavailable", "{j}");
    assert_eq!(j["store"]["reachable"], false, "{j}");

    pg.restart();
    let back = c.eventually("/healthz answers 200 again", || {
        let h = crate::oidc::curl(&c, &ca, "/healthz", &[], None);
        (h.status == 200).then_some(h)
    });
    assert_eq!(back.json()["store"]["reachable"], true);
}
