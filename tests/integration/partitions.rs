//! Partitions: an agent cut off from the control plane through the harness's proxy in the
//! middle of a revocation, during a task, and for longer than `max_offline`, then healed.
//! Each test checks the agent's state after the heal (status, cache, leases).
//!
//! Covered elsewhere, and not repeated here: a revocation recorded while the agent is
//! offline is applied before it serves again
//! (`revocation::revocations_missed_while_disconnected_are_applied_before_serving_again`),
//! an eviction during a cut (`revocation::eviction_while_disconnected_is_applied_on_reconnect`),
//! failing closed and recovering through the proxy
//! (`revocation::agent_failing_closed_recovers_after_reconnecting`), and `revoke --wait`
//! while an agent is away (`revocation::revoke_wait_*`).

use std::time::Duration;

use leash_tests::{Cluster, Daemon, Options, WAIT};
use nix::sys::signal::Signal;

use crate::tasks::{exec, exec_command, read_token, wait_file, workdir};
use crate::{basic, claims, timeline_types, API_AUD};

/// A cluster whose agent reaches the control plane through the proxy, with a short
/// heartbeat (so a cut and a heal are noticed quickly).
fn cut_cluster(max_offline: &str) -> Cluster {
    Cluster::with(
        Options::default()
            .heartbeat("200ms")
            .max_offline(max_offline)
            .with_proxy(),
    )
}

/// Cut the proxy and wait until the agent reports itself offline.
fn cut(c: &Cluster) {
    c.proxy().cut();
    c.eventually("the agent noticed the cut", || {
        let s = c.status();
        (s["state"] == "offline" && s["synced"] == false).then_some(())
    });
}

/// Restore the proxy and wait until the agent is ready and synced again; returns its
/// status.
fn heal(c: &Cluster) -> serde_json::Value {
    c.proxy().restore();
    c.eventually("the agent re-synced after the heal", || {
        let s = c.status();
        (s["state"] == "ready" && s["synced"] == true).then_some(s)
    })
}

/// `leashctl revoke ARGS --wait --timeout 60s`, running in the background.
fn revoke_waiting(c: &Cluster, args: &[&str]) -> Daemon {
    let mut cmd = c.leashctl_command();
    cmd.arg("revoke")
        .args(args)
        .args(["--reason", "partition test", "--wait", "--timeout", "60s"]);
    Daemon::spawn("leashctl revoke --wait", cmd)
}

/// The sequence number a `leashctl revoke` printed ("… at sequence N; …").
fn revoked_seq(text: &str) -> u64 {
    text.split("at sequence ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sequence in\n{text}"))
}

fn lease_id_of(token: &str) -> String {
    claims(token)["jti"]
        .as_str()
        .expect("the token has a jti")
        .to_string()
}

#[test]
fn revocation_pending_during_a_cut_is_applied_on_resume_and_wait_completes() {
    let c = cut_cluster("5m");
    basic(&c);
    let f = c.get("api", &[]);
    cut(&c);

    let mut wait = revoke_waiting(&c, &["--lease", &f.lease_id]);
    // Recorded, and the wait shows the cut-off host as the one holding it up.
    let line = wait.wait_for_line("not answering", WAIT);
    assert!(
        line.contains("wiped on 0/1 hosts") && line.contains("host-1"),
        "{line}"
    );
    let seq = revoked_seq(&wait.log().text());
    assert_eq!(c.lease(&f.lease_id)["state"], "revoked");
    assert!(
        wait.exited().is_none(),
        "--wait returned while host-1 was cut off"
    );
    // Within max_offline the agent keeps serving what it has; it cannot know yet.
    assert_eq!(c.status()["cached_credentials"], 1);

    let st = heal(&c);
    // The same --wait completes once the healed agent has wiped and acknowledged.
    assert_eq!(wait.wait_exit(WAIT), 0, "{}", wait.log().text());
    assert!(
        wait.log().text().contains("wiped on 1/1 hosts in"),
        "{}",
        wait.log().text()
    );
    assert!(st["last_seq"].as_u64().unwrap_or(0) >= seq, "{st}");
    assert!(c
        .agent_log("host-1")
        .lines()
        .any(|l| l.contains("revocation applied") && l.contains(&format!("seq={seq}"))));
    // Agent state after the heal: nothing cached, the revoked credential never again.
    let st = c.status();
    assert_eq!(st["cached_credentials"], 0, "{st}");
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id, "the revoked credential was served");
    assert!(!g.cached);
    assert_eq!(c.get("api", &[]).lease_id, g.lease_id);
    assert_eq!(c.lease(&g.lease_id)["state"], "active");
    let types = timeline_types(&c.lease(&f.lease_id));
    assert!(
        types.iter().any(|t| t == "revoked") && types.iter().any(|t| t == "wiped"),
        "{types:?}"
    );
    let intro = c.leashctl(&["introspect", &f.token]).json();
    assert_eq!(intro["active"], false, "{intro}");
}

#[test]
fn revocation_whose_acknowledgment_is_lost_in_a_cut_completes_after_the_heal() {
    let c = cut_cluster("5m");
    basic(&c);
    let f = c.get("api", &[]);
    // The agent is connected but paused: the push reaches its socket, the ack cannot
    // leave before the cut.
    c.signal_agent(0, Signal::SIGSTOP);
    let mut wait = revoke_waiting(&c, &["--lease", &f.lease_id]);
    wait.wait_for_line("not answering", WAIT);
    // A short margin (≤ 500 ms, no time-based decision waits on it) for the push to be
    // through the proxy into the stopped agent's socket before the cut; a stopped agent
    // shows nothing to poll for.
    std::thread::sleep(Duration::from_millis(500));
    c.proxy().cut();
    c.signal_agent(0, Signal::SIGCONT);
    // It applies what it had received before the connection dropped, while still cut off.
    c.eventually(
        "the paused agent applied the revocation it had received",
        || {
            let s = c.status();
            (s["cached_credentials"] == 0 && s["synced"] == false).then_some(())
        },
    );
    assert!(wait.exited().is_none(), "--wait returned without an ack");

    let st = heal(&c);
    // Resuming from a sequence at or past the revocation counts as its acknowledgment.
    assert_eq!(wait.wait_exit(WAIT), 0, "{}", wait.log().text());
    assert!(
        wait.log().text().contains("wiped on 1/1 hosts in"),
        "{}",
        wait.log().text()
    );
    let seq = revoked_seq(&wait.log().text());
    assert!(st["last_seq"].as_u64().unwrap_or(0) >= seq, "{st}");
    assert_eq!(st["cached_credentials"], 0, "{st}");
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id, "the revoked credential was served");
    assert_eq!(c.lease(&f.lease_id)["state"], "revoked");
}

#[test]
fn task_ending_during_a_cut_wipes_at_once_and_completes_once_healed() {
    let c = cut_cluster("5m");
    basic(&c);
    let work = workdir(&c, "cut-task");
    let cmd = exec_command(
        &c,
        &work,
        &[
            "--task-name",
            "cut-job",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token.tmp && mv token.tmp token; while [ ! -e go ]; do sleep 0.05; done"#,
        ],
    );
    let mut job = Daemon::spawn("leash exec", cmd);
    wait_file(&c, &work, "token");
    let token = read_token(&c, &work, "token");
    let lease_id = lease_id_of(&token);
    assert_eq!(c.cached_at(0), 1);
    assert_eq!(c.lease(&lease_id)["state"], "active");

    cut(&c);
    std::fs::write(work.join("go"), "").expect("touch go");
    assert_eq!(job.wait_exit(WAIT), 0, "{}", job.log().text());
    // Wiped locally at once, although the control plane could not be told.
    let st = c.status();
    assert_eq!(st["cached_credentials"], 0, "{st}");
    assert_eq!(st["state"], "offline", "{st}");
    assert_eq!(
        c.lease(&lease_id)["state"],
        "active",
        "the control plane cannot have heard of the task's end yet"
    );

    let st = heal(&c);
    let lease = c.eventually("the control plane learns the task ended", || {
        let l = c.lease(&lease_id);
        (l["state"] == "completed").then_some(l)
    });
    assert!(
        lease["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cut-job"),
        "{lease}"
    );
    assert!(timeline_types(&lease).iter().any(|t| t == "completed"));
    let intro = c.leashctl(&["introspect", &token]).json();
    assert_eq!(intro["active"], false, "{intro}");
    assert_eq!(intro["state"], "completed", "{intro}");
    assert_eq!(st["cached_credentials"], 0, "{st}");
    assert!(c
        .agent_log("host-1")
        .contains("task end reported after reconnecting"));
    // The agent serves again, outside any task.
    assert!(!c.get("api", &[]).cached);
    c.assert_no_secret_leaked();
}

#[test]
fn task_lease_revoked_during_the_cut_stays_revoked_and_the_rest_completes() {
    let c = cut_cluster("5m");
    c.credential("api", &["--audience", API_AUD, "--ttl", "5m"]);
    c.credential("db", &["--audience", "https://db.example", "--ttl", "5m"]);
    c.my_workload("ci/job", "team-ci", &["api", "db"]);
    let work = workdir(&c, "cut-task-revoked");
    let cmd = exec_command(
        &c,
        &work,
        &[
            "--task-name",
            "cut-job-2",
            "--env",
            "API=api",
            "--env",
            "DB=db",
            "--",
            "sh",
            "-c",
            r#"printf %s "$API" > api.tmp && mv api.tmp api; printf %s "$DB" > db.tmp && mv db.tmp db; while [ ! -e go ]; do sleep 0.05; done"#,
        ],
    );
    let mut job = Daemon::spawn("leash exec", cmd);
    wait_file(&c, &work, "db");
    let api = read_token(&c, &work, "api");
    let db = read_token(&c, &work, "db");
    let (api_lease, db_lease) = (lease_id_of(&api), lease_id_of(&db));
    assert_eq!(c.cached_at(0), 2);

    cut(&c);
    let mut wait = revoke_waiting(&c, &["--lease", &api_lease]);
    wait.wait_for_line("not answering", WAIT);
    std::fs::write(work.join("go"), "").expect("touch go");
    assert_eq!(job.wait_exit(WAIT), 0, "{}", job.log().text());
    assert_eq!(
        c.status()["cached_credentials"],
        0,
        "the task's end wipes both at once"
    );
    assert_eq!(c.lease(&db_lease)["state"], "active");

    let st = heal(&c);
    assert_eq!(wait.wait_exit(WAIT), 0, "{}", wait.log().text());
    assert!(wait.log().text().contains("wiped on 1/1 hosts in"));
    c.eventually("the control plane learns the task ended", || {
        (c.lease(&db_lease)["state"] == "completed").then_some(())
    });
    // The revocation came first: the completion does not overwrite it. The wait counts
    // the acknowledgment as it arrives; its `wiped` event is written to the store after.
    let l = c.eventually("the wipe is on the lease's timeline", || {
        let l = c.lease(&api_lease);
        timeline_types(&l).iter().any(|t| t == "wiped").then_some(l)
    });
    assert_eq!(l["state"], "revoked", "{l}");
    let types = timeline_types(&l);
    assert!(
        types.iter().any(|t| t == "wiped") && !types.iter().any(|t| t == "completed"),
        "{types:?}"
    );
    for (token, state) in [(&api, "revoked"), (&db, "completed")] {
        let intro = c.leashctl(&["introspect", token]).json();
        assert_eq!(intro["active"], false, "{intro}");
        assert_eq!(intro["state"], state, "{intro}");
    }
    assert_eq!(st["cached_credentials"], 0, "{st}");
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, api_lease);
    assert!(!g.cached);
    c.assert_no_secret_leaked();
}

#[test]
fn cut_past_max_offline_fails_closed_and_nothing_revoked_meanwhile_comes_back() {
    let c = cut_cluster("3s");
    c.credential("api", &["--audience", API_AUD, "--ttl", "5m"]);
    c.credential("db", &["--audience", "https://db.example", "--ttl", "5m"]);
    c.my_workload("ci/job", "team-ci", &["api", "db"]);
    assert_eq!(c.status()["max_offline_secs"], 3);
    let api = c.get("api", &[]);
    let db = c.get("db", &[]);
    assert_eq!(c.cached_at(0), 2);

    c.proxy().cut();
    let st = c.eventually("the agent fails closed", || {
        let s = c.status();
        (s["state"] == "failing-closed").then_some(s)
    });
    assert_eq!(st["cached_credentials"], 0, "everything is wiped: {st}");
    assert_eq!(st["synced"], false, "{st}");
    // Exit 5 for everything until it has re-synced: cache hits, misses, tasks.
    c.leash(&["get", "api"])
        .code(5)
        .stderr_has(&["failing closed"]);
    c.leash(&["get", "db", "--fresh"]).code(5);
    let work = workdir(&c, "closed");
    let out = exec(&c, &work, &["--env", "TOKEN=api", "--", "true"]);
    out.code(125);
    assert!(out.stdout.is_empty(), "{out}");

    // Revoked while it is cut off: one lease, and a whole credential.
    let r1 = c.leashctl(&["revoke", "--lease", &api.lease_id, "--reason", "cut"]);
    r1.code(0);
    let r2 = c.leashctl(&["revoke", "--credential", "db", "--reason", "cut"]);
    r2.code(0);
    let seq = revoked_seq(&r2.stderr).max(revoked_seq(&r1.stderr));

    let st = heal(&c);
    assert!(st["last_seq"].as_u64().unwrap_or(0) >= seq, "{st}");
    assert_eq!(
        st["cached_credentials"], 0,
        "nothing from before the cut: {st}"
    );
    let api2 = c.get("api", &[]);
    let db2 = c.get("db", &[]);
    assert!(!api2.cached && !db2.cached);
    assert_ne!(api2.lease_id, api.lease_id);
    assert_ne!(db2.lease_id, db.lease_id);
    assert_eq!(c.cached_at(0), 2);
    for (old, new) in [(&api, &api2), (&db, &db2)] {
        assert_eq!(c.lease(&old.lease_id)["state"], "revoked");
        assert_eq!(c.lease(&new.lease_id)["state"], "active");
        let intro = c.leashctl(&["introspect", &old.token]).json();
        assert_eq!(intro["active"], false, "{intro}");
        let intro = c.leashctl(&["introspect", &new.token]).json();
        assert_eq!(intro["active"], true, "{intro}");
    }
    // The wait for what was revoked meanwhile is over for this host.
    let out = c.leashctl(&[
        "revoke",
        "--lease",
        &api2.lease_id,
        "--wait",
        "--timeout",
        "20s",
    ]);
    out.code(0);
    assert!(out.stdout.contains("wiped on 1/1 hosts"), "{out}");
    assert_ne!(c.get("api", &[]).lease_id, api2.lease_id);
}

/// Copy a stopped control plane's data directory (a backup, or a restore of one).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn an_agent_ahead_of_a_store_restored_to_an_older_point_wipes_what_it_holds() {
    if leash_tests::sled_only("it restores the sled data directory from a copy") {
        return;
    }
    let mut c = Cluster::start();
    basic(&c);
    let before = c.get("api", &[]);
    // A backup of the store, taken with the control plane stopped.
    assert_eq!(c.stop_control_plane(), 0);
    let backup = c.dir().join("backup");
    copy_tree(&c.data_dir, &backup);
    c.restart_control_plane();
    c.wait_caught_up_at(0);
    // After the backup point: a change the agent sees, and a credential the restored
    // store will know nothing of.
    c.leashctl(&[
        "workload",
        "add",
        "ci/other",
        "--owner",
        "team-ci",
        "--selector",
        "unix:uid:12345",
    ])
    .code(0);
    let after = c.get("api", &["--fresh"]);
    assert_ne!(after.lease_id, before.lease_id);
    assert!(c.get("api", &[]).cached, "served from the agent's cache");

    // The store goes back to the backup; the agent, still running, reconnects to it.
    assert_eq!(c.stop_control_plane(), 0);
    copy_tree(&backup, &c.data_dir);
    c.restart_control_plane();
    c.eventually(
        "the agent wiped what the restored store cannot vouch for",
        || {
            c.agent_log(&c.agent(0).name)
                .contains("the control plane's state is older than this agent's")
                .then_some(())
        },
    );
    c.wait_caught_up_at(0);
    let now = c.get("api", &[]);
    assert!(
        !now.cached && now.lease_id != after.lease_id && now.token != after.token,
        "the credential issued after the backup point is not served again: {} {}",
        now.lease_id,
        after.lease_id
    );
    // And the restored control plane's revocations reach the agent as usual.
    let r = c.leashctl(&["revoke", "--workload", "ci/job", "--wait"]);
    assert!(r.stdout.contains("wiped on 1/1 hosts"), "{r}");
    assert_ne!(c.get("api", &[]).lease_id, now.lease_id);
}
