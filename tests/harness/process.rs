//! Child processes: the binaries under test, short commands with a timeout and captured
//! output, and long-running daemons whose log is read line by line in a thread.
//!
//! Every process is started in its own process group, and a [`Daemon`] kills its whole
//! group when dropped, so a failing test never leaves a control plane or an agent behind.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a short command (`leash`, `leashctl`) may run before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where cargo put the binaries: the test executable lives in `target/<profile>/deps`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe.parent().expect("the test executable is in a directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    dir
}

/// The path of one of the four binaries, or a panic saying how to build them.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins --features leash-proto/test-clock` first (cargo xtask test does this)",
        p.display()
    );
    p
}

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for failure messages.
    pub cmd: String,
    /// The daemons' logs when the command finished, for failure messages.
    pub logs: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.cmd)?;
        writeln!(f, "exit code: {}", self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        writeln!(f, "--- stderr ---\n{}", self.stderr)?;
        if !self.logs.is_empty() {
            writeln!(f, "--- daemon logs ---\n{}", self.logs)?;
        }
        Ok(())
    }
}

impl Output {
    /// Assert the exit code; returns self for chaining.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Output {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }

    /// Assert success and return stdout, trimmed.
    #[track_caller]
    pub fn ok(&self) -> String {
        self.code(0);
        self.stdout.trim().to_string()
    }

    /// Assert success and parse stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        self.code(0);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    /// Assert that stderr contains every one of `needles` (case-insensitive).
    #[track_caller]
    pub fn stderr_has(&self, needles: &[&str]) -> &Output {
        let low = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                low.contains(&n.to_lowercase()),
                "stderr does not mention {n:?}\n{self}"
            );
        }
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.len() > 120 {
            s.push_str(&format!(" <{} bytes>", a.len()));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Run `cmd` to completion (killing it after `timeout`), feeding it `stdin`.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let line = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        // A writer thread: a child that does not read must not block the test.
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
                panic!(
                    "{line} did not finish within {timeout:?}; killed it\n--- stderr ---\n{stderr}"
                );
            }
            Err(e) => panic!("waiting for {line}: {e}"),
        }
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        cmd: line,
        logs: String::new(),
    }
}

/// A daemon's log (stderr and stdout), appended to by reader threads.
#[derive(Debug, Clone, Default)]
pub struct Log {
    text: Arc<Mutex<String>>,
    /// Set: each reader takes one more line, then stops and closes its end of the pipe.
    deaf: Arc<AtomicBool>,
}

impl Log {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push_line(&self, line: &str) {
        let mut s = self.text.lock().unwrap_or_else(|p| p.into_inner());
        s.push_str(line);
        if !line.ends_with('\n') {
            s.push('\n');
        }
    }

    fn reader(&self, r: impl Read + Send + 'static) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => log.push_line(&String::from_utf8_lossy(&buf)),
                }
                if log.deaf.load(Ordering::SeqCst) {
                    return;
                }
            }
        })
    }
}

/// A long-running child process in its own process group.
#[derive(Debug)]
pub struct Daemon {
    /// What it is, for messages ("control plane", "agent host-1").
    pub what: String,
    child: Child,
    log: Log,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Start `cmd`; its stdout and stderr go to the log.
    pub fn spawn(what: &str, mut cmd: Command) -> Daemon {
        let line = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({line}): {e}"));
        let log = Log::default();
        let readers = vec![
            log.reader(child.stderr.take().expect("stderr is piped")),
            log.reader(child.stdout.take().expect("stdout is piped")),
        ];
        Daemon {
            what: what.to_string(),
            child,
            log,
            readers,
            status: None,
        }
    }

    /// Process id (also the process group id).
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Stop reading what the daemon prints, as a log collector that died would: each of
    /// its stdout and stderr is read for one more line, then closed, and what it writes
    /// there afterwards fails with EPIPE.
    pub fn stop_reading_log(&self) {
        self.log.deaf.store(true, Ordering::SeqCst);
    }

    /// The log handle (stays readable after the process is gone).
    pub fn log(&self) -> Log {
        self.log.clone()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                // The pipes close with the process: collect the rest of the log.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
            }
        }
        self.status
    }

    /// Wait until a log line contains `pattern`; returns that line. Panics, with the log,
    /// if the process exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log.text().lines().find(|l| l.contains(pattern)) {
                return l.to_string();
            }
            if let Some(s) = self.exited() {
                if let Some(l) = self.log.text().lines().find(|l| l.contains(pattern)) {
                    return l.to_string();
                }
                panic!(
                    "{} exited ({s}) before logging {pattern:?}\n--- log ---\n{}",
                    self.what,
                    self.log.text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not log {pattern:?} within {timeout:?}\n--- log ---\n{}",
                    self.what,
                    self.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the process to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n--- log ---\n{}",
                    self.what,
                    self.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `sig` to the process (not its group: the daemons do not fork).
    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(self.pid(), sig)
            .unwrap_or_else(|e| panic!("cannot send {sig} to {}: {e}", self.what));
    }

    /// SIGKILL the group and reap it.
    pub fn kill9(&mut self) {
        if self.exited().is_none() {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        self.exited();
    }

    /// SIGTERM (after SIGCONT, in case it is stopped), wait up to `grace`, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> Option<i32> {
        if self.exited().is_none() {
            let _ = nix::sys::signal::kill(self.pid(), Signal::SIGCONT);
            let _ = nix::sys::signal::kill(self.pid(), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.exited().is_none() {
            self.kill9();
            return None;
        }
        self.exited().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether every directory above `path` and `path` itself are usable by others
/// (o+x on directories, o+rx on the file).
pub fn world_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    if m.permissions().mode() & 0o005 != 0o005 {
        return false;
    }
    path.ancestors().skip(1).all(|d| {
        std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}
