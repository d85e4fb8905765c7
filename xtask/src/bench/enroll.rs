//! `cargo xtask bench enroll-flood`: many unauthenticated Enroll calls with join tokens
//! that were never minted, against a real control plane; how long they take, how they
//! are answered, and what they leave in the audit log and on disk.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use leash_proto::join_token::JoinToken;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;

use super::procs::ControlPlane;
use super::stats::{dur, header, rate, thousands, Table};
use super::{sim, Ctx};

/// `cargo xtask bench enroll-flood`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Enroll calls made in all.
    #[arg(long, default_value_t = 12_000)]
    calls: usize,
    /// Concurrent callers, each on its own TLS connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Raise the rate limits out of reach, to see what the refusal aggregation alone
    /// leaves behind when every call is answered.
    #[arg(long)]
    no_rate_limit: bool,
}

/// Config text that puts the Enroll rate limits out of reach of one flood.
const NO_RATE_LIMIT: &str = "enroll_source_burst = 1000000\nenroll_source_per_minute = 6000000\nenroll_global_burst = 1000000\nenroll_global_per_minute = 6000000";

/// Bytes allocated under `dir` (what `du` counts).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn events(cp: &ControlPlane) -> anyhow::Result<usize> {
    let out = cp.leashctl(&["audit", "tail", "--lines", "100000000"])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Stop the control plane with SIGTERM (it flushes what it holds on the way out) and
/// wait until it is gone.
fn stop(cp: ControlPlane) -> anyhow::Result<()> {
    let pid = cp.proc.pid() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Exited: a zombie until `cp` is dropped (which reaps it).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if stat.is_empty() || state.starts_with('Z') {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the control plane did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cp);
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Answers {
    denied: u64,
    limited: u64,
    other: u64,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.calls > 0 && a.concurrency > 0, "counts must be positive");
    let tmp = tempfile::Builder::new()
        .prefix("leash-bench-enroll-")
        .tempdir()?;
    let dir = tmp.path();
    let extra = if a.no_rate_limit { NO_RATE_LIMIT } else { "" };
    let cp = ControlPlane::start_configured(ctx, dir, None, "5s", extra)?;
    // A real token, only for the CA pin a flood would copy from any leaked one.
    let real = cp.join_token("bench-pin")?;
    let pin = JoinToken::parse(&real)?.ca_pin;
    let events_before = events(&cp)?;
    let bytes_before = dir_bytes(&dir.join("cp-data"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (elapsed, answers) = rt.block_on(async {
        let per = a.calls.div_ceil(a.concurrency);
        let mut tasks = Vec::new();
        let start = Instant::now();
        for w in 0..a.concurrency {
            let ch = sim::enroll_channel(&cp.addr, &real).await?;
            let pin = pin.clone();
            let n = per.min(a.calls.saturating_sub(w * per));
            tasks.push(tokio::spawn(async move {
                let mut client = ControlPlaneClient::new(ch);
                let mut ans = Answers::default();
                for i in 0..n {
                    let mut secret = [0u8; 32];
                    secret[..8].copy_from_slice(&((w * per + i) as u64).to_le_bytes());
                    let token = format!(
                        "leash-join.v1.jt-{:012x}.{}.{pin}",
                        w * per + i,
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
                    );
                    let r = client
                        .enroll(v1::EnrollRequest {
                            protocol_version: leash_proto::PROTOCOL_VERSION,
                            join_token: token,
                            name: "flood".into(),
                            ..Default::default()
                        })
                        .await;
                    match r.map_err(|s| s.code()) {
                        Err(tonic::Code::PermissionDenied) => ans.denied += 1,
                        Err(tonic::Code::Unavailable) => ans.limited += 1,
                        _ => ans.other += 1,
                    }
                }
                ans
            }));
        }
        let mut total = Answers::default();
        for t in tasks {
            let a = t.await.context("a flood task failed")?;
            total.denied += a.denied;
            total.limited += a.limited;
            total.other += a.other;
        }
        anyhow::Ok((start.elapsed(), total))
    })?;
    stop(cp)?;
    let bytes_after = dir_bytes(&dir.join("cp-data"));
    let cp = ControlPlane::start_configured(ctx, dir, None, "5s", extra)?;
    let events_after = events(&cp)?;
    let refused = cp.leashctl(&["audit", "tail", "--lines", "100000000"])?;
    let aggregated = refused
        .lines()
        .filter(|l| l.contains("\"enroll-refused\""))
        .count();
    drop(cp);

    header(
        "Enroll flood (unknown join tokens, no client certificate)",
        &ctx.command,
        &format!(
            "{} calls, {} concurrent TLS connections, {}; audit and data dir counted after a clean stop (the aggregated refusals are flushed then)",
            thousands(a.calls as u64),
            a.concurrency,
            if a.no_rate_limit {
                "rate limits out of reach (--no-rate-limit)"
            } else {
                "default `enroll_*` limits"
            }
        ),
    );
    let mut t = Table::new(&["figure", "value"]);
    t.row(vec!["duration".into(), dur(elapsed)]);
    t.row(vec![
        "calls per second".into(),
        rate(a.calls as f64 / elapsed.as_secs_f64()),
    ]);
    t.row(vec![
        "refused (PERMISSION_DENIED)".into(),
        thousands(answers.denied),
    ]);
    t.row(vec![
        "rate-limited (UNAVAILABLE)".into(),
        thousands(answers.limited),
    ]);
    t.row(vec!["other answers".into(), thousands(answers.other)]);
    t.row(vec![
        "audit events before → after".into(),
        format!("{events_before} → {events_after}"),
    ]);
    t.row(vec![
        "`enroll-refused` events".into(),
        aggregated.to_string(),
    ]);
    t.row(vec![
        "data dir bytes before → after".into(),
        format!("{} → {}", thousands(bytes_before), thousands(bytes_after)),
    ]);
    t.print();
    Ok(())
}
