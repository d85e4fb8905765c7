//! The control plane on the PostgreSQL store (`[store] kind = "postgres"`): issuance,
//! revocation with the wipe acknowledged, state kept across a `kill -9`, the schema
//! recorded in `schema_migrations`, a newer schema refused at start, and a URL that is
//! never printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leash_tests::pg::Pg;
use leash_tests::process::{bin, Daemon};
use leash_tests::{Cluster, Options};

use crate::API_AUD;

/// The store role's password: must never appear in any output.
const STORE_PW: &str = "st0re-Secret-pw-91ad";

/// A database `leash` owned by the login role `leash_store`; its URL over the socket,
/// written to `dir/pg.url` (0600). Returns the file.
pub(crate) fn store_database(pg: &Pg, dir: &Path) -> std::path::PathBuf {
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

pub(crate) fn store_config(url_file: &Path) -> String {
    format!(
        "[store]\nkind = \"postgres\"\nurl_file = {:?}\n",
        url_file.display().to_string()
    )
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
        pg.sql(
            "leash",
            "SELECT string_agg(version::text, ',') FROM schema_migrations"
        ),
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
    let out = c.leashctl(&[
        "revoke",
        "--lease",
        &first.lease_id,
        "--wait",
        "--timeout",
        "20s",
    ]);
    out.code(0);
    assert!(out.stdout.contains("wiped on 1/1 hosts"), "{out}");
    let again = c.get("api", &["--as", "w1"]);
    assert_ne!(
        again.lease_id, first.lease_id,
        "the revoked lease is not served"
    );

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
        stderr
            .contains("schema is at version 999, newer than this control plane knows (version 1)"),
        "{stderr}"
    );
    assert!(!stderr.contains(STORE_PW), "{stderr}");
    assert_eq!(
        pg.sql(
            "leash",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'kv'"
        ),
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

/// A replica's own directories and config, on the store of `url_file`, named `name`
/// under `dir`, with the master key `key`, on the test clock `clock_file` if given.
/// and agents' `max_offline`. Returns the command to start it and its admin socket.
pub(crate) fn replica_command(
    name: &str,
    dir: &Path,
    url_file: &Path,
    key: Key<'_>,
    clock_file: Option<&Path>,
    max_offline: &str,
) -> (Command, PathBuf) {
    let data = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let admin = dir.join(format!("{name}-run/admin.sock"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\ntrust_domain = \"{}\"\nheartbeat = \"1s\"\nmax_offline = \"{max_offline}\"\n{}",
            data.display().to_string(),
            admin.display().to_string(),
            leash_tests::TRUST_DOMAIN,
            store_config(url_file)
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("LEASH_LOG", "info")
        .env_remove("LEASH_ADMIN_SOCKET")
        .env_remove("LEASH_MASTER_KEY");
    match key {
        Key::Env(hex) => {
            cmd.env("LEASH_MASTER_KEY", hex);
        }
        Key::CopyFrom(from) => {
            std::fs::copy(from.join("master.key"), data.join("master.key"))
                .expect("copy the master key");
        }
    }
    if let Some(f) = clock_file {
        cmd.env(leash_proto::clock::TEST_CLOCK_ENV, f);
    }
    (cmd, admin)
}

/// Where a replica's master key comes from.
pub(crate) enum Key<'a> {
    /// `$LEASH_MASTER_KEY` (64 hex digits).
    Env(&'a str),
    /// A copy of the key file of this data directory.
    CopyFrom(&'a Path),
}

/// Wait for a started replica to listen; its `https://` address.
pub(crate) fn address(d: &mut Daemon) -> String {
    let line = d.wait_for_line("listening on ", Duration::from_secs(30));
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .to_string();
    format!("https://{addr}")
}

/// A second control plane (replica) on the same database and master key as `c`, with
/// its own data dir, admin socket and port, on `c`'s test clock. Returns it and its
/// address.
fn start_replica(c: &Cluster, url_file: &Path, dir: &Path) -> (Daemon, String, PathBuf) {
    let (cmd, admin) = replica_command(
        "replica",
        dir,
        url_file,
        Key::CopyFrom(&c.data_dir),
        Some(&c.dir().join("clock-offset-ms")),
        "8s",
    );
    let mut d = Daemon::spawn("replica B", cmd);
    let addr = address(&mut d);
    (d, addr, admin)
}

/// Two replicas on one database: a change committed on either reaches the agents of
/// both, an issuance through either is recorded once, and a revocation made on one
/// replica wipes the lease on an agent connected to the other.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn two_replicas_share_changes_issuances_and_revocations() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(Options::default().config(&store_config(&url)));
    let (mut b, b_url, b_admin) = start_replica(&c, &url, tmp.path());
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    let ctl_b = |args: &[&str]| {
        let mut cmd = c.leashctl_command();
        cmd.env("LEASH_ADMIN_SOCKET", &b_admin).args(args);
        c.run(cmd)
    };
    // A workload added on A reaches the agent on B (my_workload waits on every agent).
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    // One added on B reaches the agent on A.
    let uid = format!("unix:uid:{}", leash_tests::my_uid());
    ctl_b(&[
        "workload",
        "add",
        "w2",
        "--owner",
        "team-b",
        "--kind",
        "job",
        "--selector",
        &uid,
        "--allow",
        "api",
    ])
    .code(0);
    c.wait_visible(0, "w2");
    // Issuance through B, seen from A.
    let held = c.get_at(on_b, "api", &["--as", "w1"]);
    assert_eq!(c.lease(&held.lease_id)["state"], "active");
    // Revoked on A: the agent on B wipes it and gets a new lease.
    c.leashctl(&["revoke", "--lease", &held.lease_id]).code(0);
    leash_tests::wait_until(
        "the agent on replica B wiped the lease revoked on replica A",
        Duration::from_secs(10),
        || c.logs_dump(),
        || {
            let f = c.get_at(on_b, "api", &["--as", "w1"]);
            (f.lease_id != held.lease_id).then_some(())
        },
    );
    let out = ctl_b(&["lease", "show", &held.lease_id]);
    assert!(out.ok().contains("revoked"), "{out}");
    b.kill9();
}

/// `revoke --wait` on one replica completes when an agent connected to the other
/// replica wipes: its wipe ack, recorded there, is seen here.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn revoke_wait_on_one_replica_counts_the_wipe_of_an_agent_on_the_other() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(Options::default().no_agent().config(&store_config(&url)));
    let (mut b, b_url, _) = start_replica(&c, &url, tmp.path());
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let held = c.get_at(on_b, "api", &["--as", "w1"]);
    let out = c.leashctl(&[
        "revoke",
        "--lease",
        &held.lease_id,
        "--wait",
        "--timeout",
        "20s",
    ]);
    out.code(0);
    assert!(out.stdout.contains("wiped on 1/1 hosts"), "{out}");
    let again = c.get_at(on_b, "api", &["--as", "w1"]);
    assert_ne!(
        again.lease_id, held.lease_id,
        "the revoked lease is not served"
    );
    b.kill9();
}

/// The database down: a write is answered unavailable (exit 5), never as done, and is
/// not recorded; once it is back, the same control plane writes again without a restart.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_database_outage_is_unavailable_and_the_store_reconnects() {
    leash_tests::require_root();
    let mut pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let c = Cluster::with(Options::default().config(&store_config(&url)));
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let before = c.get("api", &["--as", "w1"]);
    pg.stop();
    let uid = format!("unix:uid:{}", leash_tests::my_uid());
    let add = |name: &str| {
        c.leashctl(&[
            "workload",
            "add",
            name,
            "--owner",
            "team-b",
            "--kind",
            "job",
            "--selector",
            &uid,
        ])
    };
    let out = add("w-during");
    out.code(5);
    assert!(out.stderr.contains("PostgreSQL"), "{out}");
    pg.restart();
    leash_tests::wait_until(
        "the control plane writes again after the database restarted",
        Duration::from_secs(20),
        || c.logs_dump(),
        || (add("w-after").code == 0).then_some(()),
    );
    let list = c.leashctl(&["workload", "list"]);
    assert!(list.ok().contains("w-after"), "{list}");
    assert!(
        !list.stdout.contains("w-during"),
        "an unacknowledged write was recorded: {list}"
    );
    // Reads carry on too: every reader connection that went down with the database is
    // replaced at its next read, which still answers.
    for _ in 0..12 {
        let lease = c.lease(&before.lease_id);
        assert_eq!(lease["state"], "active", "{lease}");
    }
    // Issuance and the agent's stream carry on.
    c.wait_visible(0, "w-after");
}

/// Two replicas writing at once: every change committed on either reaches the agents of
/// both, each under its own sequence number, in the order they were committed (the
/// batch lock makes sequence order commit order), so no agent skips one.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn concurrent_writers_on_two_replicas_are_sequenced_in_commit_order() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(Options::default().config(&store_config(&url)));
    let (mut b, b_url, b_admin) = start_replica(&c, &url, tmp.path());
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    let uid = format!("unix:uid:{}", leash_tests::my_uid());
    const EACH: usize = 15;
    std::thread::scope(|scope| {
        for (side, admin) in [("a", None), ("b", Some(&b_admin))] {
            for t in 0..3 {
                let (c, uid) = (&c, &uid);
                scope.spawn(move || {
                    for i in (t..EACH).step_by(3) {
                        let name = format!("w-{side}-{i}");
                        let mut cmd = c.leashctl_command();
                        if let Some(a) = admin {
                            cmd.env("LEASH_ADMIN_SOCKET", a);
                        }
                        cmd.args([
                            "workload",
                            "add",
                            &name,
                            "--owner",
                            "team",
                            "--kind",
                            "job",
                            "--selector",
                            uid,
                        ]);
                        c.run(cmd).code(0);
                    }
                });
            }
        }
    });
    for side in ["a", "b"] {
        for i in 0..EACH {
            let name = format!("w-{side}-{i}");
            c.wait_visible(0, &name);
            c.wait_visible(on_b, &name);
        }
    }
    // Each change under its own number, the last one the counter.
    let (count, distinct, max): (String, String, String) = {
        let r = pg.sql(
            "leash",
            "SELECT count(*) || ',' || count(DISTINCT key) || ',' || \
             coalesce(max(('x' || encode(key, 'hex'))::bit(64)::bigint), 0) \
             FROM kv WHERE tree = 'log'",
        );
        let v: Vec<&str> = r.split(',').collect();
        (v[0].into(), v[1].into(), v[2].into())
    };
    assert_eq!(count, distinct);
    assert!(
        count.parse::<usize>().expect("count") >= 2 * EACH,
        "{count}"
    );
    let seq = pg.sql(
        "leash",
        "SELECT ('x' || encode(value, 'hex'))::bit(64)::bigint FROM kv WHERE tree = 'meta' AND key = convert_to('seq', 'UTF8')",
    );
    assert_eq!(seq, max, "the sequence counter is the newest change");
    // The agent of replica B, stopped while B commits one more change, resumes from its
    // sequence on replica A and gets it.
    c.stop_agent_at(on_b);
    let mut cmd = c.leashctl_command();
    cmd.env("LEASH_ADMIN_SOCKET", &b_admin).args([
        "workload",
        "add",
        "w-late",
        "--owner",
        "team",
        "--kind",
        "job",
        "--selector",
        &uid,
    ]);
    c.run(cmd).code(0);
    b.kill9();
    c.start_agent_at(on_b);
    c.wait_visible(on_b, "w-late");
}

/// `--check-config` of a postgres store checks that its URL can be read (without
/// contacting the database) and names what to do when it cannot.
#[test]
fn check_config_needs_a_readable_store_url() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("cp.toml");
    let check = |text: &str, url_env: Option<&str>| {
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nadmin_socket = {:?}\n{text}",
                tmp.path().join("data").display().to_string(),
                tmp.path().join("admin.sock").display().to_string(),
            ),
        )
        .expect("write config");
        let mut cmd = Command::new(bin("leash-control-plane"));
        cmd.args(["serve", "--config"])
            .arg(&config)
            .arg("--check-config")
            .env_remove("LEASH_STORE_URL");
        if let Some(u) = url_env {
            cmd.env("LEASH_STORE_URL", u);
        }
        leash_tests::process::run(cmd, None, Duration::from_secs(20))
    };
    let out = check("[store]\nkind = \"postgres\"\n", None);
    out.code(1);
    out.stderr_has(&["LEASH_STORE_URL", "url_file"]);
    let missing = tmp.path().join("nope.url");
    let out = check(&store_config(&missing), None);
    out.code(1);
    out.stderr_has(&[&missing.display().to_string()]);
    let out = check(
        "[store]\nkind = \"postgres\"\n",
        Some("postgresql://u:pw-not-shown@127.0.0.1:1/db"),
    );
    out.code(0);
    assert!(!out.stderr.contains("pw-not-shown"), "{out}");
    let out = check("[store]\nkind = \"mysql\"\n", None);
    out.code(1);
    out.stderr_has(&["store.kind", "\"sled\" or \"postgres\""]);
}

/// An Issue through replica B racing the disabling of its workload on replica A, many
/// times: every Issue either is refused or gets a lease that the revocation covers
/// (revoked in the store, and never served by the agent afterwards).
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn an_issue_on_one_replica_racing_a_revocation_on_the_other_never_escapes_it() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(Options::default().no_agent().config(&store_config(&url)));
    let (mut b, b_url, _) = start_replica(&c, &url, tmp.path());
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let (mut issued, mut refused) = (0, 0);
    for round in 0..20 {
        let (got, _) = std::thread::scope(|scope| {
            let get =
                scope.spawn(|| c.leash_at(on_b, &["get", "api", "--as", "w1", "--output", "json"]));
            let disable = scope.spawn(|| {
                // A different head start each round, so the two meet in every order.
                std::thread::sleep(Duration::from_millis((round % 5) * 3));
                c.leashctl(&["workload", "disable", "w1", "--reason", "race"])
            });
            (
                get.join().expect("get"),
                disable.join().expect("disable").code(0).clone(),
            )
        });
        if got.code == 0 {
            issued += 1;
            let lease = got.json()["lease_id"]
                .as_str()
                .expect("lease id")
                .to_string();
            let state = c.lease(&lease)["state"].clone();
            assert_eq!(
                state, "revoked",
                "round {round}: lease {lease} escaped the revocation"
            );
        } else {
            refused += 1;
            assert_ne!(got.code, 0);
        }
        // Disabled: once the revocation is pushed, the agent serves nothing of w1,
        // whatever it held.
        leash_tests::wait_until(
            &format!("round {round}: the agent on replica B stops serving w1"),
            Duration::from_secs(10),
            || c.logs_dump(),
            || {
                let after = c.leash_at(on_b, &["get", "api", "--as", "w1", "--output", "json"]);
                (after.code != 0).then_some(())
            },
        );
        c.leashctl(&["workload", "enable", "w1"]).code(0);
        c.wait_visible(on_b, "w1");
    }
    eprintln!("issued then revoked: {issued}, refused: {refused}");
    b.kill9();
}

/// An agent given both replicas' addresses: when the replica it talks to is killed
/// (`kill -9`), it reconnects to the other, resumes, and a revocation made there wipes
/// what it held; it is served again from the survivor.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn an_agent_fails_over_to_the_other_replica_and_gets_its_revocations() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(
        Options::default()
            .no_agent()
            .heartbeat("200ms")
            .config(&store_config(&url)),
    );
    let (mut b, b_url, b_admin) = start_replica(&c, &url, tmp.path());
    let token = c.join_token(&[]);
    let both = format!("{},{b_url}", c.agent_url());
    let agent = c.add_agent_at("host-ha", &token, &both);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let held = c.get_at(agent, "api", &["--as", "w1"]);
    let killed = std::time::Instant::now();
    c.kill_control_plane();
    let mut cmd = c.leashctl_command();
    cmd.env("LEASH_ADMIN_SOCKET", &b_admin).args([
        "revoke",
        "--lease",
        &held.lease_id,
        "--wait",
        "--timeout",
        "30s",
    ]);
    let out = c.run(cmd);
    out.code(0);
    assert!(out.stdout.contains("wiped on 1/1 hosts"), "{out}");
    let fresh = c.get_at(agent, "api", &["--as", "w1"]);
    assert_ne!(
        fresh.lease_id, held.lease_id,
        "the revoked lease is not served"
    );
    eprintln!(
        "kill -9 of replica A to a fresh lease through replica B: {} ms",
        killed.elapsed().as_millis()
    );
    b.kill9();
}

/// `host list` on either replica shows the hosts connected to the other as connected
/// (each replica marks its hosts seen in the store), and no longer once they left.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn host_list_on_one_replica_shows_the_hosts_connected_to_the_other() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(
        Options::default()
            .max_offline("8s")
            .config(&store_config(&url)),
    );
    let (mut b, b_url, b_admin) = start_replica(&c, &url, tmp.path());
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    fn connected(c: &Cluster, admin: Option<&Path>, host: &str) -> bool {
        let mut cmd = c.leashctl_command();
        if let Some(a) = admin {
            cmd.env("LEASH_ADMIN_SOCKET", a);
        }
        cmd.args(["host", "list", "--output", "json"]);
        let v = c.run(cmd).json();
        v.as_array()
            .or_else(|| v["hosts"].as_array())
            .expect("a list")
            .iter()
            .find(|h| h["name"] == host)
            .map(|h| h["connected"] == true)
            .unwrap_or_else(|| panic!("{host} not listed: {v}"))
    }
    // Connected to B, listed as connected on A, and the other way round.
    assert!(connected(&c, None, "host-1"));
    assert!(connected(&c, None, "host-b"));
    assert!(connected(&c, Some(&b_admin), "host-1"));
    // Still so after several marking intervals (2 s here).
    std::thread::sleep(Duration::from_secs(5));
    assert!(connected(&c, None, "host-b"));
    // Gone: no longer connected, on either, within two intervals.
    c.stop_agent_at(on_b);
    leash_tests::wait_until(
        "host-b, stopped, is not listed as connected on replica A",
        Duration::from_secs(15),
        || c.logs_dump(),
        || (!connected(&c, None, "host-b")).then_some(()),
    );
    assert!(!connected(&c, Some(&b_admin), "host-b"));
    b.kill9();
}
