//! Replicas of one PostgreSQL store beyond what they share through the change log: the
//! signing keys and CAs (a rotation on one replica is taken up by the others without a
//! restart, and replicas starting at once on an empty database make one set of keys).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use leash_tests::pg::Pg;
use leash_tests::process::{bin, Daemon};
use leash_tests::{Cluster, Options};

use crate::pg_store::{address, replica_command, store_config, store_database, Key};
use crate::API_AUD;

/// A little past `[keys] publish_ahead` (default 10 minutes).
const PAST_PUBLISH_AHEAD: Duration = Duration::from_secs(601);
/// Longer than the clock jumps, so agents do not fail closed when the clock moves.
const MAX_OFFLINE: &str = "2d";

/// `leashctl ARGS --output json` against the admin socket `admin`, which must succeed.
fn ctl_json(admin: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("leashctl"))
        .env("LEASH_ADMIN_SOCKET", admin)
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("run leashctl");
    assert!(
        out.status.success(),
        "leashctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// (kind, id, state) of every key, as `key list` on `admin` shows them.
fn key_states(admin: &Path) -> Vec<(String, String, String)> {
    ctl_json(admin, &["key", "list"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|k| {
            let s = |f: &str| k[f].as_str().expect(f).to_string();
            (s("kind"), s("id"), s("state"))
        })
        .collect()
}

/// The kids `leashctl jwks` on `admin` publishes.
fn jwks_kids(admin: &Path) -> Vec<String> {
    let out = Command::new(bin("leashctl"))
        .env("LEASH_ADMIN_SOCKET", admin)
        .arg("jwks")
        .output()
        .expect("run leashctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut kids: Vec<String> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect();
    kids.sort();
    kids
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("a kid")
}

/// A JWT key rotated on replica A is published by replica B within its poll, without a
/// restart; once `publish_ahead` has passed B signs with the new key and still
/// publishes the old one.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_key_rotated_on_one_replica_is_published_and_used_by_the_other() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (url, mut c) = replica_a(&pg, tmp.path(), Options::default().no_agent());
    let (mut b, b_url, b_admin) = replica_b(&c, tmp.path(), &url);
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let old = kid(&c.get_at(on_b, "api", &["--as", "w1"]).token);
    assert_eq!(jwks_kids(&b_admin), vec![old.clone()]);

    let v = c
        .leashctl(&["key", "rotate", "jwt", "--output", "json"])
        .json();
    let new = v["id"].as_str().expect("id").to_string();
    let mut both = vec![old.clone(), new.clone()];
    both.sort();
    c.eventually("replica B publishes the key rotated on replica A", || {
        (jwks_kids(&b_admin) == both).then_some(())
    });
    assert!(
        key_states(&b_admin).contains(&("jwt".into(), new.clone(), "next".into())),
        "{:?}",
        key_states(&b_admin)
    );
    assert_eq!(
        kid(&c.get_at(on_b, "api", &["--as", "w1", "--fresh"]).token),
        old,
        "a next key does not sign yet"
    );

    c.advance_clock(PAST_PUBLISH_AHEAD);
    c.eventually("the new key is active on replica B", || {
        key_states(&b_admin)
            .contains(&("jwt".into(), new.clone(), "active".into()))
            .then_some(())
    });
    assert_eq!(
        kid(&c.get_at(on_b, "api", &["--as", "w1", "--fresh"]).token),
        new,
        "replica B signs with the new key"
    );
    assert_eq!(jwks_kids(&b_admin), both, "B still publishes the old key");
    // Both replicas agree on every key and state.
    c.eventually("both replicas list the same keys", || {
        (key_states(&b_admin) == key_states(&c.admin_socket)).then_some(())
    });
    b.kill9();
}

/// Replicas started at once on an empty database make one CA and one JWT key between
/// them (the first to commit its keys wins; the others use them), in every round.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn replicas_starting_at_once_on_an_empty_database_make_one_ca_and_one_jwt_key() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = store_database(&pg, tmp.path());
    let master = "7e".repeat(32);
    for round in 0..8 {
        let url = if round == 0 {
            first.clone()
        } else {
            let db = format!("leash_r{round}");
            pg.sql(
                "postgres",
                &format!("CREATE DATABASE {db} OWNER leash_store"),
            );
            let file = tmp.path().join(format!("{db}.url"));
            let text = std::fs::read_to_string(&first).expect("url");
            let (base, _) = text
                .trim_end()
                .rsplit_once('/')
                .expect("a URL with a database");
            std::fs::write(&file, format!("{base}/{db}")).expect("write url");
            file
        };
        let dir = tmp.path().join(format!("round{round}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (ca, a_admin) = replica_command("a", &dir, &url, Key::Env(&master), None, MAX_OFFLINE);
        let (cb, b_admin) = replica_command("b", &dir, &url, Key::Env(&master), None, MAX_OFFLINE);
        let mut a = Daemon::spawn("replica A", ca);
        let mut b = Daemon::spawn("replica B", cb);
        address(&mut a);
        address(&mut b);
        let on_a = key_states(&a_admin);
        let on_b = key_states(&b_admin);
        for kind in ["jwt", "ca"] {
            let n = on_a.iter().filter(|(k, _, _)| k == kind).count();
            assert_eq!(n, 1, "round {round}: one {kind} key: {on_a:?}");
        }
        assert_eq!(
            on_a, on_b,
            "round {round}: both replicas hold the same keys"
        );
        let ids: Vec<&str> = on_a.iter().map(|(_, id, _)| id.as_str()).collect();
        let blobs = pg.sql(
            &url_db(&url),
            "SELECT convert_from(key, 'UTF8') FROM kv WHERE tree = 'blobs' ORDER BY 1",
        );
        assert_eq!(
            blobs
                .lines()
                .map(str::trim)
                .filter(|l| *l == "ca-key" || l.starts_with("ca-key-") || l.starts_with("jwt-key-"))
                .count(),
            2,
            "round {round}: one sealed CA and one sealed JWT key ({ids:?}): {blobs}"
        );
        a.kill9();
        b.kill9();
    }
}

/// Replica A: a cluster (control plane and, unless `options` says otherwise, one agent)
/// on a new store database of `pg`, its files under `dir`, on a clock that can be moved
/// without its agents failing closed: (the database URL file, the cluster).
fn replica_a(pg: &Pg, dir: &Path, options: Options) -> (std::path::PathBuf, Cluster) {
    let url = store_database(pg, dir);
    let c = Cluster::with(options.max_offline(MAX_OFFLINE).config(&store_config(&url)));
    (url, c)
}

/// Replica B of the cluster `c`'s store (database URL in `url`), on the cluster's clock
/// with the same master key, its files under `dir`: (the daemon, its agent URL, its
/// admin socket).
fn replica_b(c: &Cluster, dir: &Path, url: &Path) -> (Daemon, String, std::path::PathBuf) {
    let (cmd, admin) = replica_command(
        "b",
        dir,
        url,
        Key::CopyFrom(&c.data_dir),
        Some(&c.dir().join("clock-offset-ms")),
        MAX_OFFLINE,
    );
    let mut b = Daemon::spawn("replica B", cmd);
    let addr = address(&mut b);
    (b, addr, admin)
}

/// The database name in a socket URL file.
fn url_db(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("url");
    text.trim_end()
        .rsplit('/')
        .next()
        .expect("db")
        .trim()
        .to_string()
}

/// `kill -9` of the replica a `revoke --wait` waits on, in the middle of the wait: the
/// wait fails (unavailable), and `revoke --wait-seq SEQ` on the other replica waits
/// again on the same revocation and completes once the host wipes.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_revoke_wait_cut_by_killing_its_replica_completes_when_waited_again_on_another() {
    use std::io::BufRead;
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (url, c) = replica_a(&pg, tmp.path(), Options::default());
    let (mut b, _, b_admin) = replica_b(&c, tmp.path(), &url);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let held = c.get_at(0, "api", &["--as", "w1"]);

    // The agent (on replica A) cannot wipe yet: the wait on B stays open.
    c.signal_agent(0, nix::sys::signal::Signal::SIGSTOP);
    let mut wait = Command::new(bin("leashctl"))
        .env("LEASH_ADMIN_SOCKET", &b_admin)
        .args([
            "revoke",
            "--lease",
            &held.lease_id,
            "--wait",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run leashctl");
    let mut lines = std::io::BufReader::new(wait.stderr.take().expect("stderr")).lines();
    let mut next_line = |what: &str| -> String {
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("leashctl ended before {what}"))
                .expect("read stderr");
            if line.contains(what) {
                return line;
            }
        }
    };
    let line = next_line("at sequence ");
    let seq = line
        .split("at sequence ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .expect("a sequence")
        .to_string();
    next_line("wiped on 0/1 hosts");
    b.kill9();
    let status = wait.wait().expect("leashctl ends");
    assert_eq!(
        status.code(),
        Some(5),
        "the wait on the killed replica is unavailable"
    );

    c.signal_agent(0, nix::sys::signal::Signal::SIGCONT);
    let out = c.leashctl(&["revoke", "--wait-seq", &seq, "--timeout", "20s"]);
    out.code(0);
    assert!(out.stdout.contains("wiped on 1/1 hosts"), "{out}");
    println!(
        "revoke --wait-seq {seq} on the other replica:\n{}{}",
        out.stderr, out.stdout
    );
    let again = c.get_at(0, "api", &["--as", "w1"]);
    assert_ne!(
        again.lease_id, held.lease_id,
        "the revoked lease is not served"
    );

    // Waiting on a revocation that does not exist is not found; one with a target too
    // is a usage error.
    c.leashctl(&["revoke", "--wait-seq", "999999"]).code(4);
    c.leashctl(&["revoke", "--wait-seq", &seq, "--lease", &held.lease_id])
        .code(1);
}

/// The state of lease `id` as the replica behind `admin` reads it from the store.
fn lease_state(admin: &Path, id: &str) -> String {
    ctl_json(admin, &["lease", "show", id])["state"]
        .as_str()
        .expect("state")
        .to_string()
}

/// The background workers (here: expiry) run on one replica at a time. A replica
/// standing by does not run them; it takes them over when the leader freezes (the
/// database ends its silent lease connection) or is killed with `kill -9`, and a leader
/// that wakes from a freeze finds its lead gone and stops its workers.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_background_workers_run_on_one_replica_and_move_when_it_freezes_or_dies() {
    use std::time::Instant;
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (url, c) = replica_a(&pg, tmp.path(), Options::default());
    c.eventually("replica A leads", || {
        c.control_plane_log()
            .contains("this replica leads")
            .then_some(())
    });
    let (mut b, _, b_admin) = replica_b(&c, tmp.path(), &url);
    b.wait_for_line("this one stands by", Duration::from_secs(20));
    assert!(
        !b.log().text().contains("this replica leads"),
        "{}",
        b.log().text()
    );

    c.credential("api", &["--audience", API_AUD, "--ttl", "5m"]);
    c.my_workload("w1", "team-a", &["api"]);
    let held = c.get_at(0, "api", &["--as", "w1"]);
    assert_eq!(lease_state(&b_admin, &held.lease_id), "active");

    // A freezes while leading; the lease falls due. B stands by, so nothing expires it
    // until the database has ended A's silent connection and B took the lock.
    c.signal_control_plane(nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    c.advance_clock(Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lease_state(&b_admin, &held.lease_id),
        "active",
        "a replica standing by does not run the expiry worker"
    );
    b.wait_for_line("this replica leads", Duration::from_secs(30));
    let took_over = frozen.elapsed();
    c.eventually("the new leader expires the lease", || {
        (lease_state(&b_admin, &held.lease_id) == "expired").then_some(())
    });
    println!("B took the lead {took_over:?} after A froze");

    // A wakes, finds its lease connection ended, and stops leading.
    c.signal_control_plane(nix::sys::signal::Signal::SIGCONT);
    c.eventually("A steps down", || {
        c.control_plane_log()
            .contains("stopped leading the background workers")
            .then_some(())
    });
    c.eventually("A stands by", || {
        c.control_plane_log()
            .contains("this one stands by")
            .then_some(())
    });

    // B dies: A takes the lead back within a few tries, and its workers run.
    let second = c.get_at(0, "api", &["--as", "w1", "--fresh"]);
    b.kill9();
    let killed = Instant::now();
    c.eventually("A leads again", || {
        (c.control_plane_log().matches("this replica leads").count() == 2).then_some(())
    });
    let retaken = killed.elapsed();
    println!("A took the lead back {retaken:?} after kill -9 of B");
    assert!(
        retaken < Duration::from_secs(10),
        "a killed leader's lock is freed with its connection: {retaken:?}"
    );
    c.advance_clock(Duration::from_secs(600));
    c.eventually("A expires the second lease", || {
        (lease_state(&c.admin_socket, &second.lease_id) == "expired").then_some(())
    });
}

/// A crash of the database (`pg_ctl stop -m immediate`, then a start that replays the
/// WAL) while both replicas take writes and issue credentials: every write and every
/// issuance that was answered as done is there afterwards, every other answer is
/// unavailable (exit 5), nothing hangs, and both replicas write again without a restart.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_database_crash_under_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;
    leash_tests::require_root();
    let mut pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (url, mut c) = replica_a(&pg, tmp.path(), Options::default());
    let (mut b, b_url, b_admin) = replica_b(&c, tmp.path(), &url);
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let uid = format!("unix:uid:{}", leash_tests::my_uid());

    let stop = AtomicBool::new(false);
    // (what, answered at, exit code)
    let answers: Mutex<Vec<(String, Instant, i32)>> = Mutex::new(Vec::new());
    let (restarted_at, crashed_at) = std::thread::scope(|scope| {
        for (side, admin) in [("a", &c.admin_socket), ("b", &b_admin)] {
            for t in 0..2 {
                let (c, uid, stop, answers) = (&c, &uid, &stop, &answers);
                scope.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Acquire) {
                        let name = format!("w-{side}-{t}-{i}");
                        i += 1;
                        let mut cmd = c.leashctl_command();
                        cmd.env("LEASH_ADMIN_SOCKET", admin).args([
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
                        let out = c.run(cmd);
                        answers.lock().expect("lock").push((
                            format!("workload {name}"),
                            Instant::now(),
                            out.code,
                        ));
                    }
                });
            }
        }
        for agent in [0, on_b] {
            let (c, stop, answers) = (&c, &stop, &answers);
            scope.spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let out = c.leash_at(
                        agent,
                        &["get", "api", "--as", "w1", "--fresh", "--output", "json"],
                    );
                    let what = if out.code == 0 {
                        format!("lease {}", out.json()["lease_id"].as_str().unwrap_or(""))
                    } else {
                        format!("get on agent {agent}: {}", out.stderr.trim())
                    };
                    answers
                        .lock()
                        .expect("lock")
                        .push((what, Instant::now(), out.code));
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let crashed_at = Instant::now();
        pg.crash();
        std::thread::sleep(Duration::from_millis(1000));
        pg.restart();
        let restarted_at = Instant::now();
        // Load until both replicas have written again after the restart, at most 60 s.
        leash_tests::wait_until(
            "both replicas write again after the database restarted",
            Duration::from_secs(60),
            || c.logs_dump(),
            || {
                let a = answers.lock().expect("lock");
                let again = |side: &str| {
                    a.iter().any(|(w, at, code)| {
                        *code == 0
                            && *at > restarted_at
                            && w.starts_with(&format!("workload w-{side}-"))
                    })
                };
                (again("a") && again("b")).then_some(())
            },
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Release);
        (restarted_at, crashed_at)
    });

    let answers = answers.into_inner().expect("lock");
    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, _, code)| ![0, 5].contains(code))
        .collect();
    assert!(
        bad.is_empty(),
        "answers other than done or unavailable: {bad:?}"
    );
    let refused = answers.iter().filter(|(_, _, code)| *code == 5).count();
    let during = answers
        .iter()
        .filter(|(_, at, _)| *at > crashed_at && *at < restarted_at)
        .count();
    let acked: Vec<&String> = answers
        .iter()
        .filter(|(_, _, code)| *code == 0)
        .map(|(w, _, _)| w)
        .collect();
    println!(
        "{} answers: {} done, {refused} unavailable, {during} answered while the database was down",
        answers.len(),
        acked.len()
    );
    assert!(refused > 0, "the crash was seen by some caller");
    // Everything acknowledged, on both replicas.
    for admin in [&c.admin_socket, &b_admin] {
        let listed = ctl_json(admin, &["workload", "list"]).to_string();
        for w in acked.iter().filter_map(|w| w.strip_prefix("workload ")) {
            assert!(
                listed.contains(&format!("\"{w}\"")),
                "acknowledged workload {w} is lost"
            );
        }
    }
    let leases: Vec<&str> = acked
        .iter()
        .filter_map(|w| w.strip_prefix("lease "))
        .collect();
    assert!(!leases.is_empty(), "credentials were issued during the run");
    for l in leases {
        assert_eq!(lease_state(&b_admin, l), "active", "acknowledged lease {l}");
    }
    // And the agents still get credentials through either replica.
    c.get_at(0, "api", &["--as", "w1", "--fresh"]);
    c.get_at(on_b, "api", &["--as", "w1", "--fresh"]);
    c.stop_agent_at(on_b);
    b.kill9();
}

/// The task flow through the other replica: `leash exec` on an agent connected to
/// replica B starts a task (recorded through B), gets a credential bound to it, and ends
/// it; replica A sees the lease issued inside the task and completed with it, and
/// introspection on A says the token is no longer active.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_task_through_replica_b_is_recorded_and_completed_for_replica_a() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (url, mut c) = replica_a(&pg, tmp.path(), Options::default());
    let (mut b, b_url, _) = replica_b(&c, tmp.path(), &url);
    let token = c.join_token(&[]);
    let on_b = c.add_agent_at("host-b", &token, &b_url);
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("w1", "team-a", &["api"]);
    let work = crate::tasks::workdir(&c, "task-on-b");
    let mut cmd = c.leash_command(on_b);
    cmd.current_dir(&work).env_remove("LEASH_TASK").args([
        "exec",
        "--task-name",
        "job-b",
        "--env",
        "TOKEN=api",
        "--",
        "sh",
        "-c",
        r#"printf %s "$TOKEN" > token"#,
    ]);
    c.run(cmd).code(0);
    let jwt = crate::tasks::read_token(&c, &work, "token");
    let claims = crate::claims(&jwt);
    let lease_id = claims["jti"].as_str().expect("jti").to_string();
    let task = claims["leash"]["task"]
        .as_str()
        .expect("task claim")
        .to_string();
    // Read through replica A (the cluster's admin socket).
    let lease = c.eventually("replica A sees the lease completed with its task", || {
        let l = c.lease(&lease_id);
        (l["state"] == "completed").then_some(l)
    });
    assert_eq!(lease["task"], task.as_str(), "{lease}");
    assert_eq!(lease["host"], "host-b", "{lease}");
    assert!(
        lease["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("job-b"),
        "{lease}"
    );
    crate::assert_timeline_order(&lease, &["task-started", "issued", "completed"]);
    let intro = c.leashctl(&["introspect", &jwt]).json();
    assert_eq!(intro["active"], false, "{intro}");
    c.stop_agent_at(on_b);
    b.kill9();
}
