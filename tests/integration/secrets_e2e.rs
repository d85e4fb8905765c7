//! Brokered secrets end to end, with real secrets stored by `leashctl secret put` and
//! used through every surface of the host: `leash get` (exact bytes, the JSON document,
//! `--field`, `leash://NAME#field`, exit codes), `leash exec` (`--env-file`, the parent
//! environment, task-bound leases wiped when the task ends, malformed lines), masking of
//! a secret and its encodings, the agent's HTTP API, `secret rotate --wait` while a task
//! holds the old version, and `leash render`. Each test ends by checking that no value
//! reached a daemon log, the agent's state dir or the control plane's data dir.
//!
//! No value contains a `.`: the leak check also looks for the part after a JWT's last dot.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use leash_tests::Cluster;
use serde_json::Value;

use crate::tasks::{exec, exec_command, workdir};

/// A text secret with no trailing newline.
const PLAIN: &str = "sk_live_7c1e9a4f-e2e-plain-value";
/// A text secret that ends with a newline (part of the value, printed back exactly).
const WITH_NL: &str = "ghp_e2e-token-with-newline-42\n";
/// A JSON secret: a string field, a number field, an object field.
const DB_JSON: &str =
    r#"{"user":"svc-e2e","password":"pw-9f8e7d6c5b4a-e2e","port":5432,"opts":{"tls":true}}"#;
const DB_PASSWORD: &str = "pw-9f8e7d6c5b4a-e2e";

/// The keys of `leash get --output json` for a secret (docs/CLI.md).
const SECRET_DOC_KEYS: &[&str] = &[
    "action",
    "cached",
    "expires_at",
    "expires_at_unix",
    "format",
    "kind",
    "lease_id",
    "value",
    "version",
    "workload",
];

/// `leashctl secret put NAME --owner team-ci EXTRA` with `value` on stdin; remembered.
fn put(c: &Cluster, name: &str, value: &str, extra: &[&str]) {
    let mut args = vec!["secret", "put", name, "--owner", "team-ci"];
    args.extend_from_slice(extra);
    c.leashctl_stdin(&args, value).code(0);
    c.remember_secret(value);
}

/// A cluster with workload `ci/job` (this uid) allowed `allow`, and the secrets `plain`,
/// `nl` and `db` (json) stored.
fn cluster(allow: &[&str]) -> Cluster {
    let c = Cluster::start();
    c.my_workload("ci/job", "team-ci", allow);
    put(&c, "plain", PLAIN, &[]);
    put(&c, "nl", WITH_NL, &[]);
    put(&c, "db", DB_JSON, &["--format", "json"]);
    c.remember_secret(DB_PASSWORD);
    c
}

/// `leash get ARGS`, which must succeed: its stdout, byte for byte.
#[track_caller]
fn get_raw(c: &Cluster, args: &[&str]) -> String {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    let out = c.leash(&a);
    assert_eq!(
        out.code, 0,
        "leash {a:?} exited {}: {}",
        out.code, out.stderr
    );
    out.stdout.clone()
}

/// `leash get ARGS --output json`, which must succeed.
#[track_caller]
fn get_json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--output", "json"]);
    let out = c.leash(&a);
    assert_eq!(
        out.code, 0,
        "leash {a:?} exited {}: {}",
        out.code, out.stderr
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e})"))
}

/// The keys of a JSON object.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// [`SECRET_DOC_KEYS`] as a set.
fn doc_keys() -> BTreeSet<String> {
    SECRET_DOC_KEYS.iter().map(|s| s.to_string()).collect()
}

/// Assert that `text` holds none of the test's values.
#[track_caller]
fn no_value_in(text: &str, what: &str) {
    for v in [PLAIN, WITH_NL.trim_end(), DB_PASSWORD, "svc-e2e"] {
        assert!(!text.contains(v), "{what} shows a secret value");
    }
}

/// The leases of workload ci/job that belong to a task.
fn task_leases(c: &Cluster) -> Vec<Value> {
    c.leashctl(&["lease", "list", "--workload", "ci/job", "--output", "json"])
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l["task"].is_string())
        .collect()
}

#[test]
fn get_prints_a_secret_exactly_with_its_document_fields_and_exit_codes() {
    let c = cluster(&["plain", "nl", "db"]);
    // Byte for byte: nothing added to a value without a newline, nothing taken from one
    // with it.
    assert_eq!(get_raw(&c, &["plain"]), PLAIN);
    assert_eq!(get_raw(&c, &["nl"]), WITH_NL);
    assert_eq!(get_raw(&c, &["db"]), DB_JSON);

    // The JSON document: exactly the documented keys.
    let doc = get_json(&c, &["plain"]);
    assert_eq!(keys(&doc), doc_keys());
    assert_eq!(doc["value"], PLAIN);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["kind"], "secret");
    assert_eq!(doc["format"], "text");
    assert_eq!(doc["workload"], "ci/job");
    assert_eq!(doc["action"], "read");
    assert_eq!(doc["cached"], true, "the first get cached it");
    assert!(doc["lease_id"]
        .as_str()
        .is_some_and(|l| l.starts_with("l-")));
    let unix = doc["expires_at_unix"].as_i64().expect("expires_at_unix");
    assert!(
        unix * 1000 > c.clock_now_ms(),
        "expires in the past: {unix}"
    );
    assert!(doc["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(get_json(&c, &["nl"])["value"], WITH_NL);
    assert_eq!(get_json(&c, &["db"])["format"], "json");

    // Fields of a json secret: a string raw, anything else as JSON; no newline added.
    assert_eq!(get_raw(&c, &["db", "--field", "password"]), DB_PASSWORD);
    assert_eq!(get_raw(&c, &["db", "--field", "port"]), "5432");
    assert_eq!(get_raw(&c, &["db", "--field", "opts"]), r#"{"tls":true}"#);
    assert_eq!(get_raw(&c, &["leash://db#password"]), DB_PASSWORD);
    assert_eq!(get_raw(&c, &["leash://db?action=read#user"]), "svc-e2e");
    let f = get_json(&c, &["db", "--field", "port"]);
    assert_eq!(f["value"], 5432);
    assert_eq!(f["field"], "port");
    // A missing field: bad input, naming the field and the ones there are, never a value.
    for args in [
        &["get", "db", "--field", "nope"][..],
        &["get", "leash://db#nope"][..],
    ] {
        let out = c.leash(args);
        out.code(1).stderr_has(&["\"nope\"", "\"password\""]);
        assert!(out.stdout.is_empty());
        no_value_in(&out.stderr, "the missing-field error");
    }
    let out = c.leash(&["get", "plain", "--field", "x"]);
    out.code(1)
        .stderr_has(&["field \"x\"", "text-format secret"]);
    no_value_in(&out.stderr, "the not-json error");

    // Exit codes as for JWTs: 4 unknown, 2 denied, 3 pending approval.
    put(&c, "other", "sk_live_other-e2e-value", &[]);
    put(
        &c,
        "gated",
        "sk_live_gated-e2e-value",
        &["--label", "gate=yes"],
    );
    c.leash(&["get", "no-such-secret"]).code(4);
    let out = c.leash(&["get", "other"]);
    out.code(2);
    assert!(!out.stderr.contains("other-e2e-value"));
    crate::apply_policy(
        &c,
        "gate.cedar",
        "@id(\"gated-secrets\")\n@approval(\"required\")\npermit(principal, action, resource is Leash::Credential) when { resource.kind == \"secret\" && resource.hasTag(\"gate\") };\n",
        &[],
    );
    c.leash(&["get", "gated"])
        .code(3)
        .stderr_has(&["pending", "ap-"]);
    c.leash(&["get", "other"]).code(2);
    c.assert_no_secret_leaked();
}

#[test]
fn exec_env_files_and_the_environment_resolve_secrets_and_the_task_leaves_nothing() {
    let c = cluster(&["plain", "nl", "db"]);
    let work = workdir(&c, "exec");
    std::fs::write(
        work.join(".env"),
        "# references to secrets, and a plain value\nexport API_KEY=leash://plain\nDB_PASSWORD=leash://db#password\nDB_PORT=leash://db#port\nPORT=8080\n",
    )
    .expect("env file");
    let script = r#"for v in API_KEY DB_PASSWORD DB_PORT PORT FROM_ENV; do eval "printf %s \"\$$v\"" > "$v.out"; done"#;
    let mut cmd = exec_command(&c, &work, &["--env-file", ".env", "--", "sh", "-c", script]);
    cmd.env("FROM_ENV", "leash://nl");
    c.run(cmd).code(0);
    let seen = |var: &str| {
        std::fs::read_to_string(work.join(format!("{var}.out")))
            .unwrap_or_else(|e| panic!("{var}.out was not written: {e}"))
    };
    assert!(seen("API_KEY") == PLAIN, "$API_KEY is not the secret");
    assert!(
        seen("DB_PASSWORD") == DB_PASSWORD,
        "$DB_PASSWORD is not the field"
    );
    assert_eq!(seen("DB_PORT"), "5432");
    assert_eq!(seen("PORT"), "8080");
    assert!(
        seen("FROM_ENV") == WITH_NL,
        "$FROM_ENV was not resolved exactly"
    );

    // Every lease of the task ended with it, and the agent holds nothing of it
    // (`leash exec` returns once the agent has wiped; the completions follow at once).
    let leases = c.eventually("every lease of the task is completed", || {
        let leases = task_leases(&c);
        leases
            .iter()
            .all(|l| l["state"] == "completed")
            .then_some(leases)
    });
    assert!(leases.len() >= 3, "{} task leases", leases.len());
    for l in &leases {
        assert_eq!(l["state"], "completed", "{l}");
        assert_eq!(c.lease(l["id"].as_str().expect("id"))["version"], 1, "{l}");
    }
    let credentials: BTreeSet<&str> = leases
        .iter()
        .filter_map(|l| l["credential"].as_str())
        .collect();
    assert_eq!(credentials, ["db", "nl", "plain"].into_iter().collect());
    assert_eq!(c.cached_at(0), 0, "the agent still holds a task's secret");

    // --no-resolve-env: the parent's reference is passed on as text.
    let mut cmd = exec_command(&c, &work, &["--no-resolve-env", "--", "sh", "-c", script]);
    cmd.env("FROM_ENV", "leash://nl");
    c.run(cmd).code(0);
    assert_eq!(seen("FROM_ENV"), "leash://nl");
    assert_eq!(c.cached_at(0), 0);

    // A malformed line: leash's own failure (125), naming the line, never the value; the
    // command does not run.
    std::fs::write(
        work.join("bad.env"),
        format!("A=leash://plain\n# fine\n{PLAIN}\n"),
    )
    .expect("env file");
    let out = exec(&c, &work, &["--env-file", "bad.env", "--", "touch", "ran"]);
    out.code(125).stderr_has(&["bad.env line 3"]);
    no_value_in(&out.stderr, "the malformed-line error");
    assert!(!work.join("ran").exists(), "the command ran");
    // A line that lost its `VAR=` but holds `=` itself (a URL with a query, base64
    // padding): the text before the `=` is part of the value and is not shown either.
    std::fs::write(
        work.join("bare.env"),
        format!("A=leash://plain\npostgres://svc-e2e:{DB_PASSWORD}@db/app?sslmode=require\n"),
    )
    .expect("env file");
    let out = exec(&c, &work, &["--env-file", "bare.env", "--", "touch", "ran"]);
    out.code(125).stderr_has(&["bare.env line 2"]);
    no_value_in(&out.stderr, "the error about a line without VAR=");
    assert!(!work.join("ran").exists(), "the command ran");
    // A missing field of a real json secret: 125, naming the line and the field.
    std::fs::write(work.join("field.env"), "X=leash://db#nope\n").expect("env file");
    let out = exec(
        &c,
        &work,
        &["--env-file", "field.env", "--", "touch", "ran"],
    );
    out.code(125).stderr_has(&["field.env line 1", "\"nope\""]);
    no_value_in(&out.stderr, "the missing-field error");
    assert!(!work.join("ran").exists(), "the command ran");
    c.eventually("the failed tasks' leases are ended", || {
        task_leases(&c)
            .iter()
            .all(|l| l["state"] != "active")
            .then_some(())
    });
    assert_eq!(c.cached_at(0), 0);
    c.assert_no_secret_leaked();
}

#[test]
fn masking_hides_a_secret_and_its_encodings_even_split_and_no_masking_shows_it() {
    // A value whose URL-encoded form differs from it.
    const V: &str = "sk-live:9f8e/7d6c+5b4a=3e2f&1a0b";
    let c = Cluster::start();
    c.my_workload("ci/job", "team-ci", &["mask-me"]);
    put(&c, "mask-me", V, &[]);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(V)
    };
    let url: String = V
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    assert_ne!(url, V);
    let work = workdir(&c, "mask");
    let script = r#"printf 'whole=%s\n' "$K"
printf 'split='; printf %s "$K" | head -c 9; sleep 0.3; printf %s "$K" | tail -c +10; echo
printf 'b64=%s\n' "$(printf %s "$K" | base64 -w0)"
printf 'url=%s\n' "$URL"
printf 'err=%s\n' "$K" >&2
echo done"#;
    let mut cmd = exec_command(&c, &work, &["--env", "K=mask-me", "--", "sh", "-c", script]);
    cmd.env("URL", &url);
    let out = c.run(cmd);
    out.code(0);
    for form in [V, b64.as_str(), url.as_str()] {
        assert!(
            !out.stdout.contains(form) && !out.stderr.contains(form),
            "a form of the value got through the mask"
        );
    }
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "whole=<leash:mask-me>",
            "split=<leash:mask-me>",
            "b64=<leash:mask-me>",
            "url=<leash:mask-me>",
            "done"
        ]
    );
    assert_eq!(out.stderr.trim(), "err=<leash:mask-me>");
    // The same through an env file's reference.
    std::fs::write(work.join(".env"), "K=leash://mask-me\n").expect("env file");
    let out = exec(
        &c,
        &work,
        &[
            "--env-file",
            ".env",
            "--",
            "sh",
            "-c",
            r#"printf '%s\n' "$K""#,
        ],
    );
    assert_eq!(out.code(0).stdout, "<leash:mask-me>\n");

    // --no-masking: the child's output as it is.
    let out = exec(
        &c,
        &work,
        &[
            "--no-masking",
            "--env",
            "K=mask-me",
            "--",
            "sh",
            "-c",
            r#"printf %s "$K""#,
        ],
    );
    assert!(out.code(0).stdout == V, "--no-masking changed the output");
    assert_eq!(c.cached_at(0), 0);
    c.assert_no_secret_leaked();
}

/// `curl --unix-socket SOCK http://leash/TARGET`: the HTTP status and the JSON body;
/// `None` without curl.
fn curl(c: &Cluster, target: &str) -> Option<(u16, Value)> {
    if !Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped the curl part: curl is missing");
        return None;
    }
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--unix-socket"])
        .arg(&c.agent(0).socket)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://leash{target}"));
    let out = c.run(cmd);
    out.code(0);
    let (body, code) = out.stdout.rsplit_once('\n').expect("a status line");
    let code = code.trim().parse().expect("an HTTP status");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON: {e}"));
    Some((code, body))
}

#[test]
fn the_http_api_serves_a_secret_and_its_fields_from_the_lease_leash_get_holds() {
    let c = cluster(&["plain", "db"]);
    let Some((status, doc)) = curl(&c, "/v1/credentials/plain") else {
        return;
    };
    assert_eq!(status, 200, "{:?}", doc.get("error"));
    assert_eq!(keys(&doc), doc_keys());
    assert!(doc["value"] == PLAIN, "the HTTP value is not the secret");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["format"], "text");
    assert_eq!(doc["cached"], false);
    // `leash get` is served the same lease from the agent's cache, and vice versa.
    let got = get_json(&c, &["plain"]);
    assert_eq!(got["lease_id"], doc["lease_id"]);
    assert_eq!(got["cached"], true);
    assert!(got["value"] == PLAIN);

    let db = get_json(&c, &["db"])["lease_id"].clone();
    let (status, f) = curl(&c, "/v1/credentials/db?field=password").expect("curl");
    assert_eq!(status, 200, "{:?}", f.get("error"));
    assert!(
        f["value"] == DB_PASSWORD,
        "field=password is not the password"
    );
    assert_eq!(f["field"], "password");
    assert_eq!(f["format"], "json");
    assert_eq!(f["lease_id"], db, "field= took another lease");
    let (status, f) = curl(&c, "/v1/credentials/db?field=port").expect("curl");
    assert_eq!(status, 200);
    assert_eq!(f["value"], 5432);
    // A missing field: 400, the field named, no value.
    let (status, e) = curl(&c, "/v1/credentials/db?field=nope").expect("curl");
    assert_eq!(status, 400);
    assert_eq!(e["error"]["reason"], "INVALID");
    assert_eq!(e["error"]["exit_code"], 1);
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("\"nope\""), "{msg}");
    no_value_in(&e.to_string(), "the HTTP error");
    let (status, _) = curl(&c, "/v1/credentials/other-secret").expect("curl");
    assert_eq!(status, 404);
    c.assert_no_secret_leaked();
}

#[test]
fn rotate_wait_wipes_the_version_a_running_task_holds_and_the_next_get_is_version_2() {
    const V2: &str = "sk_live_rotated-e2e-value-v2";
    let c = cluster(&["plain"]);
    let work = workdir(&c, "rotate");
    // A task that holds version 1 until told to finish.
    let script = r#"printf %s "$K" > held.tmp && mv held.tmp held
while [ ! -e finish ]; do sleep 0.05; done"#;
    let mut child = exec_command(&c, &work, &["--env", "K=plain", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start leash exec");
    c.eventually("the task holds the secret", || {
        work.join("held").exists().then_some(())
    });
    assert!(
        std::fs::read_to_string(work.join("held")).unwrap_or_default() == PLAIN,
        "the task was not given version 1"
    );
    let task_lease = task_leases(&c)
        .first()
        .and_then(|l| l["id"].as_str().map(str::to_string))
        .expect("the task's lease");
    assert_eq!(c.lease(&task_lease)["version"], 1);
    assert_eq!(c.cached_at(0), 1);

    let out = c.leashctl_stdin(
        &["secret", "rotate", "plain", "--wait", "--timeout", "10s"],
        V2,
    );
    c.remember_secret(V2);
    out.code(0)
        .stderr_has(&["version 2 is current", "revoked 1 lease(s)"]);
    assert!(
        out.stdout.starts_with("wiped on 1/1 hosts in "),
        "{}",
        out.stdout
    );
    // The agent wiped the task's copy while the task still runs.
    assert_eq!(c.cached_at(0), 0, "the agent still holds version 1");
    let lease = c.lease(&task_lease);
    assert_eq!(lease["state"], "revoked", "{lease}");
    assert_eq!(lease["reason"], "rotated to version 2");

    let doc = get_json(&c, &["plain"]);
    assert!(doc["value"] == V2, "the next get is not the new value");
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["cached"], false);
    assert_eq!(get_raw(&c, &["plain"]), V2);

    // The task ends normally; its revoked lease stays revoked.
    std::fs::write(work.join("finish"), "").expect("finish");
    let status = child.wait().expect("wait for leash exec");
    assert_eq!(status.code(), Some(0));
    assert_eq!(c.lease(&task_lease)["state"], "revoked");
    assert_eq!(c.cached_at(0), 1, "only the new get's lease is held");
    c.assert_no_secret_leaked();
}

#[test]
fn render_fills_secrets_and_fields_into_a_private_file() {
    let c = cluster(&["plain", "db"]);
    let work = workdir(&c, "render");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(
        work.join("app.tmpl"),
        "key = {{ leash://plain }}\ndb_password = {{leash://db#password}}\nport = {{ leash://db#port }}\n",
    )
    .expect("template");
    let conf = work.join("app.conf");
    let out = c.leash(&[
        "render",
        &work.join("app.tmpl").display().to_string(),
        "-o",
        &conf.display().to_string(),
    ]);
    out.code(0).stderr_has(&["warning:", "on disk"]);
    assert!(out.stdout.is_empty());
    no_value_in(&out.stderr, "render's warning");
    let text = std::fs::read_to_string(&conf).expect("rendered");
    assert!(
        text == format!("key = {PLAIN}\ndb_password = {DB_PASSWORD}\nport = 5432\n"),
        "the rendered file is not the template filled in"
    );
    assert_eq!(
        std::fs::metadata(&conf).expect("rendered").mode() & 0o777,
        0o600
    );
    // A missing field: exit 1, nothing written.
    std::fs::write(work.join("bad.tmpl"), "x = {{ leash://db#nope }}\n").expect("template");
    let bad = work.join("bad.conf");
    let out = c.leash(&[
        "render",
        &work.join("bad.tmpl").display().to_string(),
        "-o",
        &bad.display().to_string(),
    ]);
    out.code(1).stderr_has(&["\"nope\""]);
    no_value_in(&out.stderr, "render's missing-field error");
    assert!(!bad.exists());
    // The rendered file is the user's copy; the check covers the daemons' side.
    c.assert_no_secret_leaked();
}
