//! Taking credentials back: revocation by every target with the wipe
//! acknowledged, `--wait` timing out on a stopped agent, disable, eviction, failing
//! closed past max_offline, expiry, lease timelines, durability of revocations, missed
//! revocations applied on reconnect, and introspection.

use std::time::{Duration, Instant};

use leash_proto::v1;
use leash_tests::{Cluster, Options, TRUST_DOMAIN};
use nix::sys::signal::Signal;
use tonic::Code;

use crate::{basic, cp_client, host_credentials, rt, timeline_types, API_AUD};

/// Parse `wiped on N/M hosts in X ms`; returns (N, M).
#[track_caller]
fn wiped_line(out: &leash_tests::Output) -> (u64, u64) {
    let line = out.stdout.trim();
    let rest = line
        .strip_prefix("wiped on ")
        .unwrap_or_else(|| panic!("unexpected --wait output\n{out}"));
    let (counts, ms) = rest
        .split_once(" hosts in ")
        .unwrap_or_else(|| panic!("{out}"));
    let ms = ms.strip_suffix(" ms").unwrap_or_else(|| panic!("{out}"));
    ms.parse::<u64>()
        .unwrap_or_else(|_| panic!("not a duration in ms\n{out}"));
    let (n, m) = counts.split_once('/').unwrap_or_else(|| panic!("{out}"));
    (n.parse().expect("N"), m.parse().expect("M"))
}

#[test]
fn revoke_by_each_target_wipes_and_is_acknowledged() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.credential("db", &["--audience", "https://db.example"]);
    c.my_workload("w1", "team-a", &["api", "db"]);
    c.my_workload("w2", "team-b", &["api"]);
    // Three cache slots: (credential, workload).
    let slots = [("api", "w1"), ("db", "w1"), ("api", "w2")];
    let fill = || -> Vec<(String, bool)> {
        slots
            .iter()
            .map(|(cred, w)| {
                let f = c.get(cred, &["--as", w]);
                (f.lease_id, f.cached)
            })
            .collect()
    };
    type Case = (
        &'static str,
        fn(&[(String, bool)]) -> Vec<String>,
        &'static [usize],
    );
    let cases: [Case; 6] = [
        ("lease", |b| vec!["--lease".into(), b[0].0.clone()], &[0]),
        (
            "workload",
            |_| vec!["--workload".into(), "w1".into()],
            &[0, 1],
        ),
        (
            "credential",
            |_| vec!["--credential".into(), "api".into()],
            &[0, 2],
        ),
        ("owner", |_| vec!["--owner".into(), "team-b".into()], &[2]),
        (
            "host",
            |_| vec!["--host".into(), "host-1".into()],
            &[0, 1, 2],
        ),
        ("all", |_| vec!["--all".into()], &[0, 1, 2]),
    ];
    for (what, target, revoked) in cases {
        let before = fill();
        assert_eq!(c.cached_at(0), 3, "before revoking by {what}");
        let mut args: Vec<String> = vec!["revoke".into()];
        args.extend(target(&before));
        args.extend(["--reason", "test", "--wait", "--timeout", "10s"].map(String::from));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = c.leashctl(&argv);
        let (n, m) = wiped_line(&out);
        assert_eq!((n, m), (1, 1), "revoke by {what}\n{out}");
        // Acknowledged means wiped: no waiting here.
        assert_eq!(
            c.cached_at(0),
            3 - revoked.len() as u64,
            "revoke by {what}\n{out}"
        );
        let after = fill();
        for i in 0..slots.len() {
            let lease = c.lease(&before[i].0);
            if revoked.contains(&i) {
                assert_ne!(
                    after[i].0, before[i].0,
                    "revoke by {what}: {:?} still served",
                    slots[i]
                );
                assert!(
                    !after[i].1,
                    "revoke by {what}: {:?} served from cache",
                    slots[i]
                );
                assert_eq!(lease["state"], "revoked", "revoke by {what}: {lease}");
                assert_eq!(lease["reason"], "test");
            } else {
                assert_eq!(
                    after[i].0, before[i].0,
                    "revoke by {what} took {:?} too",
                    slots[i]
                );
                assert!(after[i].1);
                assert_eq!(lease["state"], "active", "revoke by {what}: {lease}");
            }
        }
        // Leave a clean slate for the next case.
        c.leashctl(&["revoke", "--all", "--wait"]).ok();
    }
    // Each revocation is on record, with the wipe acknowledgments.
    let audit = c.audit();
    assert!(audit.iter().filter(|e| e["type"] == "revocation").count() >= 12);
    assert!(audit
        .iter()
        .any(|e| e["type"] == "wiped" && e["host"] == "host-1"));
}

#[test]
fn offboarding_an_owner_takes_back_what_their_workloads_hold() {
    let c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    // The workload changed hands after the credential was issued.
    c.leashctl(&["workload", "transfer", "ci/job", "--to", "team-new"])
        .ok();
    c.leashctl(&["revoke", "--owner", "team-ci"])
        .code(4)
        .stderr_has(&["team-ci"]);
    let out = c.leashctl(&[
        "revoke",
        "--owner",
        "team-new",
        "--reason",
        "offboarding",
        "--wait",
    ]);
    assert_eq!(wiped_line(&out), (1, 1), "{out}");
    assert_eq!(c.cached_at(0), 0);
    assert_eq!(c.lease(&f.lease_id)["state"], "revoked");
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id);
    use base64::Engine;
    let payload = g.token.split('.').nth(1).expect("a JWT payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("json");
    assert_eq!(claims["leash"]["owner"], "team-new");
}

#[test]
fn revoke_wait_times_out_naming_a_stopped_agent() {
    let mut c = Cluster::start();
    basic(&c);
    let h2 = c.add_agent("host-2", &[]);
    c.wait_visible(h2, "ci/job");
    c.get_at(0, "api", &[]);
    c.get_at(h2, "api", &[]);

    c.signal_agent(h2, Signal::SIGSTOP);
    let started = Instant::now();
    let out = c.leashctl(&["revoke", "--all", "--wait", "--timeout", "2s"]);
    let took = started.elapsed();
    c.signal_agent(h2, Signal::SIGCONT);
    out.code(6)
        .stderr_has(&["host-2", "did not acknowledge", "wiped on 1/2 hosts"]);
    let verdict = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        verdict.contains("host-2") && !verdict.contains("host-1"),
        "{out}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert_eq!(c.cached_at(0), 0, "host-1 acknowledged, so it wiped");

    // Resumed, host-2 applies what was pushed meanwhile; the next wait sees both.
    c.eventually("host-2 wiped after SIGCONT", || {
        (c.cached_at(h2) == 0).then_some(())
    });
    let out = c.leashctl(&["revoke", "--all", "--wait", "--timeout", "10s"]);
    assert_eq!(wiped_line(&out), (2, 2), "{out}");
}

#[test]
fn revoke_wait_does_not_wait_for_hosts_offline_past_max_offline() {
    // An agent may lower max_offline, never raise it.
    let mut c = Cluster::with(
        Options::default()
            .heartbeat("200ms")
            .max_offline("2s")
            .agent_args(&["--max-offline", "1h"]),
    );
    basic(&c);
    assert_eq!(c.status()["max_offline_secs"], 2);
    let h2 = c.add_agent("host-2", &[]);
    c.wait_visible(h2, "ci/job");
    c.kill_agent_at(h2);
    c.eventually("host-2 is disconnected", || {
        let hosts = c.leashctl(&["host", "list", "--output", "json"]).json();
        hosts
            .as_array()?
            .iter()
            .any(|h| h["name"] == "host-2" && h["connected"] == false)
            .then_some(())
    });
    // Let more than max_offline pass on every daemon's clock: by then host-2 has wiped
    // itself by failing closed. The jump also makes host-1's last heartbeat look 3 s
    // old; wait until its next one has it caught up again.
    c.advance_clock(Duration::from_secs(3));
    c.wait_caught_up_at(0);
    let started = Instant::now();
    let out = c.leashctl(&["revoke", "--all", "--wait", "--timeout", "20s"]);
    out.code(0).stderr_has(&["host-2", "max_offline"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for host-2\n{out}"
    );
    wiped_line(&out);
}

#[test]
fn disabled_workload_gets_nothing_until_enabled() {
    let c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    c.leashctl(&["workload", "disable", "ci/job", "--reason", "incident 42"])
        .ok();
    c.leash(&["get", "api", "--fresh"])
        .code(2)
        .stderr_has(&["disabled"]);
    // Disabling revoked its leases, and the revocation reached the agent.
    assert_eq!(c.lease(&f.lease_id)["state"], "revoked");
    c.eventually("the agent wiped the disabled workload's credential", || {
        (c.cached_at(0) == 0).then_some(())
    });
    c.leash(&["get", "api"]).code(2).stderr_has(&["disabled"]);
    let w = c
        .leashctl(&["workload", "show", "ci/job", "--output", "json"])
        .json();
    assert_eq!(w["disabled"], true);
    let audit = c.audit();
    assert!(audit
        .iter()
        .any(|e| e["type"] == "disabled" && e["workload"] == "ci/job"));
    assert!(audit
        .iter()
        .any(|e| e["type"] == "denied" && e["workload"] == "ci/job"));

    c.leashctl(&["workload", "enable", "ci/job"]).ok();
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id);
    assert!(!g.cached);
}

#[test]
fn evicted_host_wipes_everything_and_is_refused() {
    let mut c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    c.leashctl(&["host", "evict", "host-1"]).ok();
    let st = c.eventually("the agent knows it was evicted", || {
        let s = c.status();
        (s["state"] == "evicted").then_some(s)
    });
    assert_eq!(st["cached_credentials"], 0, "{st}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("evicted"),
        "{st}"
    );
    c.leash(&["get", "api"]).code(5).stderr_has(&["evicted"]);
    c.eventually("the log says evicted", || {
        c.agent_log("host-1").contains("evicted").then_some(())
    });

    let hosts = c.leashctl(&["host", "list", "--output", "json"]).json();
    assert_eq!(hosts[0]["evicted"], true, "{hosts}");
    assert_eq!(c.lease(&f.lease_id)["state"], "revoked");
    assert!(c
        .audit()
        .iter()
        .any(|e| e["type"] == "evicted" && e["host"] == "host-1"));

    // Its certificate is refused from now on.
    let creds = host_credentials(&c.agent(0).state_dir);
    let s = rt()
        .block_on(async {
            let mut cp = cp_client(&c, Some(creds)).await.expect("TLS");
            cp.issue(v1::IssueRequest {
                workload: "ci/job".into(),
                credential: "api".into(),
                ..Default::default()
            })
            .await
        })
        .expect_err("an evicted host's certificate is refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("evicted"), "{s:?}");
    // Coming back needs a new name.
    c.leashctl(&["join-token", "create", "--name", "host-1"])
        .code(1)
        .stderr_has(&["never reused"]);
    // Restarting the agent does not undo it.
    c.start_agent();
    let st = c.status();
    assert_eq!(st["state"], "evicted", "{st}");
    c.leash(&["get", "api"]).code(5);
}

#[test]
fn revoke_by_host_leaves_other_hosts_alone() {
    let mut c = Cluster::start();
    basic(&c);
    let h2 = c.add_agent("host-2", &[]);
    c.wait_visible(h2, "ci/job");
    let one = c.get_at(0, "api", &[]);
    let two = c.get_at(h2, "api", &[]);
    let out = c.leashctl(&["revoke", "--host", "host-2", "--wait", "--timeout", "10s"]);
    assert_eq!(wiped_line(&out), (1, 1), "only host-2 is waited for\n{out}");
    assert_eq!(c.cached_at(h2), 0);
    assert_eq!(c.cached_at(0), 1);
    let again = c.get_at(0, "api", &[]);
    assert_eq!(again.lease_id, one.lease_id);
    assert!(again.cached);
    assert_eq!(c.lease(&one.lease_id)["state"], "active");
    assert_eq!(c.lease(&two.lease_id)["state"], "revoked");
    assert_ne!(c.get_at(h2, "api", &[]).lease_id, two.lease_id);
}

/// A cluster whose agent fails closed 2 s after its last heartbeat, with one credential
/// cached; returns the cluster and the cached lease id.
fn failing_closed_cluster() -> (Cluster, String) {
    let c = Cluster::with(
        Options::default()
            .heartbeat("200ms")
            .agent_args(&["--max-offline", "2s"]),
    );
    basic(&c);
    let f = c.get("api", &[]);
    assert_eq!(
        c.status()["max_offline_secs"],
        2,
        "an agent may lower max_offline"
    );

    c.signal_control_plane(Signal::SIGSTOP);
    let stopped = Instant::now();
    let st = c.eventually("the agent fails closed", || {
        let s = c.status();
        (s["state"] == "failing-closed").then_some(s)
    });
    let after = stopped.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "failed closed after only {after:?}: {st}"
    );
    assert_eq!(st["cached_credentials"], 0, "everything is wiped: {st}");
    assert_eq!(st["synced"], false);
    c.leash(&["get", "api"])
        .code(5)
        .stderr_has(&["failing closed"]);
    (c, f.lease_id)
}

#[test]
fn agent_fails_closed_past_max_offline() {
    let (c, _) = failing_closed_cluster();
    // Cached credentials are gone, and misses are refused the same way.
    c.leash(&["get", "api", "--fresh"]).code(5);
    c.eventually("the log says failing closed", || {
        c.agent_log("host-1")
            .contains("failing closed")
            .then_some(())
    });
    c.signal_control_plane(Signal::SIGCONT);
}

#[test]

fn agent_recovers_from_failing_closed_once_the_control_plane_answers() {
    let (c, lease) = failing_closed_cluster();
    c.signal_control_plane(Signal::SIGCONT);
    c.eventually("the agent recovers once the control plane answers", || {
        let s = c.status();
        (s["state"] == "ready" && s["synced"] == true).then_some(())
    });
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, lease, "the wiped credential is not back");
}

#[test]
fn agent_failing_closed_recovers_after_reconnecting() {
    // Cutting the connection (rather than pausing the control plane) makes the agent
    // reconnect and re-sync, after which it serves again.
    let c = Cluster::with(
        Options::default()
            .heartbeat("200ms")
            .agent_args(&["--max-offline", "2s"])
            .with_proxy(),
    );
    basic(&c);
    let f = c.get("api", &[]);
    c.proxy().cut();
    let st = c.eventually("the agent fails closed", || {
        let s = c.status();
        (s["state"] == "failing-closed").then_some(s)
    });
    assert_eq!(st["cached_credentials"], 0, "{st}");
    c.leash(&["get", "api"])
        .code(5)
        .stderr_has(&["failing closed"]);
    c.proxy().restore();
    c.eventually("the agent re-synced", || {
        let s = c.status();
        (s["state"] == "ready" && s["synced"] == true).then_some(())
    });
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id, "the wiped credential is not back");
    assert!(!g.cached);
}

#[test]
fn expired_credentials_are_wiped_and_leases_marked_expired() {
    let c = Cluster::start();
    c.credential("short", &["--audience", API_AUD, "--ttl", "2s"]);
    c.my_workload("ci/job", "team-ci", &["short"]);
    let f = c.get("short", &[]);
    assert_eq!(c.cached_at(0), 1);
    c.eventually("the lease expired and the agent wiped it", || {
        let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
        let expired = leases
            .as_array()?
            .iter()
            .any(|l| l["id"] == f.lease_id.as_str() && l["state"] == "expired");
        (expired && c.cached_at(0) == 0).then_some(())
    });
    assert!(timeline_types(&c.lease(&f.lease_id)).contains(&"expired".to_string()));
    let active = c
        .leashctl(&["lease", "list", "--active", "--output", "json"])
        .json();
    assert!(
        !active
            .as_array()
            .expect("array")
            .iter()
            .any(|l| l["id"] == f.lease_id.as_str()),
        "{active}"
    );
    let intro = c.leashctl(&["introspect", &f.token]).json();
    assert_eq!(intro["active"], false, "{intro}");
    assert_eq!(intro["state"], "expired", "{intro}");
    let g = c.get("short", &[]);
    assert_ne!(g.lease_id, f.lease_id);
}

#[test]
fn lease_timeline_holds_issued_served_revoked_in_order() {
    let c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    assert!(c.get("api", &[]).cached);
    // Usage goes up in batches (every 5 s); wait for both servings to be reported.
    c.eventually("both servings are on the timeline", || {
        let l = c.lease(&f.lease_id);
        let served: u64 = l["timeline"]
            .as_array()?
            .iter()
            .filter(|e| e["type"] == "served")
            .filter_map(|e| e["detail"]["count"].as_u64())
            .sum();
        (served == 2).then_some(())
    });
    c.leashctl(&[
        "revoke",
        "--lease",
        &f.lease_id,
        "--reason",
        "done",
        "--wait",
    ])
    .ok();
    let lease = c.lease(&f.lease_id);
    let types = timeline_types(&lease);
    let life: Vec<&str> = types
        .iter()
        .map(String::as_str)
        .filter(|t| ["issued", "served", "revoked"].contains(t))
        .collect();
    assert_eq!(life.first(), Some(&"issued"), "{types:?}");
    assert_eq!(life.last(), Some(&"revoked"), "{types:?}");
    assert!(
        life[1..life.len() - 1].iter().all(|t| *t == "served") && life.len() >= 3,
        "{types:?}"
    );
    let times: Vec<i64> = lease["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["at_ms"].as_i64().expect("at_ms"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "timeline out of order: {times:?}"
    );
    let served = lease["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["type"] == "served")
        .expect("a served event");
    assert_eq!(served["host"], "host-1");
    assert!(
        served["detail"]["first_pid"]
            .as_u64()
            .is_some_and(|p| p > 0),
        "{served}"
    );
    // The human view lists the same, in the same order.
    let shown = c.leashctl(&["lease", "show", &f.lease_id]).ok();
    let text = shown
        .split("timeline:")
        .nth(1)
        .unwrap_or_else(|| panic!("no timeline in\n{shown}"));
    let pos = |t: &str| {
        text.find(t)
            .unwrap_or_else(|| panic!("{t} missing from\n{text}"))
    };
    assert!(
        pos(" issued") < pos(" served") && pos(" served") < pos(" revoked"),
        "{text}"
    );
}

#[test]
fn revocation_survives_control_plane_sigkill_and_is_pushed() {
    let mut c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    c.leashctl(&["revoke", "--lease", &f.lease_id, "--reason", "kill test"])
        .ok();
    c.kill_control_plane();
    c.restart_control_plane();
    let lease = c.lease(&f.lease_id);
    assert_eq!(lease["state"], "revoked", "{lease}");
    assert_eq!(lease["reason"], "kill test");
    c.eventually("the agent re-synced and wiped the revoked lease", || {
        let s = c.status();
        (s["synced"] == true && s["cached_credentials"] == 0).then_some(())
    });
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id);
    let intro = c.leashctl(&["introspect", &f.token]).json();
    assert_eq!(intro["active"], false);
}

#[test]
fn revocations_missed_while_disconnected_are_applied_before_serving_again() {
    let c = Cluster::with(Options::default().with_proxy());
    basic(&c);
    let f = c.get("api", &[]);
    c.proxy().cut();
    c.eventually("the agent noticed the cut", || {
        (c.status()["state"] == "offline").then_some(())
    });
    // Offline, within max_offline: the cached credential is still served.
    assert_eq!(c.get("api", &[]).lease_id, f.lease_id);

    // Recorded, but nobody can acknowledge it yet.
    let out = c.leashctl(&[
        "revoke",
        "--lease",
        &f.lease_id,
        "--reason",
        "while away",
        "--wait",
        "--timeout",
        "1s",
    ]);
    out.code(6).stderr_has(&["host-1", "did not acknowledge"]);
    let seq: u64 = out
        .stderr
        .split("at sequence ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sequence in\n{out}"));
    assert_eq!(c.lease(&f.lease_id)["state"], "revoked");

    c.proxy().restore();
    // Once the agent says it is synced again, the revoked credential is never served.
    let mut synced_seen = false;
    c.eventually("the agent re-synced and serves a new credential", || {
        let s = c.status();
        if s["synced"] == true && s["state"] == "ready" {
            assert!(
                s["last_seq"].as_u64().unwrap_or(0) >= seq,
                "synced before the revocation: {s}"
            );
            synced_seen = true;
        }
        let g = c.get("api", &[]);
        if synced_seen {
            assert_ne!(
                g.lease_id, f.lease_id,
                "a revoked credential was served after the re-sync"
            );
            return Some(());
        }
        None
    });
    assert!(c
        .agent_log("host-1")
        .lines()
        .any(|l| l.contains("revocation applied") && l.contains(&format!("seq={seq}"))));
}

#[test]
fn eviction_while_disconnected_is_applied_on_reconnect() {
    let c = Cluster::with(Options::default().with_proxy());
    basic(&c);
    c.get("api", &[]);
    c.proxy().cut();
    c.eventually("the agent noticed the cut", || {
        (c.status()["state"] == "offline").then_some(())
    });
    c.leashctl(&["host", "evict", "host-1"]).ok();
    c.proxy().restore();
    let st = c.eventually("the agent learns it was evicted", || {
        let s = c.status();
        (s["state"] == "evicted").then_some(s)
    });
    assert_eq!(st["cached_credentials"], 0, "{st}");
    c.leash(&["get", "api"]).code(5).stderr_has(&["evicted"]);
}

#[test]
fn introspection_through_the_admin_socket_and_the_agent() {
    let c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    let answers = |c: &Cluster| {
        vec![
            (
                "leashctl TOKEN",
                c.leashctl(&["introspect", &f.token]).json(),
            ),
            (
                "leashctl -",
                c.leashctl_stdin(&["introspect", "-"], &format!("{}\n", f.token))
                    .json(),
            ),
            ("leash TOKEN", c.leash(&["introspect", &f.token]).json()),
            (
                "leash -",
                c.leash_stdin(&["introspect", "-"], &f.token).json(),
            ),
        ]
    };
    for (how, v) in answers(&c) {
        assert_eq!(v["active"], true, "{how}: {v}");
        assert_eq!(v["state"], "active", "{how}: {v}");
        assert_eq!(
            v["sub"],
            format!("spiffe://{TRUST_DOMAIN}/ci/job"),
            "{how}: {v}"
        );
        assert_eq!(v["aud"], API_AUD, "{how}: {v}");
        assert_eq!(v["jti"], f.lease_id.as_str(), "{how}: {v}");
        assert!(v["exp"].as_i64().is_some(), "{how}: {v}");
    }
    // Not ours, or not a token at all.
    let v = c.leashctl(&["introspect", "not-a-token"]).json();
    assert_eq!(v["active"], false, "{v}");
    let mut forged = f.token.clone();
    forged.push('A');
    assert_eq!(c.leash(&["introspect", &forged]).json()["active"], false);
    c.leashctl_stdin(&["introspect", "-"], "").code(1);

    c.leashctl(&[
        "revoke",
        "--lease",
        &f.lease_id,
        "--reason",
        "compromised",
        "--wait",
    ])
    .ok();
    for (how, v) in answers(&c) {
        assert_eq!(v["active"], false, "{how}: {v}");
        assert_eq!(v["state"], "revoked", "{how}: {v}");
        assert_eq!(v["reason"], "compromised", "{how}: {v}");
    }
}

#[test]
fn revocation_racing_issuance_leaves_no_older_credential_behind() {
    let c = Cluster::start();
    basic(&c);
    let socket = c.agent(0).socket.clone();
    // Fresh issuances keep flowing while the workload is revoked.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let issuers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut cmd = std::process::Command::new(leash_tests::bin("leash"));
                    cmd.env("LEASH_AGENT_SOCKET", &socket)
                        .args(["get", "api", "--fresh"]);
                    let out = leash_tests::process::run(cmd, None, leash_tests::COMMAND_TIMEOUT);
                    assert!(matches!(out.code, 0 | 2), "{out}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Not a wait for time: a short window (≤ 500 ms) for the issuers to get going, so
    // the revocation below races them.
    std::thread::sleep(Duration::from_millis(300));
    let out = c.leashctl(&[
        "revoke",
        "--workload",
        "ci/job",
        "--wait",
        "--timeout",
        "10s",
    ]);
    wiped_line(&out);
    let seq: u64 = out
        .stderr
        .split("at sequence ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sequence in\n{out}"));
    // Likewise: issuances keep racing for a short while (≤ 500 ms) after the revocation.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let issued: u32 = issuers
        .into_iter()
        .map(|h| h.join().expect("issuer thread"))
        .sum();
    assert!(issued > 2, "the race did not happen: {issued} issuances");

    // Every lease issued before the revocation is revoked...
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    for l in leases.as_array().expect("array") {
        let s = l["seq"].as_u64().expect("seq");
        if s < seq {
            assert_eq!(
                l["state"], "revoked",
                "issued at {s}, before the revocation at {seq}: {l}"
            );
        }
    }
    // ...and what the agent serves now was issued after it.
    let f = c.get("api", &[]);
    let lease = c.lease(&f.lease_id);
    assert!(
        lease["seq"].as_u64().expect("seq") >= seq,
        "served a credential from before the revocation: {lease}"
    );
    assert_eq!(lease["state"], "active");
}

#[test]

fn revoke_wait_after_a_control_plane_restart_still_waits_for_hosts_within_max_offline() {
    let mut c = Cluster::with(
        Options::default()
            .heartbeat("200ms")
            .max_offline("4s")
            .with_proxy(),
    );
    basic(&c);
    c.get("api", &[]);
    // Connected for longer than max_offline (by the daemons' clock), which the control
    // plane does not record. The jump makes the agent's last heartbeat look 5 s old, so
    // it fails closed until the next one: wait until it is caught up and holds a
    // credential again.
    c.advance_clock(Duration::from_secs(5));
    c.wait_caught_up_at(0);
    c.get("api", &[]);
    assert_eq!(c.cached_at(0), 1, "{}", c.status());
    c.kill_control_plane();
    c.proxy().cut(); // the agent cannot reconnect: it is offline, within max_offline
    c.restart_control_plane();
    let out = c.leashctl(&["revoke", "--all", "--wait", "--timeout", "20s"]);
    let st = c.status();
    let silent_ms = c.clock_now_ms()
        - st["last_heartbeat_unix_ms"]
            .as_i64()
            .expect("last_heartbeat_unix_ms");
    let cached = st["cached_credentials"]
        .as_u64()
        .expect("cached_credentials");
    assert!(
        cached == 0 || silent_ms >= 4000 - 500,
        "revoke --wait counted host-1 as wiped by failing closed after {silent_ms} ms of silence, while it still holds {cached} credential(s): {st}\n{out}"
    );
}
