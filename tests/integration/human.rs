//! Human controls: contextual approval end to end (pending, de-duplicated,
//! approved with `--wait`, uses honoured, denied with a reason, timeouts, no
//! self-approval), offboarding on every host with the stale report, shared agents acting
//! on behalf of people, and transfers changing the owner policy sees.

use std::time::Duration;

use leash_tests::{Cluster, Daemon, Options, TRUST_DOMAIN};

use crate::{apply_policy, claims, timeline_types, API_AUD};

const APPROVAL_POLICY: &str = r#"@id("reads")
permit(principal, action == Leash::Action::"read", resource);

@id("admin-needs-approval")
@approval("required")
permit(principal, action == Leash::Action::"admin", resource);
"#;

/// The approval id (`ap-…`) a message names.
#[track_caller]
fn approval_id(text: &str) -> String {
    let at = text
        .find("ap-")
        .unwrap_or_else(|| panic!("no approval id in {text:?}"));
    text[at..]
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '-')
        .collect()
}

/// `leash get ARGS` that must end pending (exit 3); returns the approval id.
#[track_caller]
fn pending(c: &Cluster, args: &[&str]) -> String {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    let out = c.leash(&a);
    out.code(3)
        .stderr_has(&["pending", "leashctl approval approve"]);
    assert!(out.stdout.is_empty(), "{out}");
    let id = approval_id(&out.stderr);
    assert!(
        out.stderr
            .contains(&format!("leashctl approval approve {id}")),
        "{out}"
    );
    id
}

/// `leash get ARGS --wait` as a daemon (its stdout and stderr in one log), started once
/// it says it is waiting; returns it and the approval id it waits for.
fn waiter(c: &Cluster, args: &[&str]) -> (Daemon, String) {
    let mut cmd = c.leash_command(0);
    cmd.env_remove("LEASH_TASK").arg("get").args(args);
    let mut d = Daemon::spawn("leash get --wait", cmd);
    let line = d.wait_for_line("waiting for approval", leash_tests::WAIT);
    (d, approval_id(&line))
}

fn approvals(c: &Cluster, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["approval", "list", "--output", "json"];
    if all {
        args.push("--all");
    }
    c.leashctl(&args)
        .json()
        .as_array()
        .expect("approval list is an array")
        .clone()
}

#[test]
fn approval_end_to_end_pending_deduplicated_approved_and_uses_honoured() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("ops/tool", "team-ops", &[]);
    apply_policy(&c, "approval.cedar", APPROVAL_POLICY, &[]);
    // Low risk flows without a human.
    c.get("api", &[]);
    let id = pending(&c, &["api", "--action", "admin"]);
    assert_eq!(
        pending(&c, &["api", "--action", "admin"]),
        id,
        "identical requests are de-duplicated"
    );
    let list = approvals(&c, false);
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["workload"], "ops/tool");
    assert_eq!(a["credential"], "api");
    assert_eq!(a["action"], "admin");
    assert_eq!(a["host"], "host-1");
    assert!(
        a.get("on_behalf_of").is_some_and(|v| v.is_null()),
        "on_behalf_of is listed (null when none): {a}"
    );
    assert_eq!(a["state"], "pending");
    let table = c.leashctl(&["approval", "list"]).ok();
    assert!(table.contains(&id) && table.contains("ops/tool"), "{table}");

    // A requester waits; an approver approves; the token comes back.
    let (mut w, waited_for) = waiter(
        &c,
        &["api", "--action", "admin", "--wait", "--timeout", "30s"],
    );
    assert_eq!(waited_for, id);
    c.leashctl(&["approval", "approve", &id, "--for", "9h"])
        .code(1)
        .stderr_has(&["max_approval"]);
    let out = c.leashctl(&["approval", "approve", &id, "--for", "10m", "--uses", "1"]);
    out.code(0).stderr_has(&["approved", &id, "1 use(s)"]);
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        w.log().text()
    );
    let log = w.log().text();
    assert!(log.contains("approved after"), "{log}");
    let token = log
        .lines()
        .find(|l| l.starts_with("eyJ"))
        .unwrap_or_else(|| {
            panic!(
                "no token in the waiter's output:\n{}",
                log.lines()
                    .filter(|l| !l.starts_with("eyJ"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
        .trim()
        .to_string();
    c.remember_secret(&token);
    let cl = claims(&token);
    assert_eq!(cl["leash"]["action"], "admin");
    let lease_id = cl["jti"].as_str().expect("jti").to_string();
    let types = timeline_types(&c.lease(&lease_id));
    for t in ["pending", "approved", "issued"] {
        assert!(types.contains(&t.to_string()), "{t} missing from {types:?}");
    }
    // Cached, it is served again; a fresh issuance needs a new approval (1 use).
    let cached = c.get("api", &["--action", "admin"]);
    assert_eq!(cached.lease_id, lease_id);
    assert!(cached.cached);
    let next = pending(&c, &["api", "--action", "admin", "--fresh"]);
    assert_ne!(next, id, "the used-up approval is not reused");
    let all = approvals(&c, true);
    let used = all
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {all:?}"));
    assert_eq!(used["state"], "approved", "{used}");
    assert_eq!(used["uses_left"], 0, "{used}");
    assert!(used["valid_until"].is_string(), "{used}");
    if leash_tests::is_root() {
        assert_eq!(used["decided_by"], "root", "{used}");
    }

    let audit = c.audit();
    let ev = |t: &str, ap: &str| audit.iter().any(|e| e["type"] == t && e["approval"] == ap);
    assert!(ev("pending", &id) && ev("approved", &id) && ev("pending", &next));
    c.assert_no_secret_leaked();
}

#[test]
fn approval_expiry_is_honoured() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("ops/tool", "team-ops", &[]);
    apply_policy(&c, "approval.cedar", APPROVAL_POLICY, &[]);
    let id = pending(&c, &["api", "--action", "admin"]);
    c.leashctl(&["approval", "approve", &id, "--for", "1s", "--uses", "100"])
        .ok();
    let first = c.get("api", &["--action", "admin", "--fresh"]);
    assert!(!first.cached);
    // Let the 1 s approval lapse (it is kept in whole seconds) on the daemons' clock.
    c.advance_clock(Duration::from_millis(2100));
    c.eventually("the approval has lapsed by the moved clock", || {
        let out = c.leash(&["get", "api", "--action", "admin", "--fresh"]);
        (out.code == 3).then_some(())
    });
    let next = pending(&c, &["api", "--action", "admin", "--fresh"]);
    assert_ne!(next, id, "an expired approval was used");
}

#[test]
fn an_unannotated_permit_that_also_matches_needs_no_approval() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("ops/tool", "team-ops", &[]);
    c.my_workload("ops/trusted", "team-ops", &[]);
    apply_policy(
        &c,
        "approval.cedar",
        &format!(
            "{APPROVAL_POLICY}\n@id(\"trusted-admin\")\npermit(principal == Leash::Workload::\"ops/trusted\", action == Leash::Action::\"admin\", resource);\n"
        ),
        &[],
    );
    pending(&c, &["api", "--as", "ops/tool", "--action", "admin"]);
    let f = c.get("api", &["--as", "ops/trusted", "--action", "admin"]);
    assert_eq!(claims(&f.token)["leash"]["action"], "admin");
    c.leashctl(&[
        "policy",
        "explain",
        "--workload",
        "ops/tool",
        "--credential",
        "api",
        "--action",
        "admin",
    ])
    .code(3);
    c.leashctl(&[
        "policy",
        "explain",
        "--workload",
        "ops/trusted",
        "--credential",
        "api",
        "--action",
        "admin",
    ])
    .code(0);
    assert_eq!(approvals(&c, false).len(), 1);
}

#[test]
fn denied_approval_exits_2_with_the_reason_and_waiting_times_out_with_6() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("ops/tool", "team-ops", &[]);
    apply_policy(&c, "approval.cedar", APPROVAL_POLICY, &[]);
    let (mut w, id) = waiter(
        &c,
        &["api", "--action", "admin", "--wait", "--timeout", "30s"],
    );
    c.leashctl(&["approval", "deny", &id]).code(1);
    c.leashctl(&[
        "approval",
        "deny",
        &id,
        "--reason",
        "change freeze until Monday",
    ])
    .code(0)
    .stderr_has(&["denied", &id]);
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        2,
        "{}",
        w.log().text()
    );
    assert!(
        w.log().text().contains("change freeze until Monday"),
        "{}",
        w.log().text()
    );
    c.leash(&["get", "api", "--action", "admin"])
        .code(2)
        .stderr_has(&["denied", "change freeze until Monday"]);
    c.leashctl(&["approval", "approve", &id])
        .code(1)
        .stderr_has(&["already denied"]);
    // Nobody decides: --wait gives up with 6.
    let started = std::time::Instant::now();
    let out = c.leash(&[
        "get",
        "api",
        "--action",
        "admin",
        "--ttl",
        "2m",
        "--wait",
        "--timeout",
        "1s",
    ]);
    out.code(6)
        .stderr_has(&["timed out", "waiting for approval"]);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(c.audit().iter().any(|e| e["type"] == "denied"
        && e["approval"] == id.as_str()
        && e["reason"] == "change freeze until Monday"));
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    assert_eq!(
        leases,
        serde_json::json!([]),
        "nothing was issued: {leases}"
    );
}

#[test]
fn approvers_may_not_approve_for_their_own_workloads_or_themselves() {
    // The test's uid (root in CI) is the admin "alice".
    let c = Cluster::with(
        Options::default().config(&format!("[admins]\nalice = {}", leash_tests::my_uid())),
    );
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("alice/script", "alice", &[]);
    let uid = format!("unix:uid:{}", leash_tests::my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "ops/bot",
        "--owner",
        "team-ops",
        "--kind",
        "shared-agent",
        "--selector",
        &uid,
    ])
    .ok();
    c.wait_visible(0, "ops/bot");
    apply_policy(&c, "approval.cedar", APPROVAL_POLICY, &[]);

    let own = pending(&c, &["api", "--as", "alice/script", "--action", "admin"]);
    c.leashctl(&["approval", "approve", &own])
        .code(2)
        .stderr_has(&["alice owns workload"]);
    let for_alice = pending(
        &c,
        &[
            "api",
            "--as",
            "ops/bot",
            "--action",
            "admin",
            "--on-behalf-of",
            "alice",
        ],
    );
    let list = approvals(&c, false);
    let entry = list
        .iter()
        .find(|a| a["id"] == for_alice.as_str())
        .unwrap_or_else(|| panic!("{for_alice} not in {list:?}"));
    assert_eq!(entry["on_behalf_of"], "alice", "{entry}");
    assert_eq!(entry["workload"], "ops/bot", "{entry}");
    c.leashctl(&["approval", "approve", &for_alice])
        .code(2)
        .stderr_has(&["on behalf of alice"]);
    // Both still wait for another approver.
    let ids: Vec<String> = approvals(&c, false)
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.contains(&own) && ids.contains(&for_alice), "{ids:?}");

    // Someone else's request alice may approve, and her name is recorded.
    let for_bob = pending(
        &c,
        &[
            "api",
            "--as",
            "ops/bot",
            "--action",
            "admin",
            "--on-behalf-of",
            "bob",
        ],
    );
    c.leashctl(&["approval", "approve", &for_bob]).ok();
    let f = c.get(
        "api",
        &[
            "--as",
            "ops/bot",
            "--action",
            "admin",
            "--on-behalf-of",
            "bob",
        ],
    );
    assert_eq!(claims(&f.token)["obo"], "bob");
    assert!(c.audit().iter().any(|e| e["type"] == "approved"
        && e["approval"] == for_bob.as_str()
        && e["actor"] == "alice"));
}

#[test]
fn offboarding_wipes_on_every_host_and_the_stale_report_lists_the_workloads() {
    let mut c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    let h2 = c.add_agent("host-2", &[]);
    c.my_workload("gone/one", "team-gone", &["api"]);
    c.my_workload("gone/two", "team-gone", &["api"]);
    c.my_workload("stay/job", "team-stay", &["api"]);
    let mut gone = Vec::new();
    for i in [0, h2] {
        gone.push(c.get_at(i, "api", &["--as", "gone/one"]));
        gone.push(c.get_at(i, "api", &["--as", "gone/two"]));
    }
    let stay = c.get_at(0, "api", &["--as", "stay/job"]);
    assert_eq!((c.cached_at(0), c.cached_at(h2)), (3, 2));
    let owners = c.leashctl(&["owner", "list", "--output", "json"]).json();
    let team = owners
        .as_array()
        .expect("array")
        .iter()
        .find(|o| o["owner"] == "team-gone")
        .unwrap_or_else(|| panic!("{owners}"))
        .clone();
    assert_eq!(team["active_leases"], 4, "{team}");

    let out = c.leashctl(&[
        "owner",
        "offboard",
        "team-gone",
        "--wait",
        "--timeout",
        "10s",
    ]);
    out.code(0)
        .stderr_has(&["2 workload(s) disabled", "4 lease(s) revoked"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("wiped on 2/2 hosts in ")),
        "{out}"
    );
    let after = out
        .stdout
        .split("need a new owner")
        .nth(1)
        .unwrap_or_else(|| panic!("no list of workloads needing a new owner\n{out}"));
    let listed: Vec<&str> = after.lines().skip(1).map(str::trim).collect();
    assert_eq!(listed, ["gone/one", "gone/two"], "{out}");
    // Acknowledged by both hosts means wiped on both.
    assert_eq!((c.cached_at(0), c.cached_at(h2)), (1, 0));
    for f in &gone {
        assert_eq!(c.lease(&f.lease_id)["state"], "revoked");
    }
    assert_eq!(c.lease(&stay.lease_id)["state"], "active");
    // Disabled workloads get nothing, anywhere.
    for i in [0, h2] {
        for w in ["gone/one", "gone/two"] {
            c.leash_at(i, &["get", "api", "--as", w, "--fresh"])
                .code(2)
                .stderr_has(&["disabled"]);
        }
    }
    for w in ["gone/one", "gone/two"] {
        let shown = c
            .leashctl(&["workload", "show", w, "--output", "json"])
            .json();
        assert_eq!(shown["disabled"], true, "{shown}");
    }
    assert_eq!(c.get("api", &["--as", "stay/job"]).lease_id, stay.lease_id);
    let owners = c.leashctl(&["owner", "list", "--output", "json"]).json();
    assert!(
        owners
            .as_array()
            .expect("array")
            .iter()
            .any(|o| o["owner"] == "team-gone" && o["offboarded"] == true),
        "{owners}"
    );

    // The stale report lists them, and why.
    let stale = c
        .leashctl(&["report", "stale", "--unused-for", "30d", "--output", "json"])
        .json();
    let stale = stale.as_array().expect("array");
    let names: Vec<&str> = stale.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, ["gone/one", "gone/two"], "{stale:?}");
    for w in stale {
        assert_eq!(w["why"], "owner-offboarded", "{w}");
        assert_eq!(w["owner"], "team-gone", "{w}");
        assert_eq!(w["disabled"], true, "{w}");
        assert!(w["last_issued"].is_string(), "{w}");
    }
    // A workload nobody uses is stale once the window is short enough.
    c.my_workload("idle/job", "team-stay", &["api"]);
    let find = |window: &str| -> Option<serde_json::Value> {
        c.leashctl(&[
            "report",
            "stale",
            "--unused-for",
            window,
            "--output",
            "json",
        ])
        .json()
        .as_array()
        .expect("array")
        .iter()
        .find(|w| w["name"] == "idle/job")
        .cloned()
    };
    assert!(find("30d").is_none(), "a new workload is not stale for 30d");
    let idle = find("0s").expect("idle/job is unused for 0s");
    assert_eq!(idle["why"], "unused", "{idle}");
    assert_eq!(idle["disabled"], false, "{idle}");
    let audit = c.audit();
    assert!(audit
        .iter()
        .any(|e| e["type"] == "offboarded" && e["detail"]["owner"] == "team-gone"));
    // A new owner takes one over: it works again and is no longer stale.
    c.leashctl(&["workload", "transfer", "gone/one", "--to", "team-new"])
        .ok();
    c.leashctl(&["workload", "enable", "gone/one"]).ok();
    let back = c.get_at(h2, "api", &["--as", "gone/one"]);
    assert_eq!(claims(&back.token)["leash"]["owner"], "team-new");
    let stale = c
        .leashctl(&["report", "stale", "--unused-for", "30d", "--output", "json"])
        .json();
    let names: Vec<&str> = stale
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["gone/two"], "{stale}");
    assert!(
        audit
            .iter()
            .filter(|e| e["type"] == "wiped")
            .filter_map(|e| e["host"].as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 2
    );
}

#[test]
fn shared_agent_tokens_for_two_principals_are_never_confused() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    crate::inputs::shared_agent(&c, "bots/helper");
    let out = c.leash(&["get", "api"]);
    out.code(2).stderr_has(&["on-behalf-of", "shared agent"]);
    assert!(out.stdout.is_empty(), "{out}");
    c.leashctl(&[
        "policy",
        "explain",
        "--workload",
        "bots/helper",
        "--credential",
        "api",
    ])
    .code(2);

    let alice = c.get("api", &["--on-behalf-of", "alice"]);
    let bob = c.get("api", &["--on-behalf-of", "bob"]);
    assert!(!alice.cached && !bob.cached);
    assert_ne!(alice.token, bob.token);
    assert_ne!(alice.lease_id, bob.lease_id);
    let sub = format!("spiffe://{TRUST_DOMAIN}/bots/helper");
    for (f, who) in [(&alice, "alice"), (&bob, "bob")] {
        let cl = claims(&f.token);
        assert_eq!(cl["obo"], who, "{cl}");
        assert_eq!(cl["sub"], sub.as_str(), "{cl}");
        assert_eq!(c.lease(&f.lease_id)["on_behalf_of"], who);
    }
    // Interleaved repeats are served from the cache, each to its own principal.
    for _ in 0..2 {
        for (f, who) in [(&bob, "bob"), (&alice, "alice")] {
            let g = c.get("api", &["--on-behalf-of", who]);
            assert!(g.cached, "{who}");
            assert_eq!(g.lease_id, f.lease_id, "{who} got someone else's token");
            assert_eq!(claims(&g.token)["obo"], who);
        }
    }
    let carol = c.get("api", &["--on-behalf-of", "carol"]);
    assert!(!carol.cached);
    assert_eq!(claims(&carol.token)["obo"], "carol");
    assert_eq!(c.cached_at(0), 3);
    // Policy sees context.on_behalf_of.
    apply_policy(
        &c,
        "obo.cedar",
        r#"@id("not-for-bob")
forbid(principal, action, resource) when { context.on_behalf_of == "bob" };
"#,
        &["--wait"],
    );
    assert_eq!(c.lease(&bob.lease_id)["state"], "revoked");
    assert_eq!(c.lease(&alice.lease_id)["state"], "active");
    c.leash(&["get", "api", "--on-behalf-of", "bob"])
        .code(2)
        .stderr_has(&["not-for-bob"]);
    assert_eq!(
        c.get("api", &["--on-behalf-of", "alice"]).lease_id,
        alice.lease_id
    );
}

#[test]
fn transfer_changes_the_owner_policy_sees_and_expired_workloads_get_nothing() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("svc/report", "team-a", &[]);
    apply_policy(
        &c,
        "owner.cedar",
        r#"@id("team-b-only")
permit(principal, action, resource) when { principal.owner == "team-b" };
"#,
        &[],
    );
    c.leash(&["get", "api"])
        .code(2)
        .stderr_has(&["no policy permits"]);
    c.leashctl(&["workload", "transfer", "svc/report", "--to", "team-b"])
        .code(0)
        .stderr_has(&["now owned by team-b"]);
    let f = c.get("api", &[]);
    assert_eq!(claims(&f.token)["leash"]["owner"], "team-b");
    let shown = c
        .leashctl(&["workload", "show", "svc/report", "--output", "json"])
        .json();
    assert_eq!(shown["owner"], "team-b");
    assert!(c.audit().iter().any(|e| e["type"] == "workload-transferred"
        && e["workload"] == "svc/report"
        && e["detail"]["from"] == "team-a"
        && e["detail"]["to"] == "team-b"));

    // --expires-at in the past: nothing, with the reason.
    let uid = format!("unix:uid:{}", leash_tests::my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "svc/old",
        "--owner",
        "team-b",
        "--selector",
        &uid,
        "--allow",
        "api",
        "--expires-at",
        "2020-01-01T00:00:00Z",
    ])
    .ok();
    c.wait_visible(0, "svc/old");
    c.leash(&["get", "api", "--as", "svc/old"])
        .code(2)
        .stderr_has(&["expired"]);
    c.leashctl(&[
        "policy",
        "explain",
        "--workload",
        "svc/old",
        "--credential",
        "api",
    ])
    .code(2);
}

#[test]
fn a_lease_issued_under_an_approval_survives_an_unrelated_policy_change() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.credential("other", &["--audience", "https://other.example"]);
    c.my_workload("ops/tool", "team-ops", &[]);
    apply_policy(&c, "approval.cedar", APPROVAL_POLICY, &[]);
    let id = pending(&c, &["api", "--action", "admin"]);
    c.leashctl(&["approval", "approve", &id]).ok();
    let f = c.get("api", &["--action", "admin"]);
    // The same rules plus one about another credential.
    apply_policy(
        &c,
        "approval-v2.cedar",
        &format!(
            "{APPROVAL_POLICY}\n@id(\"other-writes\")\npermit(principal, action == Leash::Action::\"write\", resource == Leash::Credential::\"other\");\n"
        ),
        &["--wait"],
    );
    let lease = c.lease(&f.lease_id);
    assert_eq!(
        lease["state"], "active",
        "an approved lease was revoked by a policy change that did not touch it: {lease}"
    );
}
