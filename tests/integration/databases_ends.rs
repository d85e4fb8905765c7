//! Every way a PostgreSQL lease ends, and the faults on the way, against a real server
//! (`leash_tests::pg`), real daemons and the real CLIs: the database down at revoke (the
//! drop stays queued, `lease show`, `credential show`, `revoke --wait` and the audit log
//! say so, and the drop is done when the database is back), a `kill -9` of the control
//! plane with a drop queued, the other ending paths (offboarding, eviction, disabling,
//! a policy change, `credential remove`) each dropping the role and cutting its open
//! session, `revoke --wait` counting the drops of several leases, and the reconciler of
//! the real control plane at start and on its interval.

use std::time::{Duration, Instant};

use leash_tests::pg::Pg;
use leash_tests::process::Daemon;
use leash_tests::{wait_until, Cluster};

use crate::apply_policy;
use crate::databases::{
    add, add_app_db, as_role, issue, role_exists, setup, wait_role_gone, ADMIN_PW, GRANT_READ,
};

/// Long enough for the end queue's backoff (1 s doubling) to come round after an outage
/// of a few seconds.
const DROP_WAIT: Duration = Duration::from_secs(90);

/// Print a command's real output for the docs (`--nocapture` shows it).
fn show(what: &str, out: &leash_tests::process::Output) {
    eprintln!(
        "=== {what} (exit {})\n{}{}===",
        out.code, out.stdout, out.stderr
    );
}

/// `leash get app-db --output json ARGS` on agent `i`: the material and the lease id.
fn issue_at(c: &Cluster, i: usize, cred: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["get", cred, "--output", "json"];
    args.extend_from_slice(extra);
    let j = c.leash_at(i, &args).json();
    let m = if j.get("password").is_some() {
        j.clone()
    } else {
        serde_json::from_str(j["token"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("no postgres material in {j}: {e}"))
    };
    c.remember_secret(m["password"].as_str().expect("password"));
    let lease = j["lease_id"].as_str().expect("lease id").to_string();
    (m, lease)
}

fn user(m: &serde_json::Value) -> String {
    m["user"].as_str().expect("user").to_string()
}

/// Open a session as the lease's role that would run for a minute, and wait until the
/// server lists it.
fn open_session(c: &Cluster, pg: &Pg, m: &serde_json::Value) -> Daemon {
    let role = user(m);
    let mut cmd = pg.server_command("psql");
    cmd.args(["-X", "-A", "-t"])
        .arg(m["url"].as_str().expect("url"))
        .args(["-c", "SELECT pg_sleep(60)"]);
    let session = Daemon::spawn(&format!("psql session of {role}"), cmd);
    c.eventually(&format!("{role}'s session is open"), || {
        (pg.sql(
            "app",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"),
        ) == "1")
            .then_some(())
    });
    session
}

/// The role is dropped and its open session was cut (psql exits with an error, long
/// before its minute is up).
fn assert_dropped_and_cut(c: &Cluster, pg: &Pg, m: &serde_json::Value, mut session: Daemon) {
    let role = user(m);
    wait_role_gone(c, pg, &role);
    let code = session.wait_exit(Duration::from_secs(10));
    assert_ne!(
        code, 0,
        "{role}'s session ran on after its role was dropped"
    );
    let log = session.log().text();
    assert!(
        log.contains("terminat") || log.contains("connection"),
        "psql did not say its session was cut: {log}"
    );
    assert!(
        !as_role(pg, m, "SELECT 1").status.success(),
        "the dropped role {role} logs in"
    );
}

/// The lease's events from the audit trail, oldest first.
fn lease_events(c: &Cluster, lease: &str) -> Vec<serde_json::Value> {
    c.audit()
        .into_iter()
        .filter(|e| e["lease"] == lease)
        .collect()
}

/// The `drop-failed` attempts recorded for a lease, in order.
fn failed_attempts(c: &Cluster, lease: &str) -> Vec<u64> {
    lease_events(c, lease)
        .iter()
        .filter(|e| e["type"] == "drop-failed")
        .map(|e| e["detail"]["attempt"].as_u64().expect("attempt"))
        .collect()
}

/// Wait until the lease's drop is done (`lease show`), the database being up.
fn wait_drop_done(c: &Cluster, lease: &str) -> serde_json::Value {
    wait_until(
        &format!("the drop of {lease} is done"),
        DROP_WAIT,
        || c.logs_dump(),
        || {
            let l = c.lease(lease);
            (l["end_pending"] == false && l["end_step"] == "drop").then_some(l)
        },
    )
}

/// No admin connection string or its password in what a command printed.
fn assert_no_dsn(out: &leash_tests::process::Output) {
    for needle in [ADMIN_PW, "postgresql://", "%2F"] {
        assert!(
            !out.stdout.contains(needle) && !out.stderr.contains(needle),
            "{needle:?} was printed\n{out}"
        );
    }
}

/// `--wait` prints a progress line when something changed, not once per failed attempt.
fn assert_no_repeated_lines(out: &leash_tests::process::Output) {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]),
        "the same progress line twice in a row\n{out}"
    );
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_database_down_at_revoke_leaves_the_drop_pending_and_it_is_done_when_it_is_back() {
    let (mut pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let (a, lease_a) = issue(&c, &[]);
    let (b, lease_b) = issue(&c, &["--fresh"]);
    assert_ne!(lease_a, lease_b);
    pg.stop();

    // Revoked while the database is down: the wipe is done, the drop is not.
    let out = c.leashctl(&["revoke", "--lease", &lease_a, "--wait", "--timeout", "3s"]);
    show("revoke --wait, database down", &out);
    out.code(6).stderr_has(&[
        "timed out after 3s",
        "1 drop(s) pending",
        &format!("({lease_a}: "),
        "cannot reach PostgreSQL",
    ]);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("wiped on 1/1 hosts; 1 drop(s) pending")),
        "no progress line naming the pending drop\n{out}"
    );
    assert_no_dsn(&out);
    assert_no_repeated_lines(&out);

    // `lease show` says since when and why.
    let text = c.leashctl(&["lease", "show", &lease_a]);
    show("lease show, drop pending", &text);
    text.code(0);
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("end step:"))
        .unwrap_or_else(|| panic!("no end step line\n{text}"));
    assert!(
        line.contains("drop pending since ")
            && line.contains(", last error ")
            && line.contains("cannot reach PostgreSQL")
            && line.ends_with(" attempts)"),
        "{line}"
    );
    assert_no_dsn(&text);
    assert!(
        text.stdout.contains("credential: app-db (action read)\n"),
        "a role has no audience to show\n{text}"
    );
    let l = c.lease(&lease_a);
    assert_eq!(l["state"], "revoked", "{l}");
    assert_eq!(l["end_pending"], true, "{l}");
    assert!(l["end_attempts"].as_u64().unwrap_or(0) >= 1, "{l}");
    assert!(
        l["end_last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach PostgreSQL")),
        "{l}"
    );

    // `credential show` counts it.
    let cred = c.leashctl(&["credential", "show", "app-db"]);
    show("credential show, one drop pending", &cred);
    assert!(cred.ok().contains("pending drops: 1"), "{cred}");
    assert!(cred.stdout.contains("active leases: 1"), "{cred}");
    let j = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(j["pending_ends"], 1, "{j}");

    // Each failed attempt is a `drop-failed` event on the lease's timeline, counted.
    let attempts = failed_attempts(&c, &lease_a);
    assert!(!attempts.is_empty(), "no drop-failed event");
    assert_eq!(
        attempts,
        (1..=attempts.len() as u64).collect::<Vec<_>>(),
        "attempts are counted one by one"
    );
    let failed = lease_events(&c, &lease_a)
        .into_iter()
        .find(|e| e["type"] == "drop-failed")
        .expect("drop-failed");
    eprintln!("=== drop-failed event\n{failed}\n===");
    assert!(
        failed["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach PostgreSQL")),
        "{failed}"
    );
    assert_eq!(failed["credential"], "app-db", "{failed}");

    // Revoking another lease while the database is down: `--wait` waits for it to come
    // back and reports the drop done only once the role is gone.
    let started = Instant::now();
    let out = std::thread::scope(|s| {
        let waiter =
            s.spawn(|| c.leashctl(&["revoke", "--lease", &lease_b, "--wait", "--timeout", "30s"]));
        std::thread::sleep(Duration::from_secs(2));
        pg.restart();
        waiter.join().expect("revoke --wait thread")
    });
    show("revoke --wait, database back after 2 s", &out);
    out.code(0);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "--wait returned before the database was back\n{out}"
    );
    out.stderr_has(&["1 drop(s) pending"]);
    assert_no_repeated_lines(&out);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("wiped on 1/1 hosts in ") && last.ends_with(" ms; 1/1 drop(s) done"),
        "{out}"
    );
    assert!(
        !role_exists(&pg, &user(&b)),
        "--wait said done but the role is there"
    );
    assert_no_dsn(&out);
    let text = c.leashctl(&["lease", "show", &lease_b]);
    show("lease show, dropped", &text);
    assert!(text.ok().contains("end step:   dropped"), "{text}");
    let dropped = lease_events(&c, &lease_b)
        .into_iter()
        .find(|e| e["type"] == "role-dropped")
        .unwrap_or_else(|| panic!("no role-dropped for {lease_b}"));
    eprintln!("=== role-dropped event\n{dropped}\n===");
    assert_eq!(dropped["detail"]["role"], user(&b).as_str(), "{dropped}");

    // The first lease's drop comes round on its own, however long the backoff.
    let l = wait_drop_done(&c, &lease_a);
    assert!(
        l.get("end_attempts").is_none() || l["end_attempts"] == 0,
        "{l}"
    );
    assert!(!role_exists(&pg, &user(&a)));
    assert!(lease_events(&c, &lease_a)
        .iter()
        .any(|e| e["type"] == "role-dropped"));
    let cred = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(cred["pending_ends"], 0, "{cred}");
    let audit = serde_json::to_string(&c.audit()).unwrap_or_default();
    assert!(
        !audit.contains(ADMIN_PW),
        "the admin password is in an event"
    );
    c.assert_no_secret_leaked();
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn a_drop_queued_before_a_kill_9_is_done_after_the_restart_and_keeps_its_attempts() {
    let (mut pg, mut c, admin) = setup();
    add_app_db(&c, &admin);
    let (m, lease) = issue(&c, &[]);
    let role = user(&m);
    pg.stop();
    c.leashctl(&["revoke", "--lease", &lease]).code(0);
    let before = c.eventually("two drop attempts have failed", || {
        let n = c.lease(&lease)["end_attempts"].as_u64().unwrap_or(0);
        (n >= 2).then_some(n)
    });

    // kill -9 with the database still down: the queue, its attempts and the last error
    // are durable, and counting goes on from there.
    c.kill_control_plane();
    c.restart_control_plane();
    let after = c.eventually("a drop attempt after the restart has failed", || {
        let l = c.lease(&lease);
        let n = l["end_attempts"].as_u64().unwrap_or(0);
        (n > before).then_some(l)
    });
    assert_eq!(after["end_pending"], true, "{after}");
    let attempts = failed_attempts(&c, &lease);
    assert_eq!(
        attempts,
        (1..=attempts.len() as u64).collect::<Vec<_>>(),
        "the attempt count started again after the restart"
    );
    assert!(attempts.len() as u64 > before, "{attempts:?}");

    // kill -9 again, the database back, the control plane restarted: the role is dropped.
    c.kill_control_plane();
    pg.restart();
    assert!(role_exists(&pg, &role), "the role went while nothing ran");
    c.restart_control_plane();
    wait_role_gone(&c, &pg, &role);
    let l = wait_drop_done(&c, &lease);
    assert_eq!(l["state"], "revoked", "{l}");
    let events = lease_events(&c, &lease);
    assert!(
        events.iter().any(|e| e["type"] == "role-dropped"),
        "{events:?}"
    );
    let j = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(j["pending_ends"], 0, "{j}");
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn every_other_ending_path_drops_the_role_and_cuts_its_session() {
    let (pg, mut c, admin) = setup();
    add_app_db(&c, &admin);
    add(&c, "gone-db", &admin, &["--grant", GRANT_READ]).code(0);
    let h2 = c.add_agent("host-2", &[]);
    for (w, owner, allow) in [
        ("off/job", "team-off", "app-db"),
        ("dis/job", "team-dis", "app-db"),
        ("pol/job", "team-pol", "app-db"),
        ("ev/job", "team-ev", "app-db"),
        ("rm/job", "team-rm", "gone-db"),
    ] {
        c.my_workload(w, owner, &[allow]);
    }
    let get = |i: usize, cred: &str, w: &str| issue_at(&c, i, cred, &["--as", w]);
    let (off, _) = get(0, "app-db", "off/job");
    let (dis, _) = get(0, "app-db", "dis/job");
    let (pol, pol_lease) = get(0, "app-db", "pol/job");
    let (ev, _) = get(h2, "app-db", "ev/job");
    let (rm, _) = get(0, "gone-db", "rm/job");
    let all = [&off, &dis, &pol, &ev, &rm];
    for m in all {
        assert!(role_exists(&pg, &user(m)), "{m}");
    }
    let still_there = |from: usize| {
        for m in &all[from..] {
            assert!(role_exists(&pg, &user(m)), "{} was dropped early", user(m));
        }
    };

    // Offboarding the owner.
    let s = open_session(&c, &pg, &off);
    let out = c.leashctl(&[
        "owner",
        "offboard",
        "team-off",
        "--wait",
        "--timeout",
        "20s",
    ]);
    show("owner offboard --wait", &out);
    out.code(0).stderr_has(&["1 lease(s) revoked"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("wiped on 1/1 hosts in ") && l.ends_with("; 1/1 drop(s) done")),
        "{out}"
    );
    assert_dropped_and_cut(&c, &pg, &off, s);
    still_there(1);

    // Disabling the workload.
    let s = open_session(&c, &pg, &dis);
    c.leashctl(&["workload", "disable", "dis/job", "--reason", "incident"])
        .code(0);
    assert_dropped_and_cut(&c, &pg, &dis, s);
    still_there(2);

    // A policy that no longer permits the lease.
    let s = open_session(&c, &pg, &pol);
    let out = apply_policy(
        &c,
        "forbid-pol.cedar",
        "@id(\"all\")\npermit(principal, action, resource);\n\n\
         @id(\"not-pol\")\nforbid(principal == Leash::Workload::\"pol/job\", action, resource);\n",
        &["--wait", "--timeout", "20s"],
    );
    show("policy apply --wait", &out);
    out.stderr_has(&["1 active lease(s) no longer permitted were revoked"]);
    assert!(
        out.stdout
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("; 1/1 drop(s) done")),
        "{out}"
    );
    assert_dropped_and_cut(&c, &pg, &pol, s);
    assert!(
        c.lease(&pol_lease)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("policy version")),
        "{}",
        c.lease(&pol_lease)
    );
    still_there(3);

    // Evicting the host the lease was issued to.
    let s = open_session(&c, &pg, &ev);
    c.leashctl(&["host", "evict", "host-2"]).code(0);
    assert_dropped_and_cut(&c, &pg, &ev, s);
    still_there(4);

    // Removing the credential.
    let s = open_session(&c, &pg, &rm);
    let out = c.leashctl(&["credential", "remove", "gone-db", "--yes"]);
    show("credential remove --yes", &out);
    out.code(0).stderr_has(&["1 lease(s) revoked"]);
    // `remove` answers once the drops are done.
    assert!(
        !role_exists(&pg, &user(&rm)),
        "remove returned before the drop"
    );
    assert_dropped_and_cut(&c, &pg, &rm, s);

    // Each ended lease has its `role-dropped` with the session it cut.
    let audit = c.audit();
    for m in all {
        let role = user(m);
        let e = audit
            .iter()
            .find(|e| e["type"] == "role-dropped" && e["detail"]["role"] == role.as_str())
            .unwrap_or_else(|| panic!("no role-dropped for {role}"));
        assert_eq!(e["detail"]["sessions_terminated"], 1, "{e}");
    }
    // Nothing else was touched: no marked role is left.
    assert_eq!(
        pg.sql(
            "app",
            "SELECT count(*) FROM pg_roles r WHERE shobj_description(r.oid, 'pg_authid') LIKE 'leash-managed%'"
        ),
        "0"
    );
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn revoke_wait_counts_the_drops_of_every_lease_it_revoked() {
    let (pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let mut roles = vec![user(&issue(&c, &[]).0)];
    for _ in 0..4 {
        roles.push(user(&issue(&c, &["--fresh"]).0));
    }
    roles.sort();
    roles.dedup();
    assert_eq!(roles.len(), 5, "{roles:?}");
    let out = c.leashctl(&[
        "revoke",
        "--workload",
        "ci/job",
        "--wait",
        "--timeout",
        "30s",
    ]);
    show("revoke --workload --wait, 5 leases", &out);
    out.code(0);
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("wiped on 1/1 hosts in ") && last.ends_with(" ms; 5/5 drop(s) done"),
        "{out}"
    );
    for r in &roles {
        assert!(!role_exists(&pg, r), "--wait said done but {r} is there");
    }
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn removing_a_credential_while_the_database_is_down_keeps_it_until_the_drops_are_done() {
    let (mut pg, c, admin) = setup();
    add_app_db(&c, &admin);
    let (m, lease) = issue(&c, &[]);
    pg.stop();
    let out = c.leashctl(&["credential", "remove", "app-db", "--yes"]);
    show("credential remove, database down", &out);
    out.code(5).stderr_has(&[
        "the leases of app-db are revoked",
        "1 drop(s) still pending",
        &format!("`leashctl lease show {lease}` shows why"),
        "run `leashctl credential remove app-db` again later",
    ]);
    assert_no_dsn(&out);
    // Revoked, kept, and the drop is counted where the docs say to look.
    assert_eq!(c.lease(&lease)["state"], "revoked");
    let j = c
        .leashctl(&["credential", "show", "app-db", "--output", "json"])
        .json();
    assert_eq!(
        (j["active_leases"].as_u64(), j["pending_ends"].as_u64()),
        (Some(0), Some(1)),
        "{j}"
    );
    // Disabled while it waits: no new lease (and role) can slip in before the removal.
    assert_eq!(j["disabled"], true, "{j}");
    c.leash(&["get", "app-db"])
        .code(2)
        .stderr_has(&["credential \"app-db\" is disabled"]);
    pg.restart();
    wait_drop_done(&c, &lease);
    assert!(!role_exists(&pg, &user(&m)));
    let out = c.leashctl(&["credential", "remove", "app-db"]);
    show("credential remove again, database back", &out);
    out.code(0);
    c.leashctl(&["credential", "show", "app-db"]).code(4);
}

/// The reconciler of the real control plane, at start and on `reconcile_interval`: it drops
/// a marked role whose lease has ended (re-created by hand, as a restore from an old backup
/// would) and one whose lease was never written (a crash between the role and the lease),
/// and leaves alone an active lease's role, a role without the marker, another
/// credential's role and a fresh role whose lease may still be being written.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_control_plane_reconciles_at_start_and_on_its_interval() {
    let (pg, mut c, admin) = setup();
    add_app_db(&c, &admin);
    let (m, _lease) = issue(&c, &[]);
    let active = m["user"].as_str().expect("user").to_string();
    let (m2, ended) = issue(&c, &["--action", "write"]);
    let recreated = m2["user"].as_str().expect("user").to_string();
    c.leashctl(&["revoke", "--lease", &ended, "--wait"]).code(0);
    wait_role_gone(&c, &pg, &recreated);
    let marked = |role: &str, lease: &str, credential: &str, created: i64| {
        pg.sql(
            "app",
            &format!(
                "CREATE ROLE {role} LOGIN; COMMENT ON ROLE {role} IS \
                 'leash-managed lease={lease} credential={credential} created={created}'"
            ),
        );
    };
    marked(&recreated, &ended, "app-db", 0);
    marked("leash_crashed", "l-00000000000000000000", "app-db", 0);
    marked("leash_other", "l-11111111111111111111", "other-db", 0);
    // Created "now or later" by the marker: its lease may be being written right now.
    marked(
        "leash_fresh",
        "l-22222222222222222222",
        "app-db",
        9_999_999_999,
    );
    pg.sql("app", "CREATE ROLE app_human LOGIN");

    c.restart_control_plane();
    c.eventually("the reconciler at start drops the two orphans", || {
        (!role_exists(&pg, &recreated) && !role_exists(&pg, "leash_crashed")).then_some(())
    });
    for keep in [active.as_str(), "leash_other", "leash_fresh", "app_human"] {
        assert!(role_exists(&pg, keep), "the reconciler dropped {keep}");
    }
    let reconciled: Vec<serde_json::Value> = c
        .audit()
        .into_iter()
        .filter(|e| e["type"] == "role-dropped" && e["detail"]["reconciled"] == true)
        .collect();
    assert!(
        reconciled
            .iter()
            .any(|e| e["lease"] == ended.as_str() && e["detail"]["role"] == recreated.as_str()),
        "no reconciled role-dropped event for {ended}: {reconciled:?}"
    );

    // Between rounds nothing happens; once the clock passes reconcile_interval (5m) the
    // next round drops what appeared since.
    marked("leash_crashed_later", "l-33333333333333333333", "app-db", 0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        role_exists(&pg, "leash_crashed_later"),
        "dropped before reconcile_interval passed"
    );
    c.advance_clock(Duration::from_secs(301));
    c.eventually("the next round drops the new orphan", || {
        (!role_exists(&pg, "leash_crashed_later")).then_some(())
    });
    for keep in [active.as_str(), "leash_other", "leash_fresh", "app_human"] {
        assert!(role_exists(&pg, keep), "the reconciler dropped {keep}");
    }
}
