//! Runtime policy in Cedar: check errors with positions, forbid over permit,
//! TTL / host-label / time restrictions, action scopes in the token, re-evaluation of
//! active leases on a policy change, `policy explain` against what `Issue` does, and
//! `--allow` entries made before any policy.

use std::path::PathBuf;

use leash_tests::{my_uid, Cluster, Daemon, Options};

use crate::{apply_policy, claims, policy_file, tasks, API_AUD};

/// A workload for the test's own uid with no `--allow`: only Cedar policy grants it.
fn bare_workload(c: &Cluster, name: &str, owner: &str) {
    c.my_workload(name, owner, &[]);
}

/// Run `leashctl policy explain --workload W --credential C ARGS`.
fn explain(c: &Cluster, w: &str, cred: &str, args: &[&str]) -> leash_tests::Output {
    let mut a = vec!["policy", "explain", "--workload", w, "--credential", cred];
    a.extend_from_slice(args);
    c.leashctl(&a)
}

#[test]
fn policy_check_reports_errors_with_their_position() {
    let c = Cluster::control_plane_only();
    let bad = policy_file(
        &c,
        "bad.cedar",
        "// an unknown context attribute\npermit(principal, action, resource)\nwhen { context.nope == 1 };\n",
    );
    let bad_s = bad.to_str().expect("utf-8");
    let out = c.leashctl(&["policy", "check", bad_s]);
    out.code(1).stderr_has(&["nope", "problem(s)"]);
    assert!(
        out.stderr.contains(&format!("{bad_s}:3:8: ")),
        "no FILE:line:col for the unknown attribute\n{out}"
    );
    let syntax = policy_file(
        &c,
        "syntax.cedar",
        "// a syntax error\npermit(principal, action, resource)\n  when { context.ttl_seconds <= };\n",
    );
    let syntax_s = syntax.to_str().expect("utf-8");
    let out = c.leashctl(&["policy", "check", syntax_s]);
    out.code(1);
    assert!(
        out.stderr.contains(&format!("{syntax_s}:3:33: ")),
        "no FILE:line:col for the syntax error\n{out}"
    );
    // Nothing invalid is ever applied.
    c.leashctl(&["policy", "apply", bad_s]).code(1);
    c.leashctl(&["policy", "apply", syntax_s]).code(1);
    let shown = c.leashctl(&["policy", "show", "--output", "json"]).json();
    assert_eq!(shown["version"], 0, "{shown}");
    let good = policy_file(
        &c,
        "good.cedar",
        "permit(principal, action, resource)\nwhen { context.ttl_seconds <= 600 };\n",
    );
    c.leashctl(&["policy", "check", good.to_str().expect("utf-8")])
        .code(0)
        .stderr_has(&["valid"]);
}

#[test]
fn forbid_wins_over_permit_and_over_allow_links() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    // --allow api links a permit for every action; the forbid still wins.
    c.my_workload("ci/job", "team-ci", &["api"]);
    assert_eq!(c.get("api", &["--action", "write"]).json["action"], "write");
    apply_policy(
        &c,
        "precedence.cedar",
        r#"@id("everyone-reads-and-writes")
permit(principal, action in [Leash::Action::"read", Leash::Action::"write"], resource);

@id("no-writes")
forbid(principal, action == Leash::Action::"write", resource);
"#,
        &[],
    );
    assert_eq!(
        c.get("api", &["--action", "read", "--fresh"]).json["action"],
        "read"
    );
    c.leash(&["get", "api", "--action", "write", "--fresh"])
        .code(2)
        .stderr_has(&["no-writes"]);
    let out = explain(
        &c,
        "ci/job",
        "api",
        &["--action", "write", "--host", "host-1"],
    );
    out.code(2);
    assert!(
        out.stdout.contains("decision: DENY") && out.stdout.contains("determined by no-writes"),
        "{out}"
    );
    explain(&c, "ci/job", "api", &["--action", "read"]).code(0);
}

#[test]
fn policy_caps_the_ttl() {
    let c = Cluster::start();
    // max_ttl well above 20m: only policy stands in the way.
    c.credential(
        "api",
        &["--audience", API_AUD, "--ttl", "5m", "--max-ttl", "1h"],
    );
    bare_workload(&c, "ci/job", "team-ci");
    apply_policy(
        &c,
        "ttl.cedar",
        "@id(\"ten-minutes-max\")\npermit(principal, action, resource)\nwhen { context.ttl_seconds <= 600 };\n",
        &[],
    );
    let five = c.get("api", &["--ttl", "5m"]);
    let cl = claims(&five.token);
    assert_eq!(
        cl["exp"].as_i64().expect("exp") - cl["iat"].as_i64().expect("iat"),
        300
    );
    c.get("api", &["--ttl", "10m"]);
    let out = c.leash(&["get", "api", "--ttl", "20m"]);
    out.code(2).stderr_has(&["no policy permits"]);
    assert!(out.stdout.is_empty(), "{out}");
    explain(&c, "ci/job", "api", &["--ttl", "20m"]).code(2);
    explain(&c, "ci/job", "api", &["--ttl", "10m"]).code(0);
}

#[test]
fn policy_pins_hosts_by_label() {
    let mut c = Cluster::with(Options::default().no_agent());
    let ci = c.add_agent("runner-ci", &[("role", "ci")]);
    let dev = c.add_agent("laptop-dev", &[("role", "dev")]);
    c.credential("api", &["--audience", API_AUD]);
    bare_workload(&c, "ci/job", "team-ci");
    apply_policy(
        &c,
        "hosts.cedar",
        r#"@id("ci-runners-only")
permit(principal, action, resource)
when { context.host.hasTag("role") && context.host.getTag("role") == "ci" };
"#,
        &[],
    );
    let f = c.get_at(ci, "api", &[]);
    assert_eq!(claims(&f.token)["leash"]["host"], "runner-ci");
    c.leash_at(dev, &["get", "api"])
        .code(2)
        .stderr_has(&["no policy permits"]);
    explain(&c, "ci/job", "api", &["--host", "runner-ci"]).code(0);
    explain(&c, "ci/job", "api", &["--host", "laptop-dev"]).code(2);
    assert!(c
        .audit()
        .iter()
        .any(|e| e["type"] == "denied" && e["host"] == "laptop-dev" && e["workload"] == "ci/job"));
}

#[test]
fn policy_restricts_by_time_as_explain_at_shows_and_issue_agrees_now() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    bare_workload(&c, "ci/job", "team-ci");
    apply_policy(
        &c,
        "time.cedar",
        r#"@id("deploys")
permit(principal, action == Leash::Action::"deploy", resource);

@id("no-night-deploys")
forbid(principal, action == Leash::Action::"deploy", resource)
when { context.hour < 6 || context.hour >= 20 };

@id("writes")
permit(principal, action == Leash::Action::"write", resource);

@id("no-weekend-writes")
forbid(principal, action == Leash::Action::"write", resource)
when { context.weekday >= 6 };

@id("reads-until-2000")
permit(principal, action == Leash::Action::"read", resource)
when { context.now < datetime("2000-01-01T00:00:00Z") };
"#,
        &[],
    );
    // 2026-11-28 is a Saturday, 2026-11-30 a Monday.
    let cases = [
        ("deploy", "2026-11-28T03:00:00Z", 2, "no-night-deploys"),
        ("deploy", "2026-11-28T12:00:00Z", 0, "deploys"),
        ("deploy", "2026-11-28T20:00:00Z", 2, "no-night-deploys"),
        ("write", "2026-11-28T12:00:00Z", 2, "no-weekend-writes"),
        ("write", "2026-11-30T12:00:00Z", 0, "writes"),
        ("read", "1999-12-31T23:59:59Z", 0, "reads-until-2000"),
        ("read", "2000-01-01T00:00:00Z", 2, "no policy matched"),
    ];
    for (action, at, code, why) in cases {
        let out = explain(
            &c,
            "ci/job",
            "api",
            &["--action", action, "--host", "host-1", "--at", at],
        );
        out.code(code);
        assert!(out.stdout.contains(why), "{action} at {at}: {why}\n{out}");
    }
    // Issue decides with the real clock, as explain does without --at.
    for action in ["deploy", "write", "read"] {
        let e = explain(
            &c,
            "ci/job",
            "api",
            &["--action", action, "--host", "host-1"],
        )
        .code;
        let g = c.leash(&["get", "api", "--action", action]).code;
        assert_eq!(e, g, "{action} now: explain exits {e}, leash get exits {g}");
    }
    c.leash(&["get", "api", "--action", "read"])
        .code(2)
        .stderr_has(&["no policy permits"]);
}

/// Seconds from now (by the system clock) to the next Saturday at `hour`:30 UTC.
fn secs_to_next_saturday(hour: i64) -> i64 {
    let now = leash_tests::now_ms().div_euclid(1000);
    let day = now.div_euclid(86_400);
    // 1970-01-01 was a Thursday; Monday is 1 and Saturday 6, as `context.weekday`.
    let weekday = (day + 3).rem_euclid(7) + 1;
    let mut at = (day + (6 - weekday).rem_euclid(7)) * 86_400 + hour * 3_600 + 1_800;
    if at <= now {
        at += 7 * 86_400;
    }
    at - now
}

#[test]
fn moving_the_daemons_clock_to_a_saturday_night_refuses_a_deploy_and_the_day_allows_it() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    bare_workload(&c, "ci/job", "team-ci");
    apply_policy(
        &c,
        "night.cedar",
        r#"@id("deploys")
permit(principal, action == Leash::Action::"deploy", resource);

@id("no-night-deploys")
forbid(principal, action == Leash::Action::"deploy", resource)
when { context.hour < 6 || context.hour >= 20 };
"#,
        &[],
    );
    // To the next Saturday, 03:30 UTC, on the control plane's and the agent's clock.
    c.advance_clock(std::time::Duration::from_secs(
        secs_to_next_saturday(3).try_into().expect("ahead"),
    ));
    // The jump makes the agent fail closed until its next heartbeat.
    c.wait_caught_up_at(0);
    c.leash(&["get", "api", "--action", "deploy", "--fresh"])
        .code(2);
    let e = explain(
        &c,
        "ci/job",
        "api",
        &["--action", "deploy", "--host", "host-1"],
    );
    e.code(2);
    assert!(e.stdout.contains("no-night-deploys"), "{e}");
    // Nine hours on, 12:30 the same Saturday: the same policy lets it through, so it is
    // the moved clock that decided.
    c.advance_clock(std::time::Duration::from_secs(9 * 3_600));
    c.wait_caught_up_at(0);
    let day = c.get("api", &["--action", "deploy", "--fresh"]);
    assert_eq!(claims(&day.token)["leash"]["action"], "deploy");
    let e = explain(
        &c,
        "ci/job",
        "api",
        &["--action", "deploy", "--host", "host-1"],
    );
    e.code(0);
    assert!(e.stdout.contains("deploys"), "{e}");
    let audit = c.audit();
    assert!(
        audit
            .iter()
            .any(|ev| ev["type"] == "denied" && ev["workload"] == "ci/job"),
        "the night refusal was not audited"
    );
}

#[test]
fn action_scoping_shows_in_the_scope_claim() {
    let c = Cluster::start();
    c.credential(
        "deploy-api",
        &[
            "--audience",
            "https://deploy.example",
            "--scope",
            "read=deploy:read",
            "--scope",
            "deploy=deploy:write",
            "--scope",
            "deploy=deploy:restart",
        ],
    );
    c.credential("plain", &["--audience", API_AUD]);
    c.my_workload("ci/job", "team-ci", &["deploy-api", "plain"]);
    let deploy = c.get("deploy-api", &["--action", "deploy"]);
    let cl = claims(&deploy.token);
    assert_eq!(cl["scope"], "deploy:write deploy:restart", "{cl}");
    assert_eq!(cl["leash"]["action"], "deploy");
    assert_eq!(c.lease(&deploy.lease_id)["action"], "deploy");
    let read = c.get("deploy-api", &["--action", "read"]);
    let cl = claims(&read.token);
    assert_eq!(cl["scope"], "deploy:read", "{cl}");
    assert_eq!(cl["leash"]["action"], "read");
    // The default action is read.
    assert_eq!(
        claims(&c.get("deploy-api", &[]).token)["scope"],
        "deploy:read"
    );
    // Scopes defined, none for this action: a clear error, exit 1.
    let out = c.leash(&["get", "deploy-api", "--action", "write"]);
    out.code(1)
        .stderr_has(&["no scopes for action \"write\"", "deploy, read"]);
    assert!(out.stdout.is_empty(), "{out}");
    // No scopes defined: no scope claim.
    let cl = claims(&c.get("plain", &["--action", "deploy"]).token);
    assert!(cl.get("scope").is_none(), "{cl}");
    assert_eq!(cl["leash"]["action"], "deploy");
    // leash exec --env VAR=CRED:ACTION asks for that action.
    let work = c.dir().join("exec-scope");
    std::fs::create_dir_all(&work).expect("work dir");
    let mut cmd = c.leash_command(0);
    cmd.current_dir(&work).env_remove("LEASH_TASK").args([
        "exec",
        "--env",
        "T=deploy-api:deploy",
        "--",
        "sh",
        "-c",
        r#"printf %s "$T" > token"#,
    ]);
    c.run(cmd).code(0);
    let t = std::fs::read_to_string(work.join("token")).expect("token file");
    c.remember_secret(&t);
    let cl = claims(&t);
    assert_eq!(cl["scope"], "deploy:write deploy:restart", "{cl}");
    assert_eq!(cl["leash"]["action"], "deploy");
}

#[test]
fn policy_change_revokes_and_wipes_what_it_no_longer_permits() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.credential("db", &["--audience", "https://db.example"]);
    bare_workload(&c, "team/keep", "team-a");
    bare_workload(&c, "team/lose", "team-b");
    apply_policy(
        &c,
        "v1.cedar",
        "@id(\"all\")\npermit(principal, action, resource);\n",
        &[],
    );
    let keep = c.get("api", &["--as", "team/keep"]);
    let lose = c.get("db", &["--as", "team/lose"]);
    assert_eq!(c.cached_at(0), 2);
    let out = apply_policy(
        &c,
        "v2.cedar",
        r#"@id("all")
permit(principal, action, resource);

@id("not-lose")
forbid(principal == Leash::Workload::"team/lose", action, resource);
"#,
        &["--wait", "--timeout", "10s"],
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"2"), "the new version\n{out}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("wiped on 1/1 hosts in ")),
        "{out}"
    );
    out.stderr_has(&["1 active lease(s) no longer permitted were revoked"]);
    // Acknowledged means wiped.
    assert_eq!(c.cached_at(0), 1);
    let l = c.lease(&lose.lease_id);
    assert_eq!(l["state"], "revoked", "{l}");
    assert!(
        l["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("policy version 2"),
        "{l}"
    );
    assert_eq!(c.lease(&keep.lease_id)["state"], "active");
    let again = c.get("api", &["--as", "team/keep"]);
    assert_eq!(again.lease_id, keep.lease_id);
    assert!(again.cached);
    c.leash(&["get", "db", "--as", "team/lose"])
        .code(2)
        .stderr_has(&["not-lose"]);
    let intro = c.leashctl(&["introspect", &lose.token]).json();
    assert_eq!(intro["active"], false, "{intro}");
    let changed: Vec<serde_json::Value> = c
        .audit()
        .into_iter()
        .filter(|e| e["type"] == "policy-changed")
        .collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(changed[0]["detail"]["version"], 1, "{changed:?}");
    assert_eq!(changed[0]["detail"]["revoked"], 0, "{changed:?}");
}

#[test]
fn policy_changed_event_records_the_version_and_how_many_leases_it_revoked() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    bare_workload(&c, "team/lose", "team-b");
    apply_policy(
        &c,
        "v1.cedar",
        "@id(\"all\")\npermit(principal, action, resource);\n",
        &[],
    );
    c.get("api", &[]);
    apply_policy(
        &c,
        "v2.cedar",
        "@id(\"none\")\nforbid(principal, action, resource);\n",
        &["--wait"],
    );
    let changed: Vec<serde_json::Value> = c
        .audit()
        .into_iter()
        .filter(|e| e["type"] == "policy-changed")
        .collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(changed[1]["detail"]["version"], 2, "{}", changed[1]);
    assert_eq!(changed[1]["detail"]["revoked"], 1, "{}", changed[1]);
}

/// A task-bound credential fetched by `leash exec --task-name NAME` whose command waits
/// for a `done` file; returns the running `leash exec`, its work dir and the token.
fn task_holding_a_credential(c: &Cluster, name: &str) -> (Daemon, PathBuf, String) {
    let work = tasks::workdir(c, name);
    let cmd = tasks::exec_command(
        c,
        &work,
        &[
            "--task-name",
            name,
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token.tmp && mv token.tmp token
i=0; while [ ! -e done ]; do sleep 0.05; i=$((i+1)); if [ $i -gt 600 ]; then exit 98; fi; done"#,
        ],
    );
    let d = Daemon::spawn("leash exec", cmd);
    tasks::wait_file(c, &work, "token");
    let token = tasks::read_token(c, &work, "token");
    (d, work, token)
}

#[test]
fn task_context_is_seen_at_issuance_and_kept_when_leases_are_re_evaluated() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    bare_workload(&c, "ci/job", "team-ci");
    let v1 = "@id(\"tasks-only\")\npermit(principal, action, resource)\nwhen { context.task.present };\n";
    apply_policy(&c, "v1.cedar", v1, &[]);
    c.leash(&["get", "api"])
        .code(2)
        .stderr_has(&["no policy permits"]);
    let (mut d, work, token) = task_holding_a_credential(&c, "deploy-42");
    let lease_id = claims(&token)["jti"].as_str().expect("jti").to_string();
    // Re-evaluated under the context it was issued with: still inside a task.
    let out = apply_policy(
        &c,
        "v2.cedar",
        &format!("{v1}\n@id(\"unrelated\")\nforbid(principal, action == Leash::Action::\"admin\", resource);\n"),
        &["--wait"],
    );
    out.stderr_has(&["0 active lease(s)"]);
    assert_eq!(c.lease(&lease_id)["state"], "active");
    std::fs::write(work.join("done"), "").expect("touch");
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(20)), 0);
    // `leash exec` returns once the agent has wiped; the completion follows at once.
    c.eventually("the task's lease is completed", || {
        (c.lease(&lease_id)["state"] == "completed").then_some(())
    });
}

#[test]
fn policy_sees_the_task_name() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    bare_workload(&c, "ci/job", "team-ci");
    apply_policy(
        &c,
        "named.cedar",
        "@id(\"deploy-42-only\")\npermit(principal, action, resource)\nwhen { context.task.present && context.task.name == \"deploy-42\" };\n",
        &[],
    );
    let work = tasks::workdir(&c, "named");
    tasks::exec(
        &c,
        &work,
        &["--task-name", "other", "--env", "T=api", "--", "true"],
    )
    .code(125)
    .stderr_has(&["no policy permits"]);
    tasks::exec(
        &c,
        &work,
        &["--task-name", "deploy-42", "--env", "T=api", "--", "true"],
    )
    .code(0);
}

#[test]
fn explain_agrees_with_issue_on_a_table_of_cases() {
    let mut c = Cluster::with(Options::default().no_agent());
    c.add_agent("runner-1", &[("role", "ci")]);
    c.credential(
        "api",
        &["--audience", API_AUD, "--ttl", "5m", "--max-ttl", "1h"],
    );
    c.credential("db", &["--audience", "https://db.example"]);
    bare_workload(&c, "ci/job", "team-ci");
    bare_workload(&c, "ci/off", "team-ci");
    c.leashctl(&["workload", "disable", "ci/off"]).ok();
    apply_policy(
        &c,
        "table.cedar",
        r#"@id("read-short")
permit(principal, action == Leash::Action::"read", resource)
when { context.ttl_seconds <= 600 };

@id("deploy-from-ci")
permit(principal, action == Leash::Action::"deploy", resource)
when { context.host.hasTag("role") && context.host.getTag("role") == "ci" };

@id("no-db-deploys")
forbid(principal, action == Leash::Action::"deploy", resource == Leash::Credential::"db");

@id("admin-needs-approval")
@approval("required")
permit(principal, action == Leash::Action::"admin", resource);
"#,
        &[],
    );
    // (workload, credential, action, ttl, explain's exit code, leash get's exit code)
    let cases: [(&str, &str, &str, &str, i32, i32); 9] = [
        ("ci/job", "api", "read", "5m", 0, 0),
        ("ci/job", "api", "read", "10m", 0, 0),
        ("ci/job", "api", "read", "20m", 2, 2),
        ("ci/job", "api", "deploy", "5m", 0, 0),
        ("ci/job", "db", "deploy", "5m", 2, 2),
        ("ci/job", "api", "write", "5m", 2, 2),
        ("ci/job", "api", "admin", "5m", 3, 3),
        // Refused before policy: explain says deny, Issue calls it bad input.
        ("ci/job", "api", "read", "2h", 2, 1),
        ("ci/off", "api", "read", "5m", 2, 2),
    ];
    for (w, cred, action, ttl, want_explain, want_get) in cases {
        let e = explain(
            &c,
            w,
            cred,
            &["--action", action, "--ttl", ttl, "--host", "runner-1"],
        );
        let g = c.leash(&[
            "get", cred, "--as", w, "--action", action, "--ttl", ttl, "--fresh",
        ]);
        let case = format!("{w} {cred} {action} ttl {ttl}");
        assert_eq!(
            (e.code, g.code),
            (want_explain, want_get),
            "{case}: (explain, get) exit codes\n{e}\nleash get stderr: {}",
            g.stderr
        );
        assert_eq!(
            e.code == 0,
            g.code == 0,
            "{case}: explain and Issue disagree"
        );
        if want_get == 0 {
            assert_eq!(claims(g.stdout.trim())["leash"]["action"], action);
        }
    }
    // Two more refusals before policy: an audience the credential does not allow, and a
    // workload pinned to hosts this one is not (the agent never sees it, so Issue is
    // asked through `leash get` only for the first).
    let e = explain(
        &c,
        "ci/job",
        "api",
        &["--audience", "https://other.example", "--host", "runner-1"],
    );
    e.code(2);
    assert!(
        e.stdout.contains("is not allowed for credential \"api\""),
        "explain names the refusal as Issue does\n{e}"
    );
    c.leash(&[
        "get",
        "api",
        "--as",
        "ci/job",
        "--audience",
        "https://other.example",
    ])
    .code(1)
    .stderr_has(&["is not allowed for credential \"api\""]);
    let uid = format!("unix:uid:{}", leash_tests::my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "dev/only",
        "--owner",
        "team-dev",
        "--kind",
        "job",
        "--selector",
        &uid,
        "--hosts",
        "role=dev",
        "--allow",
        "api",
    ])
    .ok();
    let e = explain(&c, "dev/only", "api", &["--host", "runner-1"]);
    e.code(2);
    assert!(
        e.stdout.contains("may not run on host \"runner-1\""),
        "explain names the refusal as Issue does\n{e}"
    );
    explain(&c, "dev/only", "api", &[]).code(0);
    // Nothing was issued for the denied cases.
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    assert_eq!(leases.as_array().map(Vec::len), Some(3), "{leases}");
}

#[test]
fn allow_entries_survive_policies_and_show_in_policy_show() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.credential("other", &["--audience", "https://other.example"]);
    // Made before any policy exists.
    c.my_workload("legacy/job", "team-old", &["api"]);
    let before = c.get("api", &[]);
    let shown = c.leashctl(&["policy", "show", "--output", "json"]).json();
    assert_eq!(shown["version"], 0, "{shown}");
    apply_policy(
        &c,
        "v1.cedar",
        "@id(\"other-reads\")\npermit(principal, action == Leash::Action::\"read\", resource == Leash::Credential::\"other\");\n",
        &[],
    );
    // The --allow link keeps the lease permitted and lets new issuance through.
    assert_eq!(c.lease(&before.lease_id)["state"], "active");
    let after = c.get("api", &["--fresh"]);
    assert_ne!(after.lease_id, before.lease_id);
    assert_eq!(c.lease(&after.lease_id)["policy_version"], 1);
    let out = explain(&c, "legacy/job", "api", &["--host", "host-1"]);
    out.code(0);
    assert!(out.stdout.contains("allow:legacy/job:api"), "{out}");
    let show = c.leashctl(&["policy", "show"]).ok();
    assert!(show.contains("allow:legacy/job:api"), "{show}");
    assert!(show.contains("other-reads"), "{show}");

    apply_policy(
        &c,
        "v2.cedar",
        "@id(\"other-writes\")\npermit(principal, action == Leash::Action::\"write\", resource == Leash::Credential::\"other\");\n",
        &[],
    );
    c.get("api", &["--fresh"]);
    let v1 = c
        .leashctl(&["policy", "show", "--version", "1", "--output", "json"])
        .json();
    assert_eq!(v1["version"], 1, "{v1}");
    assert!(
        v1["text"]
            .as_str()
            .unwrap_or_default()
            .contains("other-reads"),
        "{v1}"
    );
    assert!(
        !v1["text"]
            .as_str()
            .unwrap_or_default()
            .contains("other-writes"),
        "{v1}"
    );
    if my_uid() == 0 {
        assert_eq!(v1["applied_by"], "root", "{v1}");
    }
    let cur = c.leashctl(&["policy", "show", "--output", "json"]).json();
    assert_eq!(cur["version"], 2);
    c.leashctl(&["policy", "show", "--version", "9"]).code(4);
    let diff = c.leashctl(&["policy", "diff"]).ok();
    assert!(diff.contains("version 1 -> 2"), "{diff}");
    let minus = diff
        .lines()
        .any(|l| l.starts_with('-') && l.contains("other-reads"));
    let plus = diff
        .lines()
        .any(|l| l.starts_with('+') && l.contains("other-writes"));
    assert!(minus && plus, "{diff}");
}
