//! Brokered secrets through the real `leashctl` and `leash`: `secret put` and issuance
//! (policy, actions, disable, revocation wiping the agent's copy), every bad input with
//! its exit code and without the value in any message, versions and usage, rotation
//! (`--wait`, `--grace` across a restart), removal, import from an env file, no value in
//! plain text in the database files, and `kill -9` during rotations.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use leash_tests::{files_under, Cluster, Options};

/// A value with no trailing newline, distinctive enough to grep for.
const VALUE: &str = "sk_live_4f9b2c7e1a-leash-test-value";

/// Store `value` as secret `name` (owner team-ci) with `extra` flags; must succeed.
fn put(c: &Cluster, name: &str, value: &str, extra: &[&str]) {
    let mut args = vec!["secret", "put", name, "--owner", "team-ci"];
    args.extend_from_slice(extra);
    let out = c.leashctl_stdin(&args, value);
    out.code(0);
    c.remember_secret(value);
}

/// `leash get NAME EXTRA`: the value printed (a trailing newline, if the client adds one,
/// taken off).
#[track_caller]
fn value(c: &Cluster, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["get", name];
    args.extend_from_slice(extra);
    let out = c.leash(&args);
    out.code(0);
    out.stdout.trim_end_matches('\n').to_string()
}

/// `leash get NAME --output json EXTRA`: (value, lease id, cached).
#[track_caller]
fn fetch(c: &Cluster, name: &str, extra: &[&str]) -> (String, String, bool) {
    let mut args = vec!["get", name, "--output", "json"];
    args.extend_from_slice(extra);
    let j = c.leash(&args).json();
    // The value is `value` for a secret (`token` from a client that predates secrets).
    let v = j["value"]
        .as_str()
        .or_else(|| j["token"].as_str())
        .unwrap_or_default()
        .to_string();
    let id = j["lease_id"].as_str().unwrap_or_default().to_string();
    assert!(
        !v.is_empty() && !id.is_empty(),
        "no value or lease id in {j}"
    );
    (v, id, j["cached"].as_bool().unwrap_or(false))
}

/// The 12 hex digits Leash shows for a value.
fn fingerprint(v: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, v.as_bytes()).as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cluster with workload `ci/job` (owner team-ci, this uid) allowed `allow`.
fn cluster(allow: &[&str]) -> Cluster {
    let c = Cluster::start();
    c.my_workload("ci/job", "team-ci", allow);
    c
}

#[test]
fn a_secret_is_issued_like_a_jwt_and_revoke_wipes_it() {
    let c = cluster(&["stripe"]);
    put(&c, "stripe", VALUE, &["--description", "Stripe live key"]);
    assert_eq!(value(&c, "stripe", &[]), VALUE);
    let (v, lease_id, cached) = fetch(&c, "stripe", &[]);
    assert_eq!((v.as_str(), cached), (VALUE, true));
    let lease = c.lease(&lease_id);
    assert_eq!(lease["credential"], "stripe");
    assert_eq!(lease["version"], 1, "{lease}");
    assert_eq!(lease["fingerprint"], fingerprint(VALUE), "{lease}");
    // Revoking the lease wipes the agent's copy, as for a JWT.
    assert_eq!(c.cached_at(0), 1);
    let out = c.leashctl(&["revoke", "--lease", &lease_id, "--wait", "--timeout", "10s"]);
    out.code(0);
    assert!(out.stdout.starts_with("wiped on 1/1 hosts in "), "{out}");
    assert_eq!(c.cached_at(0), 0);
    let (v, again, cached) = fetch(&c, "stripe", &[]);
    assert_eq!(v, VALUE);
    assert!(again != lease_id && !cached);
    // Audited with the version and fingerprint, never the value.
    let audit = c.audit();
    let put_ev = audit
        .iter()
        .find(|e| e["type"] == "secret-put")
        .expect("secret-put event");
    assert_eq!(put_ev["detail"]["version"], 1);
    assert_eq!(put_ev["detail"]["size"], VALUE.len());
    assert_eq!(put_ev["detail"]["fingerprint"], fingerprint(VALUE));
    let issued = audit
        .iter()
        .find(|e| e["type"] == "issued" && e["lease"] == lease_id.as_str())
        .expect("issued event");
    assert_eq!(issued["detail"]["version"], 1);
    // Listed with the credentials (one namespace), without a value.
    let list = c.leashctl(&["credential", "list", "--output", "json"]);
    assert!(list.stdout.contains("\"secret\""), "{list}");
    c.assert_no_secret_leaked();
}

#[test]
fn bad_input_is_refused_with_its_exit_code_and_never_echoes_the_value() {
    let c = Cluster::with(Options::default().config("max_secret_bytes = 64"));
    c.my_workload("ci/job", "team-ci", &["s", "api"]);
    let refused = |args: &[&str], input: &str, code: i32, words: &[&str]| {
        let out = c.leashctl_stdin(args, input);
        out.code(code).stderr_has(words);
        assert!(
            input.len() < 8 || !out.stderr.contains(input.trim()),
            "the value was echoed\n{out}"
        );
        out
    };
    let put = ["secret", "put", "s", "--owner", "team-ci"];
    refused(&put, "", 1, &["empty"]);
    refused(
        &put,
        &"x".repeat(65),
        1,
        &["65 bytes", "64", "max_secret_bytes"],
    );
    refused(&["secret", "put", "s"], "hunter2-value", 1, &["owner"]);
    refused(
        &["secret", "put", "s", "--owner", "t", "--format", "json"],
        "[\"hunter2-value\"]",
        1,
        &["not an object"],
    );
    refused(
        &["secret", "put", "s", "--owner", "t", "--format", "json"],
        "{\"k\": hunter2-value}",
        1,
        &["not valid JSON", "line 1"],
    );
    refused(
        &["secret", "put", "s", "--owner", "t", "--format", "env"],
        "A=1\nhunter2-value\n",
        1,
        &["line 2", "KEY=VALUE"],
    );
    refused(
        &["secret", "put", "s", "--owner", "t", "--format", "yaml"],
        "hunter2-value",
        1,
        &["yaml"],
    );
    // Never from argv.
    refused(
        &["secret", "put", "s", "--owner", "t", "hunter2-value"],
        "",
        1,
        &[],
    );
    refused(
        &["secret", "put", "s", "--owner", "t", "--actions", "fly"],
        "hunter2-value",
        1,
        &["fly", "configured actions"],
    );
    refused(
        &["secret", "put", "a b", "--owner", "t"],
        "hunter2-value",
        1,
        &["invalid secret name"],
    );
    // Not UTF-8.
    let bin = c.dir().join("binary");
    std::fs::write(&bin, [0x66, 0x6f, 0xff, 0xfe, 0x6f]).expect("write");
    let out = c.leashctl(&[
        "secret",
        "put",
        "s",
        "--owner",
        "t",
        "--from-file",
        bin.to_str().expect("utf-8 path"),
    ]);
    out.code(1).stderr_has(&["not UTF-8", "byte 2"]);
    // Nothing was stored by any of these.
    c.leashctl(&["secret", "versions", "s"])
        .code(4)
        .stderr_has(&["no secret named \"s\""]);
    // Secrets and credentials share one namespace, both ways.
    c.credential("api", &["--audience", "https://api.example"]);
    refused(
        &["secret", "put", "api", "--owner", "t"],
        "hunter2-value",
        1,
        &["a credential named \"api\" (kind jwt) exists"],
    );
    c.leashctl_stdin(&["secret", "put", "s", "--owner", "t"], "v1-value")
        .code(0);
    c.leashctl(&["credential", "add", "s", "--audience", "https://x.example"])
        .code(1)
        .stderr_has(&["a credential named \"s\" (kind secret) exists"]);
    c.leashctl(&["credential", "add", "t2", "--kind", "secret"])
        .code(1)
        .stderr_has(&["leashctl secret put"]);
    // Unknown names.
    for args in [
        vec!["secret", "show", "nope"],
        vec!["secret", "versions", "nope"],
        vec!["secret", "disable", "nope"],
        vec!["secret", "remove", "nope"],
    ] {
        c.leashctl(&args).code(4).stderr_has(&["nope"]);
    }
    refused(&["secret", "rotate", "nope"], "v2-value", 4, &["nope"]);
    c.leash(&["get", "nope"]).code(4);
    // A secret takes no audience.
    c.leash(&["get", "s", "--audience", "https://x.example"])
        .code(1)
        .stderr_has(&["takes no audience"]);
}

#[test]
fn actions_and_disable_refuse_with_the_reason() {
    let c = cluster(&["bot"]);
    put(
        &c,
        "bot",
        VALUE,
        &["--actions", "read", "--label", "team=web"],
    );
    assert_eq!(value(&c, "bot", &["--action", "read"]), VALUE);
    c.leash(&["get", "bot", "--action", "deploy"])
        .code(2)
        .stderr_has(&["serves only the actions read"]);
    assert_eq!(c.cached_at(0), 1);
    let out = c.leashctl(&["secret", "disable", "bot", "--reason", "leaked"]);
    out.code(0);
    c.eventually("the disabled secret's copy is wiped", || {
        (c.cached_at(0) == 0).then_some(())
    });
    c.leash(&["get", "bot"])
        .code(2)
        .stderr_has(&["credential \"bot\" is disabled"]);
    c.leashctl_stdin(&["secret", "rotate", "bot"], "another-value")
        .code(1)
        .stderr_has(&["disabled"]);
    c.leashctl(&["secret", "enable", "bot"]).code(0);
    assert_eq!(value(&c, "bot", &[]), VALUE);
    // Policy sees the secret's kind and labels.
    let policy = "forbid(principal, action, resource is Leash::Credential)\n  when { resource.kind == \"secret\" && resource.hasTag(\"team\") && resource.getTag(\"team\") == \"web\" };\n";
    crate::apply_policy(&c, "p.cedar", policy, &[]);
    c.leash(&["get", "bot", "--fresh"]).code(2);
}

#[test]
fn versions_and_show_list_metadata_and_usage_never_the_value() {
    let c = cluster(&["db"]);
    put(&c, "db", "v1-secret-value", &["--ttl", "10m"]);
    let (_, _, _) = fetch(&c, "db", &[]);
    c.leashctl_stdin(&["secret", "put", "db"], "v2-secret-value-longer")
        .code(0);
    c.remember_secret("v2-secret-value-longer");
    // The lease of version 1 keeps its value; a fresh one gets version 2.
    assert_eq!(value(&c, "db", &[]), "v1-secret-value");
    assert_eq!(value(&c, "db", &["--fresh"]), "v2-secret-value-longer");
    let v = c
        .leashctl(&["secret", "versions", "db", "--output", "json"])
        .json();
    let vs = v["versions"].as_array().expect("versions");
    assert_eq!(vs.len(), 2, "{v}");
    assert_eq!(vs[0]["version"], 1);
    assert_eq!(vs[0]["size"], 15);
    assert_eq!(vs[0]["fingerprint"], fingerprint("v1-secret-value"));
    assert_eq!(vs[0]["current"], false);
    assert_eq!(vs[1]["current"], true);
    assert!(vs[1]["created_by"].as_str().is_some_and(|s| !s.is_empty()));
    let table = c.leashctl(&["secret", "versions", "db"]);
    assert!(table.stdout.starts_with("VERSION"), "{table}");
    let show = c
        .leashctl(&["secret", "show", "db", "--output", "json"])
        .json();
    assert_eq!(show["current_version"], 2);
    assert_eq!(show["owner"], "team-ci");
    assert_eq!(show["default_ttl_seconds"], 600);
    assert_eq!(show["active_leases"], 2);
    let usage = show["usage"].as_array().expect("usage");
    let rows: Vec<(String, u64, String)> = usage
        .iter()
        .map(|u| {
            (
                u["workload"].as_str().unwrap_or_default().to_string(),
                u["version"].as_u64().unwrap_or_default(),
                u["host"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("ci/job".to_string(), 1, "host-1".to_string()),
            ("ci/job".to_string(), 2, "host-1".to_string())
        ]
    );
    let text = c.leashctl(&["secret", "show", "db"]);
    text.code(0);
    for out in [&text.stdout, &table.stdout] {
        assert!(!out.contains("secret-value"), "{out}");
    }
    c.assert_no_secret_leaked();
}

#[test]
fn rotate_wait_wipes_older_versions_and_the_next_fetch_gets_the_new_one() {
    let c = cluster(&["api-key"]);
    put(&c, "api-key", "old-api-key-value", &[]);
    let (_, old_lease, _) = fetch(&c, "api-key", &[]);
    let out = c.leashctl_stdin(
        &["secret", "rotate", "api-key", "--wait", "--timeout", "10s"],
        "new-api-key-value",
    );
    out.code(0)
        .stderr_has(&["version 2 is current", "revoked 1 lease(s) at sequence"]);
    c.remember_secret("new-api-key-value");
    assert!(out.stdout.starts_with("wiped on 1/1 hosts in "), "{out}");
    assert_eq!(c.cached_at(0), 0);
    let lease = c.lease(&old_lease);
    assert_eq!(lease["state"], "revoked");
    assert_eq!(lease["reason"], "rotated to version 2");
    // A script that asks again gets the new version.
    assert_eq!(value(&c, "api-key", &[]), "new-api-key-value");
    let rotated = c
        .audit()
        .into_iter()
        .find(|e| e["type"] == "secret-rotated")
        .expect("event");
    assert_eq!(rotated["detail"]["version"], 2);
    assert_eq!(rotated["detail"]["leases"], 1);
    // Without --wait the revocation's sequence number is printed, as `revoke` does.
    let out = c.leashctl_stdin(&["secret", "rotate", "api-key"], "third-api-key-value");
    out.code(0);
    assert!(out.stdout.trim().parse::<u64>().is_ok(), "{out}");
    c.leashctl_stdin(
        &["secret", "rotate", "api-key", "--wait", "--grace", "5m"],
        "x-value",
    )
    .code(1);
}

#[test]
fn rotate_with_grace_revokes_later_even_across_a_restart() {
    let mut c = cluster(&["token"]);
    put(&c, "token", "grace-old-value", &["--ttl", "1h"]);
    let (_, old_lease, _) = fetch(&c, "token", &[]);
    let out = c.leashctl_stdin(
        &["secret", "rotate", "token", "--grace", "5m"],
        "grace-new-value",
    );
    out.code(0)
        .stderr_has(&["1 lease(s) of older versions will be revoked at"]);
    c.remember_secret("grace-new-value");
    // Within the grace the agent serves its cached copy; --fresh gets the new version.
    let (v, id, cached) = fetch(&c, "token", &[]);
    assert_eq!(
        (v.as_str(), id.as_str(), cached),
        ("grace-old-value", old_lease.as_str(), true)
    );
    assert_eq!(value(&c, "token", &["--fresh"]), "grace-new-value");
    // The promise is durable: restart before the grace ends.
    c.restart_control_plane();
    c.advance_clock(Duration::from_secs(4 * 60));
    c.wait_caught_up_at(0);
    assert_eq!(c.lease(&old_lease)["state"], "active");
    c.advance_clock(Duration::from_secs(61));
    c.eventually("the scheduled revocation ran", || {
        (c.lease(&old_lease)["state"] == "revoked").then_some(())
    });
    assert_eq!(c.lease(&old_lease)["reason"], "rotated to version 2");
    c.wait_caught_up_at(0);
    // The agent wiped the old copy: the next fetch is the new version.
    c.eventually("the old copy is wiped", || {
        let (v, _, _) = fetch(&c, "token", &[]);
        (v == "grace-new-value").then_some(())
    });
}

#[test]
fn remove_asks_for_yes_with_active_leases_and_takes_everything_back() {
    let c = cluster(&["gone"]);
    put(&c, "gone", VALUE, &[]);
    fetch(&c, "gone", &[]);
    c.leashctl(&["secret", "remove", "gone"])
        .code(1)
        .stderr_has(&["1 active leases; add --yes to revoke them and remove the secret"]);
    assert_eq!(value(&c, "gone", &[]), VALUE);
    let out = c.leashctl(&["secret", "remove", "gone", "--yes"]);
    out.code(0)
        .stderr_has(&["removed with its 1 version(s)", "revoked 1 lease(s)"]);
    c.eventually("the removed secret's copy is wiped", || {
        (c.cached_at(0) == 0).then_some(())
    });
    c.leash(&["get", "gone"]).code(4);
    c.leashctl(&["secret", "versions", "gone"]).code(4);
    assert!(c.audit().iter().any(|e| e["type"] == "secret-removed"));
    // The name is free again, for any kind.
    c.credential("gone", &["--audience", "https://gone.example"]);
}

#[test]
fn import_stores_each_variable_and_writes_a_reference_file() {
    let c = cluster(&["team-web/stripe-key", "team-web/db-url"]);
    let env = c.dir().join("app.env");
    std::fs::write(
        &env,
        "# team web\nexport STRIPE_KEY=\"sk_import_value_1\"\n\nDB_URL=postgres://u:import-pw@db/app\n",
    )
    .expect("write");
    c.remember_secret("sk_import_value_1");
    c.remember_secret("postgres://u:import-pw@db/app");
    let refs = c.dir().join("app.env.refs");
    let envs = env.to_str().expect("path");
    let refss = refs.to_str().expect("path");
    let args = [
        "secret",
        "import",
        "--env-file",
        envs,
        "--prefix",
        "team-web/",
        "--owner",
        "team-web",
        "--write-refs",
        refss,
    ];
    let out = c.leashctl(&args);
    out.code(0);
    assert!(
        !out.stderr.contains("import_value") && !out.stderr.contains("import-pw"),
        "{out}"
    );
    let text = std::fs::read_to_string(&refs).expect("refs");
    assert_eq!(
        text,
        "# team web\nexport STRIPE_KEY=leash://team-web/stripe-key\n\nDB_URL=leash://team-web/db-url\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&refs).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(value(&c, "team-web/stripe-key", &[]), "sk_import_value_1");
    assert_eq!(
        value(&c, "team-web/db-url", &[]),
        "postgres://u:import-pw@db/app"
    );
    // Again: refused, nothing written (the reference file is not overwritten either).
    std::fs::remove_file(&refs).expect("rm");
    c.leashctl(&args).code(1).stderr_has(&[
        "exist already",
        "team-web/stripe-key",
        "--new-version",
    ]);
    assert!(!refs.exists());
    // With --new-version each gets a version; printed to stdout without --write-refs.
    let out = c.leashctl(
        &args[..8]
            .iter()
            .copied()
            .chain(["--new-version"])
            .collect::<Vec<_>>(),
    );
    out.code(0);
    assert!(
        out.stdout.contains("DB_URL=leash://team-web/db-url"),
        "{out}"
    );
    let v = c
        .leashctl(&["secret", "versions", "team-web/db-url", "--output", "json"])
        .json();
    assert_eq!(v["versions"].as_array().map(Vec::len), Some(2));
    // A malformed line is named, never shown.
    std::fs::write(&env, "A=1\nthis-line-holds-a-secret-value\n").expect("write");
    let out = c.leashctl(&args[..8]);
    out.code(1).stderr_has(&["line 2"]);
    assert!(!out.stderr.contains("this-line-holds"), "{out}");
    c.assert_no_secret_leaked();
}

#[test]
fn the_database_files_hold_no_value_in_plain_text() {
    let mut c = cluster(&["plain"]);
    let distinctive = "PLAINTEXT-CANARY-7d1e0f3b9a2c-value";
    put(&c, "plain", distinctive, &["--format", "text"]);
    c.leashctl_stdin(
        &["secret", "rotate", "plain"],
        "PLAINTEXT-CANARY-second-version",
    )
    .code(0);
    assert_eq!(value(&c, "plain", &[]), "PLAINTEXT-CANARY-second-version");
    // Everything flushed: stop the control plane before reading its files.
    c.stop_control_plane();
    let files = files_under(&c.data_dir);
    assert!(
        !files.is_empty(),
        "no database files under {}",
        c.data_dir.display()
    );
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        for needle in [distinctive, "PLAINTEXT-CANARY"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds a value in plain text",
                f.display()
            );
        }
    }
    c.restart_control_plane();
    c.eventually("the agent serves again after the restart", || {
        let out = c.leash(&["get", "plain", "--fresh"]);
        (out.code == 0 && out.stdout.trim_end_matches('\n') == "PLAINTEXT-CANARY-second-version")
            .then_some(())
    });
}

#[test]
fn kill_9_during_rotations_leaves_the_old_or_the_new_version_whole() {
    let mut c = cluster(&["crash"]);
    put(&c, "crash", "crash-value-0", &[]);
    let mut tried = vec!["crash-value-0".to_string()];
    for i in 1..=6u64 {
        let v = format!("crash-value-{i}");
        tried.push(v.clone());
        let mut cmd = c.leashctl_command();
        cmd.args(["secret", "rotate", "crash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("leashctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(v.as_bytes())
            .expect("write the value");
        // At a different moment each time: before, during or after the write.
        std::thread::sleep(Duration::from_millis(i * 7 % 40));
        c.kill_control_plane();
        let _ = child.wait();
        c.restart_control_plane();
        let vs = c
            .leashctl(&["secret", "versions", "crash", "--output", "json"])
            .json();
        let vs = vs["versions"].as_array().expect("versions").clone();
        let numbers: Vec<u64> = vs.iter().filter_map(|v| v["version"].as_u64()).collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expected, "versions have a gap: {vs:?}");
        let current: Vec<&serde_json::Value> = vs.iter().filter(|v| v["current"] == true).collect();
        assert_eq!(current.len(), 1, "{vs:?}");
        assert_eq!(current[0]["version"].as_u64(), numbers.last().copied());
        // The current version is whole and readable: its value is one we wrote, and its
        // fingerprint is that value's.
        let got = c.eventually("the agent serves again", || {
            let out = c.leash(&["get", "crash", "--fresh"]);
            (out.code == 0).then(|| out.stdout.trim_end_matches('\n').to_string())
        });
        assert!(tried.contains(&got), "an unknown value after a crash");
        assert_eq!(current[0]["fingerprint"], fingerprint(&got), "{vs:?}");
    }
}

#[test]
fn approvals_and_tasks_apply_to_a_secret_unchanged() {
    // No --allow: only policy grants it, and only after a human approves.
    let c = cluster(&[]);
    put(&c, "gated", VALUE, &[]);
    crate::apply_policy(
        &c,
        "approval.cedar",
        "@id(\"secrets-need-approval\")\n@approval(\"required\")\npermit(principal, action, resource is Leash::Credential) when { resource.kind == \"secret\" };\n",
        &[],
    );
    let out = c.leash(&["get", "gated"]);
    out.code(3).stderr_has(&["pending"]);
    let at = out.stderr.find("ap-").expect("an approval id");
    let id: String = out.stderr[at..]
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '-')
        .collect();
    c.leashctl(&["approval", "approve", &id, "--uses", "2"])
        .code(0);
    assert_eq!(value(&c, "gated", &[]), VALUE);
    // Inside a task: injected by `leash exec`, bound to the task, completed when it ends.
    let work = crate::tasks::workdir(&c, "task");
    let out = crate::tasks::exec(
        &c,
        &work,
        &[
            "--env",
            "SK=gated",
            "--",
            "sh",
            "-c",
            "printf %s \"$SK\" > value.out",
        ],
    );
    out.code(0);
    assert_eq!(crate::tasks::read(&work, "value.out"), VALUE);
    let leases = c
        .leashctl(&["lease", "list", "--workload", "ci/job", "--output", "json"])
        .json();
    let task_lease = leases
        .as_array()
        .expect("leases")
        .iter()
        .find(|l| l["task"].is_string())
        .unwrap_or_else(|| panic!("no task lease in {leases}"))["id"]
        .as_str()
        .expect("id")
        .to_string();
    c.eventually("the task's lease is completed", || {
        (c.lease(&task_lease)["state"] == "completed").then_some(())
    });
    assert_eq!(c.lease(&task_lease)["version"], 1);
}
