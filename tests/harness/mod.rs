//! Test harness for Leash's integration tests.
//!
//! It starts the real binaries (`leash-control-plane`, `leash-agentd`) as processes on a
//! temp dir, with `--listen 127.0.0.1:0`, a temp admin socket, temp agent sockets and
//! temp state dirs, and drives them with the real CLIs (`leashctl`, `leash`). Nothing of
//! ours is mocked. One line gives a test a ready cluster:
//!
//! ```text
//! let c = Cluster::start(); // control plane + one enrolled, synced agent ("host-1")
//! c.leashctl(&["workload", "list"]).ok();
//! ```
//!
//! Every daemon runs in its own process group and is killed when the cluster is
//! dropped, also when a test panics. Daemon logs are kept (across restarts) for failure
//! messages and for the check that no secret ever reaches a log.

pub mod pg;
pub mod process;
pub mod proxy;
pub mod python;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
pub use process::{bin, bin_dir, Daemon, Log, Output, COMMAND_TIMEOUT};
pub use proxy::Proxy;

/// How long to wait for a daemon to come up, or for a condition to become true.
pub const WAIT: Duration = Duration::from_secs(20);

/// The trust domain test clusters use.
pub const TRUST_DOMAIN: &str = "it.example";

/// The uid the tests run as.
pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether the tests run as root (CI does).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first line of a test that needs root. Such tests are also marked
/// `#[ignore = "needs root: why"]`, so the runner reports them as ignored (skipped) when
/// not root; `cargo xtask test` includes them when it runs as root, as CI does. Run by
/// hand without root, the test fails here rather than passing without checking anything.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root; run it as root (CI does) or leave it ignored"
    );
}

/// `setpriv` that runs `program` as uid/gid 65534 with no supplementary groups.
pub fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(program);
    c
}

/// Poll `f` until it returns `Some`, or panic with `what` and `context()` after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting until {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Control-plane `heartbeat`.
    pub heartbeat: String,
    /// Control-plane `max_offline`.
    pub max_offline: String,
    /// Start one agent, `host-1`.
    pub agent: bool,
    /// Extra `leash-agentd run` flags for every agent.
    pub agent_args: Vec<String>,
    /// Put a cuttable TCP proxy between the agents and the control plane.
    pub proxy: bool,
    /// Appended to the control-plane config file (e.g. an `[admins]` table).
    pub extra_config: String,
    /// Start the control plane with `--log-json`.
    pub cp_log_json: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heartbeat: "1s".into(),
            max_offline: "5m".into(),
            agent: true,
            agent_args: Vec::new(),
            proxy: false,
            extra_config: String::new(),
            cp_log_json: false,
        }
    }
}

impl Options {
    /// Both daemons log JSON lines (`--log-json`).
    pub fn log_json(mut self) -> Options {
        self.cp_log_json = true;
        self.agent_args.push("--log-json".into());
        self
    }
    /// Set the control plane's heartbeat.
    pub fn heartbeat(mut self, v: &str) -> Options {
        self.heartbeat = v.into();
        self
    }
    /// Set the control plane's max_offline.
    pub fn max_offline(mut self, v: &str) -> Options {
        self.max_offline = v.into();
        self
    }
    /// Add flags to every agent.
    pub fn agent_args(mut self, args: &[&str]) -> Options {
        self.agent_args.extend(args.iter().map(|s| s.to_string()));
        self
    }
    /// No agent at start.
    pub fn no_agent(mut self) -> Options {
        self.agent = false;
        self
    }
    /// Append `text` to the control-plane config file.
    pub fn config(mut self, text: &str) -> Options {
        self.extra_config.push_str(text);
        self.extra_config.push('\n');
        self
    }
    /// Agents reach the control plane through a [`Proxy`].
    pub fn with_proxy(mut self) -> Options {
        self.proxy = true;
        self
    }
}

/// One agent of a cluster.
#[derive(Debug)]
pub struct AgentProc {
    /// Host name.
    pub name: String,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--socket`.
    pub socket: PathBuf,
    args: Vec<String>,
    daemon: Option<Daemon>,
}

/// A token `leash get --output json` returned.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The secret.
    pub token: String,
    /// Lease id (`jti`).
    pub lease_id: String,
    /// Served from the agent's cache.
    pub cached: bool,
    /// The whole JSON answer.
    pub json: serde_json::Value,
}

/// A control plane and its agents on a temp dir.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    opts: Options,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// The control plane's data dir.
    pub data_dir: PathBuf,
    config: PathBuf,
    cp: Option<Daemon>,
    /// Where the control plane listens (stays the same across restarts).
    pub addr: SocketAddr,
    /// `sha256:<hex>` of the control plane's CA.
    pub ca_pin: String,
    proxy: Option<Proxy>,
    agents: Vec<AgentProc>,
    logs: Mutex<Vec<(String, Log)>>,
    secrets: Mutex<Vec<String>>,
    spawned: Mutex<u32>,
}

impl Cluster {
    /// A control plane and one enrolled, synced agent (`host-1`).
    pub fn start() -> Cluster {
        Cluster::with(Options::default())
    }

    /// A control plane alone.
    pub fn control_plane_only() -> Cluster {
        Cluster::with(Options::default().no_agent())
    }

    /// A cluster as `opts` says.
    pub fn with(opts: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("leash-it-")
            .tempdir()
            .expect("temp dir");
        // Traversable by other uids (the second-uid tests); what must stay private
        // (data and state dirs) is made 0700 by the daemons themselves.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let data_dir = dir.path().join("cp-data");
        let admin_socket = dir.path().join("cp-run").join("admin.sock");
        let config = dir.path().join("control-plane.toml");
        let text = format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\ntrust_domain = \"{TRUST_DOMAIN}\"\nheartbeat = {:?}\nmax_offline = {:?}\n",
            data_dir.display().to_string(),
            admin_socket.display().to_string(),
            opts.heartbeat,
            opts.max_offline,
        );
        let mut text = format!("{text}{}", opts.extra_config);
        store_table(&mut text, dir.path());
        std::fs::write(&config, text).expect("write config");
        let mut c = Cluster {
            dir,
            opts: opts.clone(),
            admin_socket,
            data_dir,
            config,
            cp: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            ca_pin: String::new(),
            proxy: None,
            agents: Vec::new(),
            logs: Mutex::new(Vec::new()),
            secrets: Mutex::new(Vec::new()),
            spawned: Mutex::new(0),
        };
        c.start_control_plane(None);
        if opts.proxy {
            c.proxy = Some(Proxy::start(c.addr));
        }
        if opts.agent {
            c.add_agent("host-1", &[]);
        }
        c
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file whose number (milliseconds) the daemons add to their clock. It works
    /// only with binaries built with the `test-clock` feature, as `cargo xtask test`
    /// builds them.
    fn clock_file(&self) -> PathBuf {
        self.dir.path().join("clock-offset-ms")
    }

    /// Move the clock of the control plane and every agent forward by `by`, at once.
    pub fn advance_clock(&self, by: Duration) {
        let file = self.clock_file();
        let now: i64 = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let next = now + i64::try_from(by.as_millis()).expect("a sane duration");
        // Written whole and renamed into place: a daemon reads the old or the new value.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, next.to_string()).expect("write the clock offset");
        std::fs::rename(&tmp, &file).expect("move the clock offset into place");
    }

    fn track_log(&self, what: &str, log: Log) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((what.to_string(), log));
    }

    fn start_control_plane(&mut self, listen: Option<SocketAddr>) {
        let mut cmd = Command::new(bin("leash-control-plane"));
        cmd.arg("serve").arg("--config").arg(&self.config);
        if let Some(a) = listen {
            cmd.arg("--listen").arg(a.to_string());
        }
        if self.opts.cp_log_json {
            cmd.arg("--log-json");
        }
        cmd.env("LEASH_LOG", "info")
            .env(leash_proto::clock::TEST_CLOCK_ENV, self.clock_file())
            .env_remove("LEASH_ADMIN_SOCKET");
        let mut d = Daemon::spawn("control plane", cmd);
        self.track_log("control plane", d.log());
        let line = d.wait_for_line("listening on ", WAIT);
        let addr = line
            .split("listening on ")
            .nth(1)
            // Text (`listening on ADDR ca_pin=…`) or JSON (`"listening on ADDR","ca_pin":"…"`).
            .and_then(|r| r.split(|c: char| c.is_whitespace() || c == '"').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the address from {line:?}"));
        self.addr = addr;
        if let Some(pin) = line
            .split("ca_pin=")
            .nth(1)
            .or_else(|| line.split("\"ca_pin\":\"").nth(1))
            .and_then(|r| r.split(|c: char| c.is_whitespace() || c == '"').next())
        {
            self.ca_pin = pin.to_string();
        }
        self.cp = Some(d);
    }

    /// SIGKILL the control plane (nothing flushed on the way out).
    pub fn kill_control_plane(&mut self) {
        if let Some(mut d) = self.cp.take() {
            d.kill9();
        }
    }

    /// Start the control plane again on the same data dir and port.
    pub fn restart_control_plane(&mut self) {
        self.kill_control_plane();
        let addr = self.addr;
        self.start_control_plane(Some(addr));
        assert_eq!(
            self.addr, addr,
            "the control plane came back on another address"
        );
    }

    /// Send a signal to the control plane (SIGSTOP / SIGCONT).
    pub fn signal_control_plane(&self, sig: Signal) {
        self.cp
            .as_ref()
            .expect("the control plane runs")
            .signal(sig);
    }

    /// The proxy between agents and the control plane (`Options::with_proxy`).
    pub fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("this cluster was started with_proxy()")
    }

    /// The URL agents are given.
    pub fn agent_url(&self) -> String {
        let a = self.proxy.as_ref().map(|p| p.addr).unwrap_or(self.addr);
        format!("https://{a}")
    }

    fn agent_command(
        &self,
        state_dir: &Path,
        socket: &Path,
        args: &[String],
        token: Option<&str>,
    ) -> Command {
        self.agent_command_to(&self.agent_url(), state_dir, socket, args, token)
    }

    fn agent_command_to(
        &self,
        url: &str,
        state_dir: &Path,
        socket: &Path,
        args: &[String],
        token: Option<&str>,
    ) -> Command {
        let mut cmd = Command::new(bin("leash-agentd"));
        cmd.arg("run")
            .arg("--control-plane")
            .arg(url)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--socket")
            .arg(socket)
            .args(args);
        if let Some(t) = token {
            cmd.arg("--join-token").arg(t);
        }
        // The task module's debug lines say which processes a task's scan has seen, so
        // a test can wait for them rather than for a number of scans.
        cmd.env("LEASH_LOG", "info,leash_agentd::tasks=debug")
            .env(leash_proto::clock::TEST_CLOCK_ENV, self.clock_file())
            .env_remove("LEASH_JOIN_TOKEN")
            .env_remove("LEASH_AGENT_SOCKET");
        cmd
    }

    /// Create a join token (`leashctl join-token create ARGS`); remembered as a secret.
    pub fn join_token(&self, args: &[&str]) -> String {
        let mut a = vec!["join-token", "create"];
        a.extend_from_slice(args);
        let t = self.leashctl(&a).ok();
        assert!(t.starts_with("leash-join.v1."), "not a join token: {t:?}");
        self.remember_secret(&t);
        t
    }

    /// Enroll and start another agent named `name` with a token binding `labels`;
    /// returns its index once it is ready.
    pub fn add_agent(&mut self, name: &str, labels: &[(&str, &str)]) -> usize {
        let mut args: Vec<String> = vec!["--name".into(), name.into()];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        let targs: Vec<&str> = args.iter().map(String::as_str).collect();
        let token = self.join_token(&targs);
        self.add_agent_with_token(name, &token)
    }

    /// Start another agent named `name` that enrolls with `token`; returns its index once
    /// it is ready.
    pub fn add_agent_with_token(&mut self, name: &str, token: &str) -> usize {
        self.add_agent_with(name, token, &[])
    }

    /// Start another agent named `name` that enrolls with `token`, with `extra` flags
    /// (e.g. `--label`); returns its index once it is ready.
    pub fn add_agent_with(&mut self, name: &str, token: &str, extra: &[&str]) -> usize {
        let state_dir = self.dir.path().join(format!("state-{name}"));
        let socket = self
            .dir
            .path()
            .join(format!("sock-{name}"))
            .join("agent.sock");
        let mut agent_args = self.opts.agent_args.clone();
        agent_args.extend(["--name".to_string(), name.to_string()]);
        agent_args.extend(extra.iter().map(|s| s.to_string()));
        let cmd = self.agent_command(&state_dir, &socket, &agent_args, Some(token));
        let what = format!("agent {name}");
        let mut d = Daemon::spawn(&what, cmd);
        self.track_log(&what, d.log());
        d.wait_for_line("ready on", WAIT);
        self.agents.push(AgentProc {
            name: name.to_string(),
            state_dir,
            socket,
            args: agent_args,
            daemon: Some(d),
        });
        self.agents.len() - 1
    }

    /// The agents.
    pub fn agent(&self, i: usize) -> &AgentProc {
        &self.agents[i]
    }

    /// Stop agent `i` gracefully (SIGTERM).
    pub fn stop_agent_at(&mut self, i: usize) {
        if let Some(mut d) = self.agents[i].daemon.take() {
            d.terminate(Duration::from_secs(5));
        }
    }

    /// Stop the first agent gracefully.
    pub fn stop_agent(&mut self) {
        self.stop_agent_at(0);
    }

    /// SIGKILL agent `i`.
    pub fn kill_agent_at(&mut self, i: usize) {
        if let Some(mut d) = self.agents[i].daemon.take() {
            d.kill9();
        }
    }

    /// Start agent `i` again, without a join token (it resumes from its state dir).
    pub fn start_agent_at(&mut self, i: usize) {
        self.stop_agent_at(i);
        let a = &self.agents[i];
        let cmd = self.agent_command(&a.state_dir, &a.socket, &a.args, None);
        let what = format!("agent {} (restarted)", a.name);
        let mut d = Daemon::spawn(&what, cmd);
        self.track_log(&what, d.log());
        d.wait_for_line("ready on", WAIT);
        self.agents[i].daemon = Some(d);
    }

    /// Start agent `i` again without waiting for it to be ready (for tests that expect it
    /// to fail); the caller owns the process.
    pub fn spawn_agent_unready(&mut self, i: usize) -> Daemon {
        self.stop_agent_at(i);
        let a = &self.agents[i];
        let cmd = self.agent_command(&a.state_dir, &a.socket, &a.args, None);
        let what = format!("agent {} (spawned)", a.name);
        let d = Daemon::spawn(&what, cmd);
        self.track_log(&what, d.log());
        d
    }

    /// Start the first agent again, without a join token.
    pub fn start_agent(&mut self) {
        self.start_agent_at(0);
    }

    /// Send a signal to agent `i` (SIGSTOP / SIGCONT).
    pub fn signal_agent(&self, i: usize, sig: Signal) {
        self.agents[i]
            .daemon
            .as_ref()
            .expect("the agent runs")
            .signal(sig);
    }

    /// Whether agent `i`'s process is still alive.
    pub fn agent_alive(&mut self, i: usize) -> bool {
        match self.agents[i].daemon.as_mut() {
            Some(d) => d.exited().is_none(),
            None => false,
        }
    }

    /// Start an agent with `token` on a fresh state dir and expect it to exit (a refused
    /// enrollment). Returns its exit code and its log.
    pub fn enroll_expecting_exit(&self, token: &str, extra: &[&str]) -> (i32, String) {
        let n = {
            let mut s = self.spawned.lock().unwrap_or_else(|p| p.into_inner());
            *s += 1;
            *s
        };
        let state_dir = self.dir.path().join(format!("state-refused-{n}"));
        let socket = self
            .dir
            .path()
            .join(format!("sock-refused-{n}"))
            .join("agent.sock");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let cmd = self.agent_command(&state_dir, &socket, &args, Some(token));
        let what = format!("agent refused-{n}");
        let mut d = Daemon::spawn(&what, cmd);
        self.track_log(&what, d.log());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = d.exited() {
                return (s.code().unwrap_or(-1), d.log().text());
            }
            if d.log().text().contains("ready on") {
                panic!(
                    "the agent enrolled with a token that should be refused\n{}",
                    d.log().text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the agent neither exited nor became ready within {WAIT:?}\n{}",
                    d.log().text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of every daemon's log, for failure messages.
    pub fn logs_dump(&self) -> String {
        let mut out = String::new();
        for (what, log) in self.logs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let text = log.text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            out.push_str(&format!("=== {what} ===\n{}\n", tail.join("\n")));
        }
        out
    }

    /// Stop reading the control plane's and every agent's output, as a log collector that
    /// died would ([`Daemon::stop_reading_log`]).
    pub fn stop_reading_logs(&self) {
        for d in self
            .cp
            .iter()
            .chain(self.agents.iter().filter_map(|a| a.daemon.as_ref()))
        {
            d.stop_reading_log();
        }
    }

    /// The control plane's log (the current incarnation's and the earlier ones').
    pub fn control_plane_log(&self) -> String {
        self.logs_of("control plane")
    }

    /// Every log of agent `name` (all incarnations).
    pub fn agent_log(&self, name: &str) -> String {
        self.logs_of(&format!("agent {name}"))
    }

    fn logs_of(&self, prefix: &str) -> String {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(w, _)| w.starts_with(prefix))
            .map(|(_, l)| l.text())
            .collect::<Vec<_>>()
            .join("")
    }

    fn finish(&self, mut out: Output) -> Output {
        out.logs = self.logs_dump();
        out
    }

    /// A `leashctl` command aimed at this control plane (through `$LEASH_ADMIN_SOCKET`).
    pub fn leashctl_command(&self) -> Command {
        let mut cmd = Command::new(bin("leashctl"));
        cmd.env("LEASH_ADMIN_SOCKET", &self.admin_socket);
        cmd
    }

    /// Run `leashctl ARGS`.
    pub fn leashctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.leashctl_command();
        cmd.args(args);
        self.finish(process::run(cmd, None, COMMAND_TIMEOUT))
    }

    /// Run `leashctl ARGS` with `input` on stdin.
    pub fn leashctl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = self.leashctl_command();
        cmd.args(args);
        self.finish(process::run(cmd, Some(input.as_bytes()), COMMAND_TIMEOUT))
    }

    /// A `leash` command aimed at agent `i` (through `$LEASH_AGENT_SOCKET`).
    pub fn leash_command(&self, i: usize) -> Command {
        let mut cmd = Command::new(bin("leash"));
        cmd.env("LEASH_AGENT_SOCKET", &self.agents[i].socket);
        cmd
    }

    /// Run `leash ARGS` against the first agent.
    pub fn leash(&self, args: &[&str]) -> Output {
        self.leash_at(0, args)
    }

    /// Run `leash ARGS` against agent `i`.
    pub fn leash_at(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = self.leash_command(i);
        cmd.args(args);
        self.run(cmd)
    }

    /// Run `leash ARGS` against the first agent with `input` on stdin.
    pub fn leash_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = self.leash_command(0);
        cmd.args(args);
        self.finish(process::run(cmd, Some(input.as_bytes()), COMMAND_TIMEOUT))
    }

    /// Run any command, with the cluster's logs attached to its output.
    pub fn run(&self, cmd: Command) -> Output {
        let out = self.finish(process::run(cmd, None, COMMAND_TIMEOUT));
        self.remember_tokens_in(&out.stdout);
        out
    }

    /// `leash get CRED --output json EXTRA` against agent `i`, which must succeed.
    pub fn get_at(&self, i: usize, cred: &str, extra: &[&str]) -> Fetched {
        let mut args = vec!["get", cred, "--output", "json"];
        args.extend_from_slice(extra);
        let out = self.leash_at(i, &args);
        let json = out.json();
        let f = Fetched {
            token: json["token"].as_str().unwrap_or_default().to_string(),
            lease_id: json["lease_id"].as_str().unwrap_or_default().to_string(),
            cached: json["cached"].as_bool().unwrap_or(false),
            json,
        };
        assert!(
            !f.token.is_empty() && !f.lease_id.is_empty(),
            "no token or lease id\n{out}"
        );
        f
    }

    /// `leash get CRED --output json EXTRA` against the first agent.
    pub fn get(&self, cred: &str, extra: &[&str]) -> Fetched {
        self.get_at(0, cred, extra)
    }

    /// `leash status --output json` of agent `i`.
    pub fn status_at(&self, i: usize) -> serde_json::Value {
        self.leash_at(i, &["status", "--output", "json"]).json()
    }

    /// `leash status --output json` of the first agent.
    pub fn status(&self) -> serde_json::Value {
        self.status_at(0)
    }

    /// How many credentials agent `i` holds.
    pub fn cached_at(&self, i: usize) -> u64 {
        self.status_at(i)["cached_credentials"]
            .as_u64()
            .expect("cached_credentials")
    }

    /// `leashctl lease show ID --output json`.
    pub fn lease(&self, id: &str) -> serde_json::Value {
        self.leashctl(&["lease", "show", id, "--output", "json"])
            .json()
    }

    /// The audit trail, oldest first.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let out = self.leashctl(&["audit", "tail", "--lines", "100000"]);
        out.code(0);
        out.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}"))
            })
            .collect()
    }

    /// `leashctl credential add NAME ARGS`.
    pub fn credential(&self, name: &str, args: &[&str]) {
        let mut a = vec!["credential", "add", name];
        a.extend_from_slice(args);
        self.leashctl(&a).ok();
    }

    /// Register a workload for the test's own uid (kind job) that may get `allow`, and
    /// wait until every running agent has it.
    pub fn my_workload(&self, name: &str, owner: &str, allow: &[&str]) {
        let uid = format!("unix:uid:{}", my_uid());
        let mut a = vec![
            "workload",
            "add",
            name,
            "--owner",
            owner,
            "--kind",
            "job",
            "--selector",
            &uid,
        ];
        for c in allow {
            a.push("--allow");
            a.push(c);
        }
        self.leashctl(&a).ok();
        for i in 0..self.agents.len() {
            if self.agents[i].daemon.is_some() {
                self.wait_visible(i, name);
            }
        }
    }

    /// Wait until `leash whoami` on agent `i` lists workload `name`.
    pub fn wait_visible(&self, i: usize, name: &str) {
        self.eventually(
            &format!("agent {} has workload {name}", self.agents[i].name),
            || {
                let v = self.leash_at(i, &["whoami", "--output", "json"]).json();
                v["workloads"]
                    .as_array()
                    .is_some_and(|ws| ws.iter().any(|w| w == name))
                    .then_some(())
            },
        );
    }

    /// Poll `f` until it returns `Some` (at most [`WAIT`]); the panic carries the logs.
    pub fn eventually<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        wait_until(what, WAIT, || self.logs_dump(), f)
    }

    /// Copy binary `name` into a 0755 directory any uid can use; returns the copy.
    pub fn copy_for_other_uids(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("bin");
        std::fs::create_dir_all(&dir).expect("bin dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod bin dir");
        let dst = dir.join(name);
        if !dst.exists() {
            std::fs::copy(bin(name), &dst).expect("copy binary");
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
                .expect("chmod binary");
        }
        dst
    }

    /// Remember `s` as a secret that must never show up in a log or a state file.
    pub fn remember_secret(&self, s: &str) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s.trim().to_string());
    }

    fn remember_tokens_in(&self, stdout: &str) {
        for word in stdout.split(|c: char| c.is_whitespace() || c == '"') {
            if word.starts_with("eyJ") && word.matches('.').count() == 2 {
                self.remember_secret(word);
            }
        }
    }

    /// Every secret seen so far (join tokens, issued JWTs).
    pub fn secrets(&self) -> Vec<String> {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Assert that no remembered secret (nor its secret part: a JWT's signature, a join
    /// token's secret) appears in any daemon log, in any file under an agent's state dir,
    /// or in the control plane's data dir.
    pub fn assert_no_secret_leaked(&self) {
        let secrets = self.secrets();
        assert!(
            !secrets.is_empty(),
            "no secret was remembered: the check would be vacuous"
        );
        let mut needles: Vec<String> = Vec::new();
        for s in &secrets {
            needles.push(s.clone());
            if s.starts_with("leash-join.v1.") {
                // leash-join.v1.<id>.<secret>.<pin>
                if let Some(secret) = s.split('.').nth(3) {
                    needles.push(secret.to_string());
                }
            } else if let Some(sig) = s.rsplit('.').next() {
                needles.push(sig.to_string());
            }
        }
        for (what, log) in self.logs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let text = log.text();
            for n in &needles {
                assert!(
                    !text.contains(n.as_str()),
                    "a secret appears in the log of {what}:\n{text}"
                );
            }
        }
        let mut dirs: Vec<PathBuf> = self.agents.iter().map(|a| a.state_dir.clone()).collect();
        dirs.push(self.data_dir.clone());
        for d in dirs {
            for f in files_under(&d) {
                let bytes = std::fs::read(&f).unwrap_or_default();
                for n in &needles {
                    assert!(
                        !contains(&bytes, n.as_bytes()),
                        "a secret is stored in {} ({} bytes)",
                        f.display(),
                        bytes.len()
                    );
                }
            }
        }
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first, so they do not log reconnect noise; then the control plane;
        // the temp dir goes after this returns.
        for a in &mut self.agents {
            if let Some(mut d) = a.daemon.take() {
                d.kill9();
            }
        }
        if let Some(mut d) = self.cp.take() {
            d.kill9();
        }
        self.proxy.take();
    }
}

impl Cluster {
    /// SIGTERM the control plane and wait until it has exited (it flushes what it holds
    /// on the way out); returns its exit status. [`Cluster::restart_control_plane`]
    /// starts it again.
    pub fn stop_control_plane(&mut self) -> i32 {
        let mut d = self.cp.take().expect("the control plane runs");
        d.signal(Signal::SIGTERM);
        d.wait_exit(WAIT)
    }

    /// Wait until the control plane exits by itself; returns its exit status. It stays
    /// stopped ([`Cluster::restart_control_plane`] starts it again, as a supervisor would).
    pub fn wait_control_plane_exit(&mut self, timeout: Duration) -> i32 {
        let mut d = self.cp.take().expect("the control plane runs");
        d.wait_exit(timeout)
    }

    /// Whether the control plane process is still running (not exited or killed).
    pub fn control_plane_alive(&mut self) -> bool {
        self.cp.as_mut().is_some_and(|d| d.exited().is_none())
    }
}

impl Cluster {
    /// Unix milliseconds on the daemons' clock: the system clock plus every
    /// [`Cluster::advance_clock`] so far.
    pub fn clock_now_ms(&self) -> i64 {
        let offset: i64 = std::fs::read_to_string(self.clock_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        now_ms() + offset
    }

    /// Whether agent `agent` (its name) has logged that a task's process scan saw `pid`
    /// (the task module's debug line, which the harness turns on).
    pub fn agent_tracks_task_process(&self, agent: &str, pid: i32) -> bool {
        self.agent_log(agent)
            .lines()
            .filter(|l| l.contains("tracking new processes of the task"))
            .filter_map(|l| l.split("pids=[").nth(1)?.split(']').next())
            .flat_map(|list| list.split(", ").map(str::trim))
            .any(|p| p.parse::<i32>() == Ok(pid))
    }
}

impl Cluster {
    /// After [`Cluster::advance_clock`]: wait until agent `i` has had a heartbeat on the
    /// moved clock and is synced. A jump past `max_offline` makes an agent fail closed
    /// until its next heartbeat; after this it serves again.
    pub fn wait_caught_up_at(&self, i: usize) {
        self.eventually("the agent is caught up after the clock moved", || {
            let s = self.status_at(i);
            let last = s["last_heartbeat_unix_ms"].as_i64()?;
            (s["synced"] == true && self.clock_now_ms() - last < 1_000).then_some(())
        });
    }
}

/// With `LEASH_TEST_STORE=postgres`, a `[store]` table that keeps the control plane's
/// state in a fresh database of the test process's PostgreSQL server (see
/// `pg::shared`), unless the test chose its own store.
fn store_table(text: &mut String, dir: &Path) {
    if !pg::store_is_postgres() || text.contains("[store]") {
        return;
    }
    let url_file = dir.join("pg.url");
    std::fs::write(&url_file, pg::fresh_store_database()).expect("write the store URL");
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the store URL");
    text.push_str(&format!(
        "\n[store]\nkind = \"postgres\"\nurl_file = {:?}\n",
        url_file.display().to_string()
    ));
}

/// Whether this test must be skipped because it is about the sled store itself (it
/// breaks or reads the sled directory) and the run keeps state in PostgreSQL
/// (`LEASH_TEST_STORE=postgres`). Prints why when it is.
pub fn sled_only(why: &str) -> bool {
    let skip = pg::store_is_postgres();
    if skip {
        eprintln!("skipped on the postgres store: {why}");
    }
    skip
}

/// The `[store]` table of the cluster whose data directory is `data_dir` (empty on
/// sled), for a test that starts a control plane on that cluster's state with its own
/// configuration.
pub fn store_table_of(data_dir: &Path) -> String {
    let url_file = data_dir.parent().map(|d| d.join("pg.url"));
    match url_file {
        Some(f) if pg::store_is_postgres() && f.exists() => format!(
            "\n[store]\nkind = \"postgres\"\nurl_file = {:?}\n",
            f.display().to_string()
        ),
        _ => String::new(),
    }
}

impl Cluster {
    /// Start another agent named `name` that enrolls with `token` and talks only to the
    /// control plane at `url` (e.g. a second replica); returns its index once it is
    /// ready.
    pub fn add_agent_at(&mut self, name: &str, token: &str, url: &str) -> usize {
        let state_dir = self.dir.path().join(format!("state-{name}"));
        let socket = self
            .dir
            .path()
            .join(format!("sock-{name}"))
            .join("agent.sock");
        let mut agent_args = self.opts.agent_args.clone();
        agent_args.extend(["--name".to_string(), name.to_string()]);
        let cmd = self.agent_command_to(url, &state_dir, &socket, &agent_args, Some(token));
        let what = format!("agent {name}");
        let mut d = Daemon::spawn(&what, cmd);
        self.track_log(&what, d.log());
        d.wait_for_line("ready on", WAIT);
        self.agents.push(AgentProc {
            name: name.to_string(),
            state_dir,
            socket,
            args: agent_args,
            daemon: Some(d),
        });
        self.agents.len() - 1
    }

    /// The configuration file of the control plane.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}
