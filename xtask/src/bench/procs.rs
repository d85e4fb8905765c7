//! Child processes: the control plane, agents, the echo server and `leashctl` calls.
//!
//! Every child's stderr is drained by a thread for the child's whole life (the control
//! plane logs a line per issuance; an undrained pipe would stall it), keeping the last
//! lines for error messages. Children are killed when their [`Proc`] is dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{shown, Ctx};

/// How many stderr lines are kept for error messages.
const TAIL: usize = 40;

#[derive(Debug, Default)]
struct LogState {
    tail: VecDeque<String>,
    ready: Option<String>,
    eof: bool,
}

/// A running child, killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    logs: Arc<(Mutex<LogState>, Condvar)>,
}

impl Proc {
    /// Start `cmd` (stderr captured) and wait until a stderr line contains `marker`.
    /// Returns the process and that line.
    pub fn start(
        name: &str,
        mut cmd: Command,
        marker: &'static str,
        timeout: Duration,
    ) -> anyhow::Result<(Proc, String)> {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
        eprintln!("$ {}", shown(&cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", shown(&cmd)))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let logs: Arc<(Mutex<LogState>, Condvar)> = Arc::default();
        {
            let logs = logs.clone();
            std::thread::Builder::new()
                .name(format!("{name}-stderr"))
                .spawn(move || {
                    let (m, cv) = &*logs;
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
                        if st.ready.is_none() && line.contains(marker) {
                            st.ready = Some(line.clone());
                            cv.notify_all();
                        }
                        if st.tail.len() == TAIL {
                            st.tail.pop_front();
                        }
                        st.tail.push_back(line);
                    }
                    let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
                    st.eof = true;
                    cv.notify_all();
                })?;
        }
        let p = Proc {
            name: name.to_string(),
            child,
            logs,
        };
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*p.logs;
        let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = &st.ready {
                let line = line.clone();
                drop(st);
                return Ok((p, line));
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                let tail: Vec<String> = st.tail.iter().cloned().collect();
                bail!(
                    "{name} did not log {marker:?} {}; its last stderr lines:\n{}",
                    if st.eof { "before exiting" } else { "in time" },
                    tail.join("\n")
                );
            }
            st = cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the child (nothing flushed on the way out) and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fail (with its last log lines) if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "{} exited ({st}); its last stderr lines:\n{}",
                self.name,
                self.tail()
            );
        }
        Ok(())
    }

    pub fn tail(&self) -> String {
        let st = self.logs.0.lock().unwrap_or_else(|p| p.into_inner());
        st.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// `VmRSS` and `VmHWM` in KiB.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory figures of a process, in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub locked_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> anyhow::Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            locked_kib: field("VmLck:"),
        })
    }
}

/// User plus system CPU time a process has used, from `/proc/<pid>/stat` (in the
/// kernel's fixed 100 Hz user-visible ticks).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

/// The benches enroll thousands of simulated hosts from one address at once: far past
/// the per-source Enroll limits a real deployment wants.
pub const BENCH_ENROLL_LIMITS: &str = "enroll_source_burst = 1000000\nenroll_source_per_minute = 6000000\nenroll_global_burst = 1000000\nenroll_global_per_minute = 6000000";

/// A control plane on a temp dir, port 0 and a temp admin socket.
/// Extra environment for the control plane the benches and the soak start.
pub const CP_ENV: &str = "LEASH_BENCH_CONTROL_PLANE_ENV";

#[derive(Debug)]
pub struct ControlPlane {
    pub proc: Proc,
    /// HOST:PORT.
    pub addr: String,
    pub admin_socket: PathBuf,
    leashctl: PathBuf,
}

impl ControlPlane {
    /// Start one under `dir`. `pin_cpu`: run it under `taskset -c CPU` when taskset exists.
    pub fn start(ctx: &Ctx, dir: &Path, pin_cpu: Option<usize>) -> anyhow::Result<ControlPlane> {
        Self::start_configured(ctx, dir, pin_cpu, "5s", "")
    }

    /// Like [`ControlPlane::start`], with the Sync heartbeat interval (e.g. "5s", the
    /// product's default), and Enroll limits that let thousands of simulated hosts enroll.
    pub fn start_with(
        ctx: &Ctx,
        dir: &Path,
        pin_cpu: Option<usize>,
        heartbeat: &str,
    ) -> anyhow::Result<ControlPlane> {
        Self::start_configured(ctx, dir, pin_cpu, heartbeat, BENCH_ENROLL_LIMITS)
    }

    /// Start one with `extra` appended to its config file (`""`: nothing, which an
    /// older build given as a baseline also understands).
    pub fn start_configured(
        ctx: &Ctx,
        dir: &Path,
        pin_cpu: Option<usize>,
        heartbeat: &str,
        extra: &str,
    ) -> anyhow::Result<ControlPlane> {
        let admin_socket = dir.join("admin.sock");
        let config = dir.join("cp.toml");
        let data_dir = dir.join("cp-data");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\nheartbeat = {:?}\nmax_offline = \"5m\"\n{extra}\n",
                data_dir.display().to_string(),
                admin_socket.display().to_string(),
                heartbeat,
            ),
        )?;
        let cp_bin = ctx.bin("leash-control-plane");
        let mut cmd = match pin_cpu.filter(|_| which("taskset").is_some()) {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&cp_bin);
                c
            }
            None => Command::new(&cp_bin),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("LEASH_LOG", "info");
        // `KEY=VALUE KEY=VALUE…` for the control plane alone, e.g. a heap profiler's
        // LD_PRELOAD while a soak runs (docs/SECURITY.md, "Soak").
        if let Some(extra) = std::env::var_os(CP_ENV) {
            for kv in extra.to_string_lossy().split_whitespace() {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("{CP_ENV}: {kv:?} is not KEY=VALUE"))?;
                cmd.env(k, v);
            }
        }
        let (proc, line) = Proc::start(
            "leash-control-plane",
            cmd,
            "listening on ",
            Duration::from_secs(30),
        )?;
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .with_context(|| format!("cannot find the address in {line:?}"))?
            .to_string();
        Ok(ControlPlane {
            proc,
            addr,
            admin_socket,
            leashctl: ctx.bin("leashctl"),
        })
    }

    /// SIGKILL the control plane, then start it again on the same config, data dir and
    /// address (agents reconnect to where they enrolled).
    pub fn restart(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        self.proc.kill9();
        let config = self.admin_socket.with_file_name("cp.toml");
        let mut cmd = Command::new(ctx.bin("leash-control-plane"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(&self.addr)
            .env("LEASH_LOG", "info");
        let (proc, _) = Proc::start(
            "leash-control-plane",
            cmd,
            "listening on ",
            Duration::from_secs(30),
        )?;
        self.proc = proc;
        Ok(())
    }

    /// Run `leashctl --admin-socket … ARGS`; returns its stdout.
    pub fn leashctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.leashctl);
        cmd.arg("--admin-socket").arg(&self.admin_socket).args(args);
        eprintln!("$ {}", shown(&cmd));
        let out = cmd
            .output()
            .with_context(|| format!("cannot run `{}`", shown(&cmd)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                shown(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A single-use join token.
    pub fn join_token(&self, name: &str) -> anyhow::Result<String> {
        self.leashctl(&["join-token", "create", "--name", name])
    }

    /// A JWT credential whose default TTL is long enough that nothing cached goes stale
    /// (past half its life) during a bench.
    pub fn add_credential(&self, name: &str) -> anyhow::Result<()> {
        self.leashctl(&[
            "credential",
            "add",
            name,
            "--kind",
            "jwt",
            "--audience",
            "https://bench.leash.example",
            "--ttl",
            "1h",
            "--max-ttl",
            "24h",
        ])
        .map(drop)
    }

    /// A brokered secret `name` holding `value`, with TTLs long enough that nothing cached
    /// goes stale during a bench. The value goes through a file under `dir` (as
    /// `leashctl secret put --from-file` takes it), removed afterwards.
    pub fn put_secret(&self, dir: &Path, name: &str, value: &str) -> anyhow::Result<()> {
        let file = dir.join("secret-value");
        std::fs::write(&file, value)?;
        let file_arg = file.display().to_string();
        let put = self.leashctl(&[
            "secret",
            "put",
            name,
            "--owner",
            "bench",
            "--ttl",
            "1h",
            "--max-ttl",
            "24h",
            "--from-file",
            &file_arg,
        ]);
        std::fs::remove_file(&file)?;
        put.map(drop)
    }

    /// A workload with one uid selector, allowed `credential`.
    pub fn add_workload(&self, name: &str, uid: u32, credential: &str) -> anyhow::Result<()> {
        self.add_workload_allowing(name, uid, &[credential])
    }

    /// A workload with one uid selector, allowed every one of `credentials`.
    pub fn add_workload_allowing(
        &self,
        name: &str,
        uid: u32,
        credentials: &[&str],
    ) -> anyhow::Result<()> {
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "workload",
            "add",
            name,
            "--owner",
            "bench",
            "--kind",
            "service",
            "--selector",
            &selector,
        ];
        for c in credentials {
            args.extend(["--allow", c]);
        }
        self.leashctl(&args).map(drop)
    }
}

/// A real `leash-agentd`, enrolled with a fresh token, serving on `socket`.
#[derive(Debug)]
pub struct Agent {
    pub proc: Proc,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start(ctx: &Ctx, cp: &ControlPlane, dir: &Path, name: &str) -> anyhow::Result<Agent> {
        Self::start_at(ctx, cp, &cp.addr, dir, name)
    }

    /// Like [`Agent::start`], reaching the control plane at `addr` (HOST:PORT), e.g.
    /// through a proxy.
    pub fn start_at(
        ctx: &Ctx,
        cp: &ControlPlane,
        addr: &str,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Agent> {
        let token = cp.join_token(name)?;
        let socket = dir.join("agent.sock");
        let mut cmd = Command::new(ctx.bin("leash-agentd"));
        cmd.arg("run")
            .arg("--control-plane")
            .arg(format!("https://{addr}"))
            .arg("--state-dir")
            .arg(dir.join("agent-state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--join-token")
            .arg(&token)
            .arg("--requests-per-uid")
            .arg("0")
            .env("LEASH_LOG", "info");
        let (proc, _) = Proc::start("leash-agentd", cmd, "ready on", Duration::from_secs(30))?;
        Ok(Agent { proc, socket })
    }
}

/// `PATH` lookup.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}
