//! Configuration and key-file bounds: every value checked at `--check-config`, no panic reachable from config.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use leash_tests::{bin, process, Cluster, Options};

/// A config file in `dir` with a data dir and admin socket there, plus `extra`.
fn write_config(dir: &Path, data_dir: &Path, extra: &str) -> std::path::PathBuf {
    let f = dir.join("bounds.toml");
    let text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\n{extra}\n",
        data_dir.display().to_string(),
        dir.join("run/admin.sock").display().to_string(),
    );
    std::fs::write(&f, text).expect("write config");
    f
}

fn serve(config: &Path, check: bool) -> process::Output {
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--config"]).arg(config);
    if check {
        cmd.arg("--check-config");
    }
    cmd.env_remove("LEASH_MASTER_KEY");
    process::run(cmd, None, Duration::from_secs(20))
}

/// Each bad value: refused at `--check-config` and by `serve`, exit 1, naming the key and
/// the bound; nothing started.
#[test]
fn out_of_bounds_values_are_refused_at_check_time_and_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let cases: &[(&str, &[&str])] = &[
        (
            "host_cert_ttl = \"99999999d\"",
            &["host_cert_ttl", "1h", "365d"],
        ),
        ("host_cert_ttl = \"1m\"", &["host_cert_ttl", "1h"]),
        ("max_offline = \"30d\"", &["max_offline", "7d"]),
        (
            "heartbeat = \"1h\"\nmax_offline = \"2h\"",
            &["heartbeat", "5m"],
        ),
        ("max_approval = \"400d\"", &["max_approval", "30d"]),
        ("approval_timeout = \"0s\"", &["approval_timeout", "10s"]),
        ("issuer = \"\"", &["issuer", "empty"]),
        ("issuer = \"two words\"", &["issuer", "printable"]),
        ("trust_domain = \"corp..example\"", &["trust_domain"]),
        ("[admins]\nalice = 0\nroot = 0", &["admins", "uid 0"]),
    ];
    for (extra, needles) in cases {
        let f = write_config(dir.path(), &data, extra);
        for check in [true, false] {
            let out = serve(&f, check);
            out.code(1);
            out.stderr_has(needles);
            assert!(!out.stderr.contains("panicked"), "{out}");
        }
        assert!(
            !data.exists(),
            "{extra}: a refused config created the data dir"
        );
        assert!(!dir.path().join("run/admin.sock").exists());
    }
    let ok = serve(
        &write_config(
            dir.path(),
            &data,
            "host_cert_ttl = \"365d\"\nissuer = \"https://issuer.example\"",
        ),
        true,
    );
    assert!(ok.ok().contains("valid"), "{ok}");
}

/// The longest host certificate lifetime the config allows really enrolls an agent (it
/// panicked "out of range" in Enroll before the lifetime was checked).
#[test]
fn the_longest_host_cert_ttl_enrolls() {
    let c = Cluster::with(Options::default().config("host_cert_ttl = \"365d\""));
    let st = c.status();
    assert_eq!(st["host"].as_str(), Some("host-1"), "{st}");
    assert!(!c.control_plane_log().contains("panicked"));
}

/// A `master.key` readable by others stops `--check-config` and `serve` with the path, the
/// mode and the fix; `accept_readable_master_key = true` starts with a warning.
#[test]
fn a_readable_master_key_is_refused_unless_accepted() {
    let mut c = Cluster::with(
        Options::default()
            .no_agent()
            .config("accept_readable_master_key = false"),
    );
    c.kill_control_plane();
    let key = c.data_dir.join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let dir = tempfile::tempdir().expect("temp dir");
    let f = write_config(dir.path(), &c.data_dir, "");
    for check in [true, false] {
        let out = serve(&f, check);
        out.code(1);
        out.stderr_has(&[&key.display().to_string(), "0644", "chmod 600"]);
    }
    assert!(!dir.path().join("run/admin.sock").exists());

    let f = write_config(dir.path(), &c.data_dir, "accept_readable_master_key = true");
    let out = serve(&f, true);
    assert!(out.ok().contains("valid"), "{out}");
    out.stderr_has(&["warning", "accept_readable_master_key"]);

    // Fixed with chmod 600, the same data dir starts again.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    c.restart_control_plane();
    let out = c.leashctl(&["host", "list"]);
    out.code(0);
}

/// The accepted case really serves, and says so in its log.
#[test]
fn an_accepted_readable_master_key_starts_with_a_warning() {
    let mut c = Cluster::with(
        Options::default()
            .no_agent()
            .config("accept_readable_master_key = true"),
    );
    c.kill_control_plane();
    let key = c.data_dir.join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    c.restart_control_plane();
    let log = c.control_plane_log();
    assert!(
        log.contains("accept_readable_master_key") && log.contains("0640"),
        "{log}"
    );
}
