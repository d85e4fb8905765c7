//! The socket paths both CLIs trust, and the directories the daemons create them in.
//!
//! A fake service here is a real listening Unix socket nobody accepts on: if a CLI ever
//! connected to it, the connection would sit in its backlog, and the tests check that
//! none does. Also: `leash` and `leashctl` end quietly when their stdout's reader has
//! gone.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use leash_tests::{as_nobody, bin, process, require_root, Cluster, COMMAND_TIMEOUT};

use crate::basic;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("chown");
}

/// A temp dir in /tmp, 0755, for fake services.
fn temp_dir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("leash-sockets-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    chmod(t.path(), 0o755);
    t
}

/// A listening socket at `path` that never accepts; [`assert_untouched`] checks that
/// nobody connected.
fn fake_service(path: &Path) -> UnixListener {
    let l = UnixListener::bind(path).expect("bind the fake service");
    l.set_nonblocking(true).expect("nonblocking");
    chmod(path, 0o666);
    l
}

#[track_caller]
fn assert_untouched(l: &UnixListener, what: &str) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok(_) => panic!("{what}: a CLI connected to the fake service"),
        Err(e) => panic!("{what}: accept: {e}"),
    }
}

/// Run a CLI and return its output (fails the test if it hangs).
fn run(cmd: Command) -> process::Output {
    process::run(cmd, None, COMMAND_TIMEOUT)
}

/// `leash` and `leashctl` copied where uid 65534 may run them.
fn binaries_for_nobody(dir: &Path) -> (PathBuf, PathBuf) {
    let b = dir.join("bin");
    std::fs::create_dir_all(&b).expect("bin dir");
    chmod(&b, 0o755);
    let mut out = Vec::new();
    for name in ["leash", "leashctl"] {
        let dst = b.join(name);
        std::fs::copy(bin(name), &dst).expect("copy binary");
        chmod(&dst, 0o755);
        out.push(dst);
    }
    (out[0].clone(), out[1].clone())
}

#[test]
#[ignore = "needs root: chowns the fake service's directory to uid 65534"]
fn a_socket_in_a_directory_owned_by_another_user_is_refused_and_never_contacted() {
    require_root();
    let t = temp_dir();
    let evil = t.path().join("evil");
    std::fs::create_dir(&evil).expect("mkdir");
    chmod(&evil, 0o755);
    let sock = evil.join("agent.sock");
    let l = fake_service(&sock);
    chown(&evil, NOBODY);
    let path = sock.display().to_string();
    let dir = evil.display().to_string();

    let expect_refused = |out: &process::Output, code: i32| {
        out.code(code)
            .stderr_has(&["refusing", &path, &dir, "nobody", "uid 65534"]);
        assert!(out.stdout.is_empty(), "{out}");
    };
    // `leash --socket`.
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket").arg(&sock).args(["get", "api"]);
    expect_refused(&run(cmd), 5);
    // `$LEASH_AGENT_SOCKET`, a token to introspect (which must not leak).
    let mut cmd = Command::new(bin("leash"));
    cmd.env("LEASH_AGENT_SOCKET", &sock)
        .args(["introspect", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"]);
    expect_refused(&run(cmd), 5);
    // `leash exec` fails as itself (125) before running anything.
    let marker = t.path().join("ran");
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket")
        .arg(&sock)
        .args(["exec", "--", "touch"])
        .arg(&marker);
    expect_refused(&run(cmd), 125);
    assert!(!marker.exists(), "the command ran");
    // `leashctl --admin-socket` and `$LEASH_ADMIN_SOCKET`.
    for args in [
        vec!["join-token", "create"],
        vec!["introspect", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"],
    ] {
        let mut cmd = Command::new(bin("leashctl"));
        cmd.arg("--admin-socket").arg(&sock).args(&args);
        expect_refused(&run(cmd), 5);
        let mut cmd = Command::new(bin("leashctl"));
        cmd.env("LEASH_ADMIN_SOCKET", &sock).args(&args);
        expect_refused(&run(cmd), 5);
    }
    assert_untouched(&l, "directory owned by uid 65534");

    // The socket itself owned by another user, in a directory of ours: refused too.
    chown(&evil, 0);
    chown(&sock, NOBODY);
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket").arg(&sock).arg("status");
    run(cmd)
        .code(5)
        .stderr_has(&["refusing", &path, "nobody", "uid 65534"]);
    assert_untouched(&l, "socket owned by uid 65534");
}

#[test]
fn a_socket_below_a_directory_others_can_write_to_is_refused() {
    let t = temp_dir();
    let open = t.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    let inner = open.join("run");
    std::fs::create_dir(&inner).expect("mkdir");
    chmod(&inner, 0o755);
    let sock = inner.join("admin.sock");
    let l = fake_service(&sock);
    // Writable by others, not sticky: whoever can write there can swap `run`.
    for mode in [0o777, 0o770] {
        chmod(&open, mode);
        let mut cmd = Command::new(bin("leashctl"));
        cmd.arg("--admin-socket")
            .arg(&sock)
            .args(["workload", "list"]);
        run(cmd)
            .code(5)
            .stderr_has(&["refusing", &open.display().to_string(), "writable"]);
        let mut cmd = Command::new(bin("leash"));
        cmd.env("LEASH_AGENT_SOCKET", &sock).arg("status");
        run(cmd)
            .code(5)
            .stderr_has(&["refusing", &open.display().to_string(), "writable"]);
    }
    assert_untouched(&l, "group/other-writable directory");
}

#[test]
#[ignore = "needs root: a sticky directory is trusted only when root owns it"]
fn a_sticky_root_directory_like_tmp_is_accepted() {
    require_root();
    let c = Cluster::start();
    // A /tmp-like directory (1777, root) holding a link to the real agent's socket.
    let t = temp_dir();
    let sticky = t.path().join("shared");
    std::fs::create_dir(&sticky).expect("mkdir");
    chmod(&sticky, 0o1777);
    let link = sticky.join("agent.sock");
    std::os::unix::fs::symlink(&c.agent(0).socket, &link).expect("symlink");
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket")
        .arg(&link)
        .args(["status", "--output", "json"]);
    let st = c.run(cmd).json();
    assert_eq!(st["host"], "host-1", "{st}");
    // The same directory without the sticky bit is refused.
    chmod(&sticky, 0o777);
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket").arg(&link).arg("status");
    c.run(cmd).code(5).stderr_has(&["writable"]);
}

/// Removes `/tmp/leash-65534` when dropped (it is this test's attacker directory).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root: runs the CLIs as uid 65534 and plants a socket owned by another uid"]
fn without_xdg_runtime_dir_the_default_is_the_system_socket_never_tmp() {
    require_root();
    for s in ["/run/leash/agent.sock", "/run/leash/admin.sock"] {
        assert!(
            std::fs::symlink_metadata(s).is_err(),
            "{s} exists on this machine; this test needs it absent"
        );
    }
    let t = temp_dir();
    let (leash, leashctl) = binaries_for_nobody(t.path());
    // The attacker (uid 65533) got there first: the old fallback directory of uid
    // 65534, with a fake agent and a fake control plane in it.
    let planted = PathBuf::from(format!("/tmp/leash-{NOBODY}"));
    let _ = std::fs::remove_dir_all(&planted);
    std::fs::create_dir(&planted).expect("mkdir the attacker's directory");
    let _cleanup = RemoveOnDrop(planted.clone());
    chmod(&planted, 0o755);
    let agent = fake_service(&planted.join("agent.sock"));
    let admin = fake_service(&planted.join("admin.sock"));
    for p in [
        planted.join("agent.sock"),
        planted.join("admin.sock"),
        planted.clone(),
    ] {
        chown(&p, 65533);
    }

    let nobody = |program: &Path, args: &[&str]| {
        let mut cmd = as_nobody(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/");
        run(cmd)
    };
    for args in [vec!["status"], vec!["get", "api"]] {
        let out = nobody(&leash, &args);
        out.code(5)
            .stderr_has(&["/run/leash/agent.sock", "leash-agentd"]);
        assert!(!out.stderr.contains("/tmp/leash"), "{out}");
    }
    for args in [vec!["join-token", "create"], vec!["workload", "list"]] {
        let out = nobody(&leashctl, &args);
        out.code(5)
            .stderr_has(&["/run/leash/admin.sock", "leash-control-plane"]);
        assert!(!out.stderr.contains("/tmp/leash"), "{out}");
    }
    assert_untouched(&agent, "planted agent socket");
    assert_untouched(&admin, "planted admin socket");
}

#[test]
fn a_per_user_agent_under_xdg_runtime_dir_is_found_when_there_is_no_system_agent() {
    assert!(
        std::fs::symlink_metadata("/run/leash/agent.sock").is_err(),
        "/run/leash/agent.sock exists on this machine; this test needs it absent"
    );
    let c = Cluster::start();
    basic(&c);
    let xdg = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(xdg.path().join("leash")).expect("mkdir");
    std::os::unix::fs::symlink(&c.agent(0).socket, xdg.path().join("leash/agent.sock"))
        .expect("symlink");
    let mut cmd = Command::new(bin("leash"));
    cmd.env_remove("LEASH_AGENT_SOCKET")
        .env("XDG_RUNTIME_DIR", xdg.path())
        .args(["status", "--output", "json"]);
    let st = c.run(cmd).json();
    assert_eq!(st["host"], "host-1", "{st}");
    // Without it, the error names the system path.
    let mut cmd = Command::new(bin("leash"));
    cmd.env_remove("LEASH_AGENT_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .arg("status");
    c.run(cmd).code(5).stderr_has(&["/run/leash/agent.sock"]);
}

#[test]
fn the_daemons_refuse_a_socket_directory_others_can_write_to() {
    let t = temp_dir();
    let open = t.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);

    // The control plane.
    let sock = open.join("admin.sock");
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(t.path().join("data"))
        .arg("--admin-socket")
        .arg(&sock)
        .env("LEASH_LOG", "info");
    let out = run(cmd);
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has(&["refusing", &sock.display().to_string(), "writable"]);
    assert!(!sock.exists(), "{out}");

    // The agent, before it even tries to enroll.
    let sock = open.join("agent.sock");
    let mut cmd = Command::new(bin("leash-agentd"));
    cmd.args([
        "run",
        "--control-plane",
        "https://127.0.0.1:9",
        "--state-dir",
    ])
    .arg(t.path().join("state"))
    .arg("--socket")
    .arg(&sock)
    .args(["--join-token", "not-a-token"])
    .env("LEASH_LOG", "info");
    let out = run(cmd);
    assert_eq!(out.code, 1, "{out}");
    out.stderr_has(&[
        "refusing",
        &sock.display().to_string(),
        "writable",
        "--socket",
    ]);
    assert!(!sock.exists(), "{out}");

    // A directory owned by another user (root only can set that up).
    if leash_tests::is_root() {
        chmod(&open, 0o755);
        chown(&open, NOBODY);
        let mut cmd = Command::new(bin("leash-control-plane"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(t.path().join("data"))
            .arg("--admin-socket")
            .arg(open.join("admin.sock"))
            .env("LEASH_LOG", "info");
        let out = run(cmd);
        assert_ne!(out.code, 0, "{out}");
        out.stderr_has(&["refusing", "uid 65534"]);
    }
}

/// Run `cmd` with stdout a pipe whose reader is already closed.
fn with_closed_stdout(mut cmd: Command) -> (Option<i32>, String) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_the_clis_quietly() {
    let c = Cluster::start();
    basic(&c);
    c.leashctl(&["join-token", "create"]).ok();
    let mut runs: Vec<(String, Command)> = Vec::new();
    for args in [
        vec!["workload", "list"],
        vec!["jwks"],
        vec!["audit", "tail"],
        vec!["host", "list", "--output", "json"],
    ] {
        let mut cmd = c.leashctl_command();
        cmd.args(&args);
        runs.push((format!("leashctl {}", args.join(" ")), cmd));
    }
    for args in [vec!["status"], vec!["get", "api"], vec!["whoami"]] {
        let mut cmd = c.leash_command(0);
        cmd.args(&args);
        runs.push((format!("leash {}", args.join(" ")), cmd));
    }
    for (what, cmd) in runs {
        let (code, stderr) = with_closed_stdout(cmd);
        assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
        assert!(stderr.trim().is_empty(), "{what} complained:\n{stderr}");
        assert_eq!(
            code,
            Some(leash_proto::cli::BROKEN_PIPE_EXIT),
            "{what}: exit status\n{stderr}"
        );
    }
}
