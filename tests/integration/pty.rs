//! `leash exec` driven through a real terminal: the test opens a pty pair, gives its slave
//! to `leash exec` as stdin, stdout and stderr (so `leash` hands its child a pty of its
//! own and puts ours in raw mode), and plays the user at the master: it waits for the
//! child's prompt, types a line, reads the answer, and presses Ctrl-C. What the master
//! reads is what a user would see; the brokered secret the child was given must never be
//! in it, its masking marker must.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leash_tests::{wait_until, Cluster};

use crate::tasks::{exec_command, workdir};

/// The secret's value: long enough to be masked, no `.` (see secrets_e2e.rs).
const VALUE: &str = "pty-secret-3f9c1a7e-value";
/// How long a step of the dialogue may take.
const STEP: Duration = Duration::from_secs(20);

/// A cluster with workload `ci/pty` (this uid) allowed the secret `pw`, stored.
fn cluster() -> Cluster {
    let c = Cluster::start();
    c.my_workload("ci/pty", "team-ci", &["pw"]);
    c.leashctl_stdin(&["secret", "put", "pw", "--owner", "team-ci"], VALUE)
        .code(0);
    c.remember_secret(VALUE);
    c
}

/// The user's side of a terminal `leash exec` runs on: everything read from the pty
/// master so far (by a thread, so the child never blocks on a full terminal), and the
/// master to type into.
struct Terminal {
    master: std::fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// Start `leash exec ARGS` with a new pty's slave as its stdin, stdout and stderr.
    fn exec(c: &Cluster, name: &str, args: &[&str]) -> (Terminal, Child) {
        let work = workdir(c, name);
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let mut cmd = as_typed(exec_command(c, &work, args));
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("spawn leash exec");
        // Only `leash` (and what it starts) holds the slave now: when they are gone the
        // master reads EIO, which ends the reader.
        drop(cmd);
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup master");
        let seen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        (Terminal { master, screen }, child)
    }

    /// What the terminal shows so far, with the secret (should it be there) replaced,
    /// so that a failing assertion never prints it.
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.raw()).replace(VALUE, "<THE SECRET, UNMASKED>")
    }

    fn raw(&self) -> Vec<u8> {
        self.screen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until the terminal shows `text`.
    fn wait_for(&self, text: &str) {
        wait_until(
            &format!("the terminal shows {text:?}"),
            STEP,
            || format!("the terminal shows:\n{}", self.shown()),
            || {
                String::from_utf8_lossy(&self.raw())
                    .contains(text)
                    .then_some(())
            },
        );
    }

    /// Type `bytes` at the keyboard.
    fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the pty");
    }
}

/// `cmd` as a user's interactive shell starts a command typed at the prompt: with SIGINT
/// and SIGQUIT at their default. A command inherits the signals its parent ignores (a
/// background job of a non-interactive shell ignores both, and `sh` cannot trap a signal
/// it inherited ignored), and so does the command `leash exec` runs; without this, Ctrl-C
/// would do nothing whenever the test runner itself was started in the background.
/// Coreutils' `env --default-signal` resets them just before it runs `leash`.
fn as_typed(cmd: Command) -> Command {
    let mut typed = Command::new("env");
    typed
        .arg("--default-signal=INT,QUIT")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => typed.env(k, v),
            None => typed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        typed.current_dir(dir);
    }
    typed
}

/// Wait for `child` to exit; its exit code.
fn exit_code(child: &mut Child, t: &Terminal) -> i32 {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code().unwrap_or_else(|| {
                panic!(
                    "leash exec was killed ({st}) instead of passing the child's end on\n{}",
                    t.shown()
                )
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "leash exec did not exit within {STEP:?}\nthe terminal shows:\n{}",
                t.shown()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child reads a typed line and answers with it and the secret (masked), then waits
/// for Ctrl-C, which its trap turns into exit code 42.
const INTERACTIVE: &str = r#"trap 'echo "caught-int"; exit 42' INT
[ -t 0 ] && [ -t 1 ] && echo "on-a-tty"
printf 'name? '
read line
echo "got $line $X"
echo "press ctrl-c"
while :; do sleep 0.05; done"#;

#[test]
fn a_child_on_a_pty_reads_typed_input_its_secret_is_masked_and_ctrl_c_reaches_it() {
    let c = cluster();
    let (mut t, mut child) = Terminal::exec(
        &c,
        "pty-interactive",
        &["--env", "X=pw", "--", "sh", "-c", INTERACTIVE],
    );
    t.wait_for("name? ");
    t.type_in(b"alice\r");
    t.wait_for("press ctrl-c");
    let screen = t.shown();
    assert!(
        screen.contains("on-a-tty"),
        "the child's stdin and stdout are not a terminal\n{screen}"
    );
    assert!(
        screen.contains("got alice <leash:pw>"),
        "the child did not get the typed line, or its secret was not masked\n{screen}"
    );
    // Ctrl-C, as a user presses it: leash's own terminal is raw, so the key goes through
    // to the child's pty, whose line discipline sends SIGINT to the child's foreground
    // process group.
    t.type_in(b"\x03");
    let code = exit_code(&mut child, &t);
    t.wait_for("caught-int");
    assert_eq!(
        code,
        42,
        "the child's exit code did not pass through\n{}",
        t.shown()
    );
    let raw = t.raw();
    assert!(
        !String::from_utf8_lossy(&raw).contains(VALUE),
        "the secret reached the terminal unmasked\n{}",
        t.shown()
    );
    assert!(
        !raw.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
        "the secret's bytes reached the terminal"
    );
}

/// Without a trap, Ctrl-C kills the child: `leash exec` reports it as a shell would
/// (128 + SIGINT), and is not killed itself.
#[test]
fn ctrl_c_on_a_pty_kills_an_untrapping_child_and_leash_reports_it() {
    let c = cluster();
    let (mut t, mut child) = Terminal::exec(
        &c,
        "pty-ctrl-c",
        &[
            "--env",
            "X=pw",
            "--",
            "sh",
            "-c",
            r#"echo "x=$X"; echo "waiting"; while :; do sleep 0.05; done"#,
        ],
    );
    t.wait_for("waiting");
    assert!(t.shown().contains("x=<leash:pw>"), "{}", t.shown());
    t.type_in(b"\x03");
    let code = exit_code(&mut child, &t);
    assert_eq!(
        code,
        128 + 2,
        "expected the child's death by SIGINT\n{}",
        t.shown()
    );
    assert!(!String::from_utf8_lossy(&t.raw()).contains(VALUE));
}
