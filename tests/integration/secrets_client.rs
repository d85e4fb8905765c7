//! `leash` as a consumer of credentials in files and environments: `leash://`
//! references in `leash get`, `leash exec --env-file` and `--resolve-env`, the masking of
//! injected values in the child's output (pipes, and a pty under `script`), exit codes and
//! signals through masking, and `leash render`. All through the real `leash` and agent,
//! with JWTs (what is specific to secrets is unit-tested where it is formatted).
//!
//! Scripts write what they see to files in a work dir; tests compare, and never print a
//! token.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use leash_tests::{bin, Cluster};

use crate::basic;
use crate::tasks::{exec, exec_command, read, read_token, workdir};

/// `leash exec ARGS` run under `script`, so its stdout (and stdin) are a terminal.
fn exec_in_a_terminal(c: &Cluster, work: &std::path::Path, args: &str) -> leash_tests::Output {
    let line = format!("{} exec {args}", bin("leash").display());
    let mut cmd = Command::new("script");
    cmd.current_dir(work)
        .env("LEASH_AGENT_SOCKET", &c.agent(0).socket)
        .env_remove("LEASH_TASK")
        .args(["-qefc", &line, "/dev/null"]);
    c.run(cmd)
}

#[test]
fn get_takes_a_reference_with_its_options() {
    let c = Cluster::start();
    basic(&c);
    let f = c.get("leash://api?ttl=1m", &[]);
    assert_eq!(f.json["kind"], "jwt", "{}", f.json);
    let cl = crate::claims(&f.token);
    let ttl = cl["exp"].as_i64().unwrap_or_default() - cl["iat"].as_i64().unwrap_or_default();
    assert_eq!(ttl, 60, "the reference's ttl was not used: {cl}");
    // Options given both ways must agree.
    c.leash(&["get", "leash://api?ttl=1m", "--ttl", "2m"])
        .code(1)
        .stderr_has(&["--ttl and the reference's ttl differ"]);
    c.leash(&["get", "leash://api?ttl=1m", "--ttl", "1m"])
        .code(0);
    // A bad reference is bad input, quoted back.
    c.leash(&["get", "leash://api?colour=red"])
        .code(1)
        .stderr_has(&["\"leash://api?colour=red\"", "unknown option \"colour\""]);
    c.leash(&["get", "leash://nope"]).code(4);
    // Fields are only for JSON secrets.
    c.leash(&["get", "api", "--field", "sub"])
        .code(1)
        .stderr_has(&["field \"sub\"", "is a jwt"]);
    c.leash(&["get", "leash://api#sub"])
        .code(1)
        .stderr_has(&["field \"sub\"", "is a jwt"]);
    // A JWT still ends with a newline.
    let out = c.leash(&["get", "api"]);
    assert!(out.code(0).stdout.ends_with('\n') && out.stdout.matches('\n').count() == 1);
}

#[test]
fn exec_env_file_resolves_references_and_passes_plain_lines() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "envfile");
    std::fs::write(
        work.join(".env"),
        "# migrated by leashctl secret import\n\nexport TOKEN=leash://api?ttl=2m\nPLAIN=\"two words\"\nPORT=8080\n",
    )
    .expect("env file");
    exec(
        &c,
        &work,
        &[
            "--env-file",
            ".env",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token; printf %s "$PLAIN/$PORT" > plain"#,
        ],
    )
    .code(0);
    let token = read_token(&c, &work, "token");
    assert_eq!(read(&work, "plain"), "two words/8080");
    let cl = crate::claims(&token);
    assert_eq!(
        cl["exp"].as_i64().unwrap_or_default() - cl["iat"].as_i64().unwrap_or_default(),
        120,
        "{cl}"
    );
    // The lease is bound to the task and ended with it (`leash exec` returns once the
    // agent has wiped; the control plane's completion follows at once).
    c.eventually("the task's lease is completed", || {
        let lease = c.lease(cl["jti"].as_str().unwrap_or_default());
        (lease["state"] == "completed").then_some(())
    });

    // A malformed line: leash's own failure (125), naming the line, never the value.
    std::fs::write(work.join("bad.env"), "A=1\n# ok\nsk_live_NOT_A_LINE\n").expect("env file");
    let out = exec(&c, &work, &["--env-file", "bad.env", "--", "true"]);
    out.code(125)
        .stderr_has(&["bad.env line 3", "expected VAR=VALUE"]);
    assert!(!out.stderr.contains("sk_live"), "{out}");
    std::fs::write(work.join("ref.env"), "K=leash://api?action=\n").expect("env file");
    exec(&c, &work, &["--env-file", "ref.env", "--", "true"])
        .code(125)
        .stderr_has(&["ref.env line 1", "K", "option action no value"]);
    exec(&c, &work, &["--env-file", "missing.env", "--", "true"])
        .code(125)
        .stderr_has(&["cannot read the env file missing.env"]);
    // A reference to an unknown credential: nothing runs.
    std::fs::write(work.join("unknown.env"), "K=leash://nope\n").expect("env file");
    exec(
        &c,
        &work,
        &["--env-file", "unknown.env", "--", "sh", "-c", "touch ran"],
    )
    .code(125)
    .stderr_has(&["cannot fetch nope for $K (unknown.env line 1)"]);
    assert!(!work.join("ran").exists());
}

#[test]
fn exec_resolves_references_in_its_environment_unless_told_not_to() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "resolve");
    let script = r#"printf %s "$TOKEN" > token"#;
    let mut cmd = exec_command(&c, &work, &["--", "sh", "-c", script]);
    cmd.env("TOKEN", "leash://api");
    c.run(cmd).code(0);
    read_token(&c, &work, "token");

    let mut cmd = exec_command(&c, &work, &["--no-resolve-env", "--", "sh", "-c", script]);
    cmd.env("TOKEN", "leash://api");
    c.run(cmd).code(0);
    assert_eq!(read(&work, "token"), "leash://api");

    let mut cmd = exec_command(&c, &work, &["--", "true"]);
    cmd.env("TOKEN", "leash://api?ttl=soon");
    c.run(cmd)
        .code(125)
        .stderr_has(&["$TOKEN of the environment", "--no-resolve-env"]);
}

#[test]
fn masking_replaces_a_jwt_and_its_encodings_even_when_split_across_writes() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "mask");
    // The token whole, in two writes with a pause between, base64 (standard and
    // URL-safe), on stderr, and url-encoded by a percent-encoder.
    let script = r#"printf %s "$TOKEN" > token
printf 'whole=%s\n' "$TOKEN"
printf 'split='; printf %s "$TOKEN" | head -c 40; sleep 0.3; printf %s "$TOKEN" | tail -c +41; echo
printf 'b64=%s\n' "$(printf %s "$TOKEN" | base64 -w0)"
printf 'b64url=%s\n' "$(printf %s "$TOKEN" | base64 -w0 | tr '+/' '-_' | tr -d '=')"
printf 'err=%s\n' "$TOKEN" >&2
echo done"#;
    let out = exec(&c, &work, &["--env", "TOKEN=api", "--", "sh", "-c", script]);
    out.code(0);
    let token = read_token(&c, &work, "token");
    assert!(
        !out.stdout.contains(&token[..40]) && !out.stderr.contains(&token[..40]),
        "the token got through the mask"
    );
    for line in [
        "whole=<leash:api>",
        "split=<leash:api>",
        "b64=<leash:api>",
        "b64url=<leash:api>",
        "done",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no line {line:?}\n{out}"
        );
    }
    assert!(out.stderr.contains("err=<leash:api>"), "{out}");

    // --no-masking: the child's output as it is.
    let out = exec(
        &c,
        &work,
        &[
            "--no-masking",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN""#,
        ],
    );
    assert!(out.code(0).stdout.starts_with("eyJ"), "--no-masking masked");
}

#[test]
fn masking_keeps_exit_codes_signals_and_all_output() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "codes");
    let out = exec(
        &c,
        &work,
        &[
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"seq 1 50000; echo "$TOKEN" >&2; exit 7"#,
        ],
    );
    out.code(7);
    assert_eq!(out.stdout.lines().count(), 50_000);
    assert!(out.stdout.ends_with("49999\n50000\n"));
    assert_eq!(out.stderr.trim(), "<leash:api>", "{out}");
    let out = exec(
        &c,
        &work,
        &[
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"echo "$TOKEN"; kill -TERM $$"#,
        ],
    );
    out.code(128 + 15);
    assert_eq!(out.stdout, "<leash:api>\n");
    // A reader that goes away: the child sees a broken pipe, as it would without leash.
    let work_s = work.display().to_string();
    let mut cmd = Command::new("sh");
    cmd.env("LEASH_AGENT_SOCKET", &c.agent(0).socket)
        .env_remove("LEASH_TASK")
        .arg("-c")
        .arg(format!(
            r#"{} exec --env TOKEN=api -- sh -c 'yes "$TOKEN"; echo $? > {work_s}/yes-status' | head -n 3"#,
            bin("leash").display()
        ));
    let out = c.run(cmd);
    out.code(0);
    assert_eq!(out.stdout, "<leash:api>\n<leash:api>\n<leash:api>\n");
    assert_eq!(
        read(&work, "yes-status"),
        "141",
        "yes did not die of SIGPIPE"
    );
}

#[test]
fn masking_gives_the_child_a_terminal_when_stdout_is_one() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "pty");
    let out = exec_in_a_terminal(
        &c,
        &work,
        r#"--env TOKEN=api -- sh -c 'printf %s "$TOKEN" > token; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo tty-yes; tty > tty-name; echo "t=$TOKEN"; exit 3'"#,
    );
    out.code(3);
    let token = read_token(&c, &work, "token");
    assert!(
        out.stdout.contains("tty-yes"),
        "the child has no terminal\n{out}"
    );
    assert!(out.stdout.contains("t=<leash:api>"), "{out}");
    assert!(
        !out.stdout.contains(&token[..40]),
        "the token got through the mask"
    );
    assert!(read(&work, "tty-name").starts_with("/dev/pts/"));
}

#[test]
fn render_fills_placeholders_into_a_private_file() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "render");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(
        work.join("app.tmpl"),
        "token = {{ leash://api }}\nshort = {{leash://api?ttl=1m}}\nkept = {{ .Values.x }}\n",
    )
    .expect("template");
    let out = c.leash(&[
        "render",
        &work.join("app.tmpl").display().to_string(),
        "-o",
        &work.join("app.conf").display().to_string(),
    ]);
    out.code(0)
        .stderr_has(&["warning:", "on disk", "leash exec"]);
    assert!(out.stdout.is_empty());
    let conf = std::fs::read_to_string(work.join("app.conf")).expect("rendered");
    let md = std::fs::metadata(work.join("app.conf")).expect("rendered");
    assert_eq!(md.mode() & 0o777, 0o600);
    let lines: Vec<&str> = conf.lines().collect();
    assert_eq!(lines.len(), 3, "{} lines", lines.len());
    let token = lines[0].strip_prefix("token = ").expect("token line");
    c.remember_secret(token);
    assert!(token.starts_with("eyJ"));
    assert!(lines[1].starts_with("short = eyJ"));
    assert_eq!(lines[2], "kept = {{ .Values.x }}");

    // To stdout, with a warning.
    let out = c.leash(&["render", &work.join("app.tmpl").display().to_string()]);
    assert!(out.code(0).stdout.starts_with("token = eyJ"));
    out.stderr_has(&["warning:"]);

    // Refusals: a directory others can read, a bad placeholder, an unknown credential.
    let open = work.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let target = open.join("app.conf").display().to_string();
    let tmpl = work.join("app.tmpl").display().to_string();
    c.leash(&["render", &tmpl, "-o", &target])
        .code(1)
        .stderr_has(&["refusing to write", "mode 0755", "--force"]);
    assert!(!open.join("app.conf").exists());
    c.leash(&["render", &tmpl, "-o", &target, "--force"])
        .code(0);
    assert_eq!(
        std::fs::metadata(open.join("app.conf"))
            .expect("forced")
            .mode()
            & 0o777,
        0o600
    );
    std::fs::write(work.join("bad.tmpl"), "a\nb = {{ leash://api?x=1 }}\n").expect("template");
    c.leash(&["render", &work.join("bad.tmpl").display().to_string()])
        .code(1)
        .stderr_has(&["bad.tmpl line 2", "unknown option"]);
    std::fs::write(work.join("nope.tmpl"), "b = {{ leash://nope }}\n").expect("template");
    let nope_out = work.join("nope.conf");
    c.leash(&[
        "render",
        &work.join("nope.tmpl").display().to_string(),
        "-o",
        &nope_out.display().to_string(),
    ])
    .code(4);
    assert!(!nope_out.exists());
}
