//! PostgreSQL roles per lease (credential kind `postgres`) against a real, throwaway
//! PostgreSQL server started by the harness (`leash_tests::pg`): the role a lease gets,
//! its grants as seen by a real client (`psql`), its drop (sessions cut) at revoke,
//! expiry and task end, bad definitions refused at `credential add`, the database down
//! at Issue, hostile names, `credential show|remove`, and the admin connection string
//! never shown, logged or stored in plain text.

use std::time::Duration;

use leash_tests::pg::Pg;
use leash_tests::process::Daemon;
use leash_tests::{files_under, wait_until, Cluster};

/// The admin role's password (also the needle for leaks).
pub(crate) const ADMIN_PW: &str = "adm1n-Secret-pw-4c1e";
pub(crate) const GRANT_READ: &str =
    "read=GRANT USAGE ON SCHEMA app TO {{name}}; GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{name}}";
pub(crate) const GRANT_WRITE: &str = "write=GRANT USAGE ON SCHEMA app TO {{name}}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {{name}}";

/// The harness's server takes the docs' least-privilege admin, refuses a wrong password
/// over TCP, and is gone when dropped.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_throwaway_server_authenticates_like_a_real_one() {
    leash_tests::require_root();
    let pg = Pg::start();
    let admin = pg.app_database("adm1n-pw");
    assert!(admin.contains("leash_admin:adm1n-pw@"), "{admin}");
    let as_admin = |url: &str| {
        pg.server_command("psql")
            .args([
                "-X",
                "-A",
                "-t",
                url,
                "-c",
                "SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user",
            ])
            .output()
            .expect("psql")
    };
    let ok = as_admin(&pg.tcp_url("leash_admin", "adm1n-pw", "app"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "t");
    let bad = as_admin(&pg.tcp_url("leash_admin", "wrong", "app"));
    assert!(!bad.status.success(), "a wrong password was accepted");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "the server's temp dir is left behind");
}

/// A server with database `app`, and a cluster whose workload `ci/job` may get `app-db`.
/// Returns the admin URL over the socket.
pub(crate) fn setup() -> (Pg, Cluster, String) {
    leash_tests::require_root();
    let pg = Pg::start();
    let admin = pg.app_database(ADMIN_PW);
    let c = Cluster::start();
    c.remember_secret(ADMIN_PW);
    c.my_workload("ci/job", "team-ci", &["app-db"]);
    (pg, c, admin)
}

/// `leashctl credential add NAME --kind postgres --connection-file - ARGS` with `dsn`
/// on stdin.
pub(crate) fn add(
    c: &Cluster,
    name: &str,
    dsn: &str,
    args: &[&str],
) -> leash_tests::process::Output {
    let mut a = vec![
        "credential",
        "add",
        name,
        "--kind",
        "postgres",
        "--connection-file",
        "-",
        "--ttl",
        "15m",
    ];
    a.extend_from_slice(args);
    c.leashctl_stdin(&a, dsn)
}

/// `app-db` with the read and write grants; must succeed.
pub(crate) fn add_app_db(c: &Cluster, dsn: &str) {
    add(
        c,
        "app-db",
        dsn,
        &["--grant", GRANT_READ, "--grant", GRANT_WRITE],
    )
    .code(0);
}

/// What a client gets for a postgres lease: the material document and the lease id.
/// (The material is the document itself, or its text in `token`.)
pub(crate) fn issue(c: &Cluster, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["get", "app-db", "--output", "json"];
    args.extend_from_slice(extra);
    let j = c.leash(&args).json();
    let m = if j.get("password").is_some() {
        j.clone()
    } else {
        serde_json::from_str(j["token"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("no postgres material in {j}: {e}"))
    };
    let password = m["password"].as_str().expect("password");
    assert_eq!(password.len(), 43, "32 random bytes, URL-safe base64");
    c.remember_secret(password);
    let lease = j["lease_id"].as_str().expect("lease id").to_string();
    (m, lease)
}

/// Run `sql` as the lease's role through a real client (`psql` with the lease's URL).
pub(crate) fn as_role(pg: &Pg, m: &serde_json::Value, sql: &str) -> std::process::Output {
    pg.server_command("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(m["url"].as_str().expect("url"))
        .args(["-c", sql])
        .output()
        .expect("run psql")
}

pub(crate) fn role_exists(pg: &Pg, role: &str) -> bool {
    pg.sql(
        "app",
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"),
    ) == "1"
}

fn role_comment(pg: &Pg, role: &str) -> String {
    pg.sql(
        "app",
        &format!(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{role}'"
        ),
    )
}

pub(crate) fn wait_role_gone(c: &Cluster, pg: &Pg, role: &str) {
    c.eventually(&format!("role {role} is dropped"), || {
        (!role_exists(pg, role)).then_some(())
    });
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_lease_gets_a_role_with_its_grants_and_revoke_drops_it_and_cuts_its_sessions() {
    let (pg, c, admin) = setup();
    // The revoke statement runs before each drop (here it leaves a trace).
    add(
        &c,
        "app-db",
        &admin,
        &[
            "--grant",
            GRANT_READ,
            "--grant",
            GRANT_WRITE,
            "--revoke-sql",
            "INSERT INTO app.items SELECT max(id) + 1, 'dropped until ' || {{expiration}} FROM app.items",
        ],
    )
    .code(0);
    let (read, lease) = issue(&c, &[]);
    let role = read["user"].as_str().expect("user").to_string();
    let lease_part = lease.replace('-', "_");
    assert_eq!(role, format!("leash_ci_job_{lease_part}"));
    assert_eq!(
        (read["dbname"].as_str(), read["port"].as_u64()),
        (Some("app"), Some(u64::from(pg.port())))
    );
    let comment = role_comment(&pg, &role);
    assert!(
        comment.starts_with(&format!(
            "leash-managed lease={lease} credential=app-db created="
        )),
        "{comment}"
    );
    // The role logs in with its password and reads, but may not write under `read`.
    let sel = as_role(&pg, &read, "SELECT name FROM app.items WHERE id = 1");
    assert!(
        sel.status.success(),
        "{}",
        String::from_utf8_lossy(&sel.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&sel.stdout).trim(), "one");
    let ins = as_role(&pg, &read, "INSERT INTO app.items VALUES (2, 'two')");
    assert!(!ins.status.success(), "read may insert");
    assert!(
        String::from_utf8_lossy(&ins.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );
    // A wrong password is refused: the role has a real password.
    let mut wrong = read.clone();
    wrong["url"] = read["url"]
        .as_str()
        .unwrap_or_default()
        .replace(
            read["password"].as_str().unwrap_or_default(),
            "not-the-password",
        )
        .into();
    assert!(
        !as_role(&pg, &wrong, "SELECT 1").status.success(),
        "a wrong password logged in"
    );
    // Under `write`, another role, which may insert.
    let (write, write_lease) = issue(&c, &["--action", "write"]);
    assert_ne!(write["user"], read["user"]);
    let ins = as_role(&pg, &write, "INSERT INTO app.items VALUES (2, 'two')");
    assert!(
        ins.status.success(),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );
    // An action with no grant is refused before policy (denied, as for a secret), creating
    // nothing.
    let out = c.leash(&["get", "app-db", "--action", "admin"]);
    out.code(2)
        .stderr_has(&["serves only the actions read, write"]);
    // An open session of the read role is cut when its lease is revoked.
    let mut cmd = pg.server_command("psql");
    cmd.args(["-X", "-A", "-t"])
        .arg(read["url"].as_str().unwrap_or_default())
        .args(["-c", "SELECT pg_sleep(60)"]);
    let mut session = Daemon::spawn("psql session", cmd);
    c.eventually("the role's session is open", || {
        (pg.sql(
            "app",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"),
        ) == "1")
            .then_some(())
    });
    c.leashctl(&["revoke", "--lease", &lease]).code(0);
    wait_role_gone(&c, &pg, &role);
    let code = session.wait_exit(Duration::from_secs(10));
    assert_ne!(code, 0, "the session ran on after its role was dropped");
    assert!(
        role_exists(&pg, write["user"].as_str().unwrap_or_default()),
        "the other lease's role was dropped"
    );
    assert!(
        !as_role(&pg, &read, "SELECT 1").status.success(),
        "the dropped role logs in"
    );
    // The revoke statement ran once, for the dropped role; the table is otherwise as
    // the roles left it.
    assert_eq!(
        pg.sql(
            "app",
            "SELECT count(*) FROM app.items WHERE name LIKE 'dropped until %'"
        ),
        "1"
    );
    assert_eq!(pg.sql("app", "SELECT count(*) FROM app.items"), "3");
    let _ = write_lease;
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_lease_timeline_names_the_role_created_and_dropped() {
    let (pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let (m, lease) = issue(&c, &[]);
    let role = m["user"].as_str().unwrap_or_default().to_string();
    c.leashctl(&["revoke", "--lease", &lease]).code(0);
    wait_role_gone(&c, &pg, &role);
    let events = c.eventually("role-dropped is recorded", || {
        let ev: Vec<_> = c
            .audit()
            .into_iter()
            .filter(|e| e["lease"] == lease.as_str())
            .collect();
        ev.iter().any(|e| e["type"] == "role-dropped").then_some(ev)
    });
    let created = events
        .iter()
        .find(|e| e["type"] == "role-created")
        .unwrap_or_else(|| panic!("no role-created in {events:?}"));
    assert_eq!(created["detail"]["role"], role.as_str());
    assert_eq!(created["detail"]["database"], "app");
    assert_eq!(created["detail"]["grant"], "read");
    let dropped = events
        .iter()
        .find(|e| e["type"] == "role-dropped")
        .expect("dropped");
    assert_eq!(dropped["detail"]["role"], role.as_str());
    assert_eq!(dropped["detail"]["sessions_terminated"], 0);
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn expiry_and_the_end_of_a_task_drop_the_role() {
    let (pg, c, admin) = setup();
    add_app_db(&c, &admin);
    // A task: the role lives while the command runs and is dropped when it exits. A
    // hostile task name is only a name.
    let work = c.dir().join("task");
    std::fs::create_dir_all(&work).expect("work dir");
    let mut cmd = c.leash_command(0);
    cmd.current_dir(&work)
        .env_remove("LEASH_TASK")
        .args([
            "exec",
            "--task-name",
            "Robert = DROP TABLE app.items --",
            "--env",
            "DATABASE_URL=app-db",
            "--",
            "sh",
            "-c",
            r#"printf %s "$DATABASE_URL" > url.tmp && mv url.tmp url; while [ ! -e go ]; do sleep 0.05; done"#,
        ]);
    let mut job = Daemon::spawn("leash exec", cmd);
    let log = job.log();
    let text = wait_until(
        "the task wrote its DATABASE_URL",
        Duration::from_secs(20),
        || format!("leash exec:\n{}\n{}", log.text(), c.logs_dump()),
        || std::fs::read_to_string(work.join("url")).ok(),
    );
    // The URL (or, from an older client, the whole document).
    let user = if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        c.remember_secret(v["password"].as_str().unwrap_or_default());
        v["user"].as_str().unwrap_or_default().to_string()
    } else {
        let rest = text
            .strip_prefix("postgresql://")
            .expect("a postgresql:// URL");
        let (user, rest) = rest.split_once(':').expect("user:password");
        c.remember_secret(rest.split_once('@').map_or("", |p| p.0));
        user.to_string()
    };
    assert!(user.starts_with("leash_ci_job_l_"), "{user}");
    assert!(
        role_exists(&pg, &user),
        "the task's role does not exist while it runs"
    );
    std::fs::write(work.join("go"), "").expect("go");
    assert_eq!(job.wait_exit(Duration::from_secs(20)), 0);
    wait_role_gone(&c, &pg, &user);
    assert_eq!(
        pg.sql("app", "SELECT count(*) FROM app.items"),
        "1",
        "the table is intact"
    );

    // Expiry (after the task: moving the clock makes the agent re-sync first).
    let (m, lease) = issue(&c, &[]);
    let role = m["user"].as_str().unwrap_or_default().to_string();
    assert!(role_exists(&pg, &role));
    c.advance_clock(Duration::from_secs(16 * 60));
    c.eventually("the lease expired", || {
        (c.lease(&lease)["state"] == "expired").then_some(())
    });
    wait_role_gone(&c, &pg, &role);

    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn bad_definitions_are_refused_at_add_with_the_reason_and_never_echo_the_dsn() {
    let (mut pg, c, admin) = setup();
    pg.sql(
        "app",
        "CREATE ROLE weak_admin LOGIN PASSWORD 'weak-Secret-pw-77'",
    );
    c.remember_secret("weak-Secret-pw-77");
    let weak = pg.socket_url("weak_admin", "weak-Secret-pw-77", "app");
    let refused = |dsn: &str, args: &[&str], code: i32, words: &[&str]| {
        let out = add(&c, "app-db", dsn, args);
        out.code(code).stderr_has(words);
        assert!(
            !out.stderr.contains(ADMIN_PW) && !out.stderr.contains("weak-Secret-pw-77"),
            "{out}"
        );
        assert!(!out.stdout.contains(ADMIN_PW), "{out}");
    };
    let read = ["--grant", GRANT_READ];
    refused(
        &weak,
        &read,
        1,
        &[
            "role weak_admin lacks CREATEROLE",
            "ALTER ROLE weak_admin CREATEROLE",
        ],
    );
    refused(
        &admin,
        &["--grant", "write=GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{nmae}}"],
        1,
        &["unknown placeholder {{nmae}} in --grant write; the placeholders are {{name}}, {{password}}, {{expiration}}"],
    );
    refused(
        &admin,
        &[
            "--grant",
            GRANT_READ,
            "--role-template",
            &format!("{}_{{workload}}_{{lease}}", "x".repeat(40)),
        ],
        1,
        &["--role-template", "63"],
    );
    refused(
        &admin,
        &["--grant", GRANT_READ, "--role-template", "leash_{workload}"],
        1,
        &["{lease}"],
    );
    refused(
        &admin,
        &[
            "--grant",
            "read=GRANT SELECT ON app.no_such_table TO {{name}}",
        ],
        1,
        &["--grant read", "no_such_table", "rolled back"],
    );
    refused(&admin, &[], 1, &["--grant"]);
    refused("", &read, 1, &["empty"]);
    refused(
        &format!("nonsense {ADMIN_PW}"),
        &read,
        1,
        &["could not be parsed"],
    );
    refused(
        &format!(
            "postgresql://leash_admin:{ADMIN_PW}@127.0.0.1:{}",
            pg.port()
        ),
        &read,
        1,
        &["no database"],
    );
    // A wrong password is PostgreSQL's refusal (exit 1), an unreachable server exit 5
    // with where it tried.
    refused(
        &pg.tcp_url("leash_admin", "wrong-pw-1", "app"),
        &read,
        1,
        &["password authentication failed"],
    );
    let port = pg.port();
    pg.stop();
    refused(
        &pg.tcp_url("leash_admin", ADMIN_PW, "app"),
        &read,
        5,
        &[&format!("127.0.0.1:{port}")],
    );
    // Nothing was stored.
    c.leashctl(&["credential", "show", "app-db"]).code(4);
    // Never from argv.
    let out = c.leashctl(&[
        "credential",
        "add",
        "app-db",
        "--kind",
        "postgres",
        "--grant",
        GRANT_READ,
    ]);
    out.code(1).stderr_has(&["--connection-file"]);
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_database_down_at_issue_is_exit_5_and_no_lease() {
    let (mut pg, c, admin) = setup();
    add_app_db(&c, &admin);
    issue(&c, &[]);
    pg.stop();
    let out = c.leash(&["get", "app-db", "--action", "write"]);
    out.code(5);
    assert!(!out.stderr.contains(ADMIN_PW), "{out}");
    // The control plane answered: the message says the database is the problem, not it.
    assert!(out.stderr.contains("PostgreSQL"), "{out}");
    assert!(
        !out.stderr.contains("control plane is unreachable"),
        "{out}"
    );
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    let n = leases
        .as_array()
        .or_else(|| leases["leases"].as_array())
        .map_or(0, |l| l.iter().filter(|l| l["action"] == "write").count());
    assert_eq!(n, 0, "a lease was written: {leases}");
    pg.restart();
    let (m, _) = issue(&c, &["--action", "write"]);
    assert!(as_role(&pg, &m, "SELECT 1").status.success());
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn hostile_names_are_mapped_and_quoted_and_a_long_one_is_refused_clearly() {
    let (pg, c, admin) = setup();
    add_app_db(&c, &admin);
    // The most hostile name a workload may have: dots, dashes, capitals, a path.
    let evil = "Robert.DROP-TABLE_app.items/x--y";
    c.my_workload(evil, "team-ci", &["app-db"]);
    let (m, lease) = issue(&c, &["--as", evil]);
    let role = m["user"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        role,
        format!(
            "leash_robert_drop_table_app_items_x__y_{}",
            lease.replace('-', "_")
        )
    );
    assert!(role_exists(&pg, &role));
    assert!(as_role(&pg, &m, "SELECT count(*) FROM app.items")
        .status
        .success());
    assert_eq!(pg.sql("app", "SELECT count(*) FROM app.items"), "1");
    // A workload whose name makes the role name too long: refused with the fix.
    let long = format!("team/{}", "w".repeat(40));
    c.my_workload(&long, "team-ci", &["app-db"]);
    let out = c.leash(&["get", "app-db", "--as", &long]);
    out.code(1).stderr_has(&["bytes", "63", "--role-template"]);
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn show_hides_the_connection_and_remove_revokes_drops_and_deletes() {
    let (pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let (m, _lease) = issue(&c, &[]);
    let role = m["user"].as_str().unwrap_or_default().to_string();
    let show = c.leashctl(&["credential", "show", "app-db"]);
    show.code(0);
    let summary = format!(
        "leash_admin@{}:{}/app (unix socket)",
        pg.socket_dir().display(),
        pg.port()
    );
    assert!(show.stdout.contains(&summary), "{show}");
    assert!(show.stdout.contains("active leases: 1"), "{show}");
    assert!(show.stdout.contains("pending drops: 0"), "{show}");
    let j = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(j["connection_summary"], summary.as_str());
    assert_eq!(j["active_leases"], 1);
    assert_eq!(j["role_template"], "leash_{workload}_{lease}");
    assert_eq!(j["actions"], serde_json::json!(["read", "write"]));
    for args in [
        &["credential", "list", "--output", "json"][..],
        &["credential", "show", "app-db", "--output", "json"],
    ] {
        let out = c.leashctl(args);
        assert!(
            !out.stdout.contains(ADMIN_PW) && !out.stdout.contains("%2F"),
            "{out}"
        );
    }
    // `secret` commands are not for it.
    c.leashctl(&["secret", "show", "app-db"])
        .code(1)
        .stderr_has(&["app-db is a postgres credential", "leashctl credential"]);
    // Remove: refused while a lease is active, unless --yes; then the role is dropped
    // and the definition with its sealed connection string is gone.
    c.leashctl(&["credential", "remove", "app-db"])
        .code(1)
        .stderr_has(&["--yes"]);
    let out = c.leashctl(&["credential", "remove", "app-db", "--yes"]);
    out.code(0).stderr_has(&["1 lease(s) revoked"]);
    assert!(!role_exists(&pg, &role), "the role outlived the removal");
    c.leashctl(&["credential", "show", "app-db"]).code(4);
    let audit = c.audit();
    let removed = audit
        .iter()
        .find(|e| e["type"] == "credential-removed")
        .expect("credential-removed event");
    assert_eq!(removed["detail"]["kind"], "postgres");
    assert_eq!(removed["detail"]["versions"], 1);
    // Nothing holds the connection string: events, logs, the store's files.
    let text = serde_json::to_string(&audit).unwrap_or_default();
    assert!(
        !text.contains(ADMIN_PW),
        "the admin password is in an event"
    );
    assert!(!c.control_plane_log().contains(ADMIN_PW));
    c.assert_no_secret_leaked();
    // A jwt credential is removed the same way.
    c.credential("api", &["--audience", "https://api"]);
    c.leashctl(&["credential", "remove", "api"]).code(0);
    c.leashctl(&["credential", "show", "api"]).code(4);
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_sealed_connection_string_is_not_in_the_store_files() {
    let (_pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let (m, _) = issue(&c, &[]);
    c.remember_secret(&admin);
    assert!(m["password"].is_string());
    // assert_no_secret_leaked reads the control plane's data dir (the sled files) for
    // the admin password, the DSN and the role's password.
    c.assert_no_secret_leaked();
    assert!(
        !files_under(c.dir()).is_empty(),
        "the cluster has no files to look in"
    );
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_connection_survives_a_master_key_rotation_and_a_restart_and_can_be_replaced() {
    let (pg, mut c, admin) = setup();
    add_app_db(&c, &admin);
    let out = c.leashctl(&["key", "rotate-master"]);
    out.code(0);
    assert!(out.stdout.contains("re-wrapped"), "{out}");
    c.restart_control_plane();
    let (m, lease) = c.eventually("issued after the restart", || {
        let out = c.leash(&["get", "app-db", "--output", "json", "--fresh"]);
        (out.code == 0).then(|| issue(&c, &["--fresh"]))
    });
    assert!(as_role(&pg, &m, "SELECT 1").status.success());
    // A new connection string (here: over TCP) is version 2; new roles use it, and the
    // old lease's role is still dropped when it ends.
    add_app_db(&c, &pg.tcp_url("leash_admin", ADMIN_PW, "app"));
    let j = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(j["connection_version"], 2);
    assert_eq!(
        j["connection_summary"],
        format!("leash_admin@127.0.0.1:{}/app sslmode=disable", pg.port()).as_str()
    );
    let (tcp, _) = issue(&c, &["--fresh"]);
    assert_eq!(
        tcp["url"]
            .as_str()
            .map(|u| u.ends_with("/app?sslmode=disable")),
        Some(true)
    );
    assert!(as_role(&pg, &tcp, "SELECT 1").status.success());
    c.leashctl(&["revoke", "--lease", &lease]).code(0);
    wait_role_gone(&c, &pg, m["user"].as_str().unwrap_or_default());
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_grant_that_fails_at_issue_leaves_no_role_and_no_lease() {
    let (pg, c, admin) = setup();
    pg.sql(
        "app",
        "CREATE TABLE app.extra (id int); GRANT ALL ON app.extra TO leash_admin WITH GRANT OPTION",
    );
    add(
        &c,
        "app-db",
        &admin,
        &[
            "--grant",
            "read=GRANT USAGE ON SCHEMA app TO {{name}}; GRANT SELECT ON app.extra TO {{name}}",
        ],
    )
    .code(0);
    // The grant ran at add; the table goes away afterwards.
    pg.sql("app", "DROP TABLE app.extra");
    let out = c.leash(&["get", "app-db"]);
    out.code(1)
        .stderr_has(&["app.extra", "no role was left behind"]);
    let marked = pg.sql(
        "app",
        "SELECT count(*) FROM pg_shdescription WHERE description LIKE 'leash-managed %'",
    );
    assert_eq!(marked, "0", "a role was left behind");
    assert_eq!(
        pg.sql(
            "app",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'leash\\_ci\\_job\\_%'"
        ),
        "0"
    );
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    assert_eq!(leases.as_array().map(Vec::len), Some(0), "{leases}");
}

/// The reconciler's decisions, with the real kind, store and master key in this process
/// (the task that runs it at start and every few minutes belongs to the end queue):
/// a marked role whose lease was never written is dropped once it is two minutes old,
/// a role of an active lease is kept until the lease ends, and a role without the
/// marker, or with another credential's, is never touched.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_reconciler_drops_only_its_own_roles_whose_lease_is_not_active() {
    use leash_control_plane::clock::Clock;
    use leash_control_plane::config::{Config, FileConfig, Overrides};
    use leash_control_plane::keys::{Keys, MasterKey};
    use leash_control_plane::kinds::postgres::{self, Postgres};
    use leash_control_plane::kinds::{CredentialKind, Env, MintRequest};
    use leash_control_plane::model::{
        secret_aad, Credential, Event, Host, JoinTokenRecord, Lease, LeaseState, RevocationTarget,
        SecretVersion, Workload,
    };
    use leash_control_plane::store::{Older, SecretWrite, SledStore, Storage};
    use leash_proto::v1;

    leash_tests::require_root();
    let pg = Pg::start();
    let admin = pg.app_database(ADMIN_PW);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::default();
        let store = SledStore::open(dir.path(), clock.clone()).expect("store");
        let master = MasterKey::load_or_create(dir.path()).expect("master key");
        let keys = Keys::load_or_create(&*store, &master, "leash.test")
            .await
            .expect("keys");
        let config = Config::resolve(FileConfig::default(), Overrides::default()).expect("config");
        let env = Env {
            keys: &keys,
            master: &master,
            store: &*store,
            config: &config,
        };
        let mut grants = std::collections::HashMap::new();
        grants.insert("read".to_string(), GRANT_READ["read=".len()..].to_string());
        let def = postgres::check(
            &admin,
            &v1::Credential {
                name: "app-db".into(),
                kind: "postgres".into(),
                grants,
                ..Default::default()
            },
        )
        .await
        .expect("the definition checks");
        let cred = Credential {
            name: "app-db".into(),
            kind: "postgres".into(),
            default_ttl: 900,
            max_ttl: 3600,
            default_action: "read".into(),
            current_version: 1,
            postgres: Some(def),
            ..Default::default()
        };
        store
            .put_secret(SecretWrite {
                def: cred.clone(),
                expected: 0,
                version: SecretVersion {
                    version: 1,
                    created_at: clock.now(),
                    created_by: "test".into(),
                    size: admin.len() as u32,
                    fingerprint: String::new(),
                    sealed: master
                        .seal(&secret_aad("app-db", 1), admin.as_bytes())
                        .expect("seal"),
                },
                older: Older::Keep,
                event: Event::new("credential-added"),
            })
            .await
            .expect("stored");
        let workload = Workload {
            name: "ci/job".into(),
            owner: "team-ci".into(),
            kind: leash_proto::workload_kind::WorkloadKind::Job,
            selectors: vec!["unix:uid:0".into()],
            hosts: Default::default(),
            allow: vec![],
            expires_at: 0,
            disabled: false,
            created_at: 0,
            x509_svid_ttl: 0,
        };
        let token = JoinTokenRecord {
            id: "jt-h1".into(),
            secret_sha256: "x".into(),
            name: None,
            labels: Default::default(),
            created_at: 0,
            expires_at: i64::MAX,
            used_by: None,
            revoked: false,
        };
        store
            .put_join_token(token, Event::new("join-token"))
            .await
            .expect("token");
        let host = Host {
            name: "h1".into(),
            labels: Default::default(),
            enrolled_at: 0,
            last_seen: 0,
            evicted: false,
            cert_serial: "serial-h1".into(),
            cert_not_after: i64::MAX,
        };
        store
            .enroll("jt-h1", "x", host, 0, Event::new("enrolled"))
            .await
            .expect("enroll");
        store
            .put_workload(workload.clone(), Event::new("workload-added"))
            .await
            .expect("workload");
        let kind = Postgres::new(clock.clone());
        let now = clock.now();
        let mint = |id: &'static str| {
            let (kind, cred, workload) = (&kind, &cred, &workload);
            async move {
                let m = kind
                    .mint(
                        env,
                        MintRequest {
                            lease_id: id,
                            credential: cred,
                            workload,
                            host: "h1",
                            action: "read",
                            audience: "",
                            audiences: &[],
                            csr_der: &[],
                            scope: None,
                            ttl: 900,
                            task: None,
                            on_behalf_of: None,
                            now,
                        },
                    )
                    .await
                    .expect("minted");
                let doc: serde_json::Value =
                    serde_json::from_str(&m.material.into_token()).expect("json");
                doc["user"].as_str().expect("user").to_string()
            }
        };
        // One lease never written (a crash between the role and the lease write), one
        // active lease, a role made by hand, a role of another credential.
        let orphan = mint("l-00000000000000000001").await;
        let active = mint("l-00000000000000000002").await;
        let lease = Lease {
            id: "l-00000000000000000002".into(),
            workload: "ci/job".into(),
            credential: "app-db".into(),
            action: "read".into(),
            audience: String::new(),
            host: "h1".into(),
            task: None,
            on_behalf_of: None,
            approval: None,
            context: None,
            policy_version: 0,
            issued_at: clock.now(),
            expires_at: clock.now() + 3600,
            seq: 0,
            state: LeaseState::Active,
            reason: None,
            fingerprint: String::new(),
            ends_outside: true,
            version: 0,
            audiences: Vec::new(),
        };
        store
            .issue_lease(lease, Event::new("issued"), Vec::new())
            .await
            .expect("lease");
        pg.sql("app", "CREATE ROLE leash_ci_job_l_by_hand LOGIN");
        pg.sql(
            "app",
            "CREATE ROLE leash_other LOGIN; COMMENT ON ROLE leash_other IS 'leash-managed lease=l-00000000000000000009 credential=other-db created=0'",
        );
        // Too young to judge: the orphan may be a lease being written right now.
        assert_eq!(kind.reconcile(env, &cred).await.expect("reconcile"), vec![]);
        assert!(role_exists(&pg, &orphan));
        clock.advance_ms(3 * 60 * 1000);
        let undone = kind.reconcile(env, &cred).await.expect("reconcile");
        assert_eq!(undone.len(), 1, "{undone:?}");
        assert_eq!(undone[0].0, "l-00000000000000000001");
        assert_eq!(undone[0].1.kind, "role-dropped");
        assert_eq!(
            undone[0].1.detail,
            serde_json::json!({"role": orphan, "sessions_terminated": 0, "reconciled": true})
        );
        assert!(!role_exists(&pg, &orphan));
        for kept in [&active, "leash_ci_job_l_by_hand", "leash_other"] {
            assert!(role_exists(&pg, kept), "{kept} was dropped");
        }
        // Once the lease ends, its role goes too.
        store
            .revoke(
                RevocationTarget::Leases(vec!["l-00000000000000000002".into()]),
                "test".into(),
                "test".into(),
                vec![],
            )
            .await
            .expect("revoke");
        let undone = kind.reconcile(env, &cred).await.expect("reconcile");
        assert_eq!(undone.len(), 1, "{undone:?}");
        assert!(!role_exists(&pg, &active));
        assert!(role_exists(&pg, "leash_ci_job_l_by_hand") && role_exists(&pg, "leash_other"));
    });
}

/// The grant that scales: membership in a group role that holds the rights (one new row
/// per role, where a GRANT on a table rewrites that table's ACL, which concurrent Issues
/// then wait on).
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_grant_of_a_group_role_gives_its_rights() {
    // The harness's database has the group roles app_read and app_write, which
    // leash_admin may grant (Pg::app_database).
    let (pg, c, admin) = setup();
    add(
        &c,
        "app-db",
        &admin,
        &["--grant", "read=GRANT app_read TO {{name}}"],
    )
    .code(0);
    let (m, lease) = issue(&c, &[]);
    let sel = as_role(&pg, &m, "SELECT name FROM app.items");
    assert!(
        sel.status.success(),
        "{}",
        String::from_utf8_lossy(&sel.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&sel.stdout).trim(), "one");
    assert!(!as_role(&pg, &m, "DELETE FROM app.items").status.success());
    c.leashctl(&["revoke", "--lease", &lease]).code(0);
    wait_role_gone(&c, &pg, m["user"].as_str().unwrap_or_default());
    assert_eq!(pg.sql("app", "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname = 'app_read'"), "1", "only leash_admin is left a member");
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 in `dir`, readable by
/// the server: (CA file, certificate file, key file).
fn server_tls(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = p
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .expect("server certificate");
    let path = |n: &str| dir.join(n).display().to_string();
    std::fs::write(path("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(path("server.crt"), cert.pem()).expect("write");
    std::fs::write(path("server.key"), key.serialize_pem()).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(path("server.key"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let st = std::process::Command::new("chown")
        .args([
            "postgres:postgres",
            &path("server.key"),
            &path("server.crt"),
        ])
        .status()
        .expect("chown");
    assert!(st.success());
    (path("ca.pem"), path("server.crt"), path("server.key"))
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_admin_connection_uses_verified_tls_when_the_url_asks_for_it() {
    leash_tests::require_root();
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = server_tls(certs.path());
    let pg = Pg::start_with(&[
        "ssl = on",
        &format!("ssl_cert_file = '{cert}'"),
        &format!("ssl_key_file = '{key}'"),
    ]);
    pg.app_database(ADMIN_PW);
    let c = Cluster::start();
    c.remember_secret(ADMIN_PW);
    c.my_workload("ci/job", "team-ci", &["app-db"]);
    let url = |host: &str, tail: &str| {
        format!(
            "postgresql://leash_admin:{ADMIN_PW}@{host}:{}/app?sslmode=verify-full{tail}",
            pg.port()
        )
    };
    // A CA that did not sign the server's certificate: refused, saying why.
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = server_tls(other.path());
    let out = add(
        &c,
        "app-db",
        &url("localhost", &format!("&sslrootcert={other_ca}")),
        &["--grant", GRANT_READ],
    );
    out.code(5).stderr_has(&["localhost", "certificate"]);
    // The right CA: added, and the admin's sessions are encrypted.
    add(
        &c,
        "app-db",
        &url("localhost", &format!("&sslrootcert={ca}")),
        &["--grant", GRANT_READ],
    )
    .code(0);
    let j = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(
        j["connection_summary"],
        format!(
            "leash_admin@localhost:{}/app sslmode=verify-full",
            pg.port()
        )
        .as_str()
    );
    let (m, _) = issue(&c, &[]);
    assert_eq!(
        m["url"]
            .as_str()
            .map(|u| u.ends_with("/app?sslmode=verify-full")),
        Some(true),
        "{}",
        m["url"]
    );
    assert_eq!(
        pg.sql(
            "app",
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.usename = 'leash_admin'"
        ),
        "t",
        "the admin connection is not TLS"
    );
    c.assert_no_secret_leaked();
}

/// Concurrent Issues whose grants touch the same schema and tables collide in
/// PostgreSQL's catalog; each collision is run again, so every one gets its role.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn concurrent_issues_with_grants_on_the_same_tables_all_succeed() {
    let (pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let users: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| {
                            let (m, _) = issue(&c, &["--fresh"]);
                            m["user"].as_str().unwrap_or_default().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an issuing thread failed"))
            .collect()
    });
    assert_eq!(users.len(), 48);
    let marked = pg.sql(
        "app",
        "SELECT count(*) FROM pg_shdescription WHERE description LIKE 'leash-managed %'",
    );
    assert_eq!(marked, "48");
    c.assert_no_secret_leaked();
}
