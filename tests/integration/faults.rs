//! The fault campaign: kill -9 under load, a full disk, a log nobody reads, partitions.
//!
//! - `kill_9_under_load_loses_nothing_acknowledged`: a short version of
//!   `cargo xtask chaos kill` (which runs 50 rounds): issue and revoke continuously
//!   through the real CLIs, SIGKILL the control plane mid-load, restart it, and check
//!   every acknowledged lease and revocation, the agent's catch-up, and that nothing
//!   revoked is served.
//! - `a_full_disk_answers_unavailable_and_loses_nothing`: the data dir on a small tmpfs,
//!   filled up (needs root to mount).
//! - `daemons_serve_on_when_nobody_reads_their_log`: stderr a pipe nobody reads any more.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use leash_tests::Cluster;

use crate::basic;

/// What the callers were told, as they saw it.
#[derive(Debug, Default)]
struct Acked {
    /// Acknowledged issuances: lease id -> token (in memory only).
    issued: HashMap<String, String>,
    /// Lease ids whose revocation was asked for, acknowledged or not.
    revoke_sent: HashSet<String>,
    /// Acknowledged revocations: lease id -> sequence number.
    revoked: HashMap<String, u64>,
}

/// Issue (`leash get --fresh`) and revoke (`leashctl revoke --lease`) in a loop until
/// `stop`, recording only answers that succeeded.
fn load(c: &Cluster, acked: &Mutex<Acked>, stop: &AtomicBool) {
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let out = c.leash(&["get", "api", "--fresh", "--output", "json"]);
                if out.code == 0 {
                    let j: serde_json::Value =
                        serde_json::from_str(&out.stdout).expect("get --output json is JSON");
                    let id = j["lease_id"].as_str().expect("lease_id").to_string();
                    let token = j["token"].as_str().expect("token").to_string();
                    acked.lock().expect("lock").issued.insert(id, token);
                } else {
                    // Never a denial or a usage error: only the control plane being away.
                    assert!(
                        out.code == 5 || out.code == 6,
                        "an issuance failed with an unexpected code\n{out}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let mut a = acked.lock().expect("lock");
                    let id = a
                        .issued
                        .keys()
                        .find(|id| !a.revoke_sent.contains(*id))
                        .cloned();
                    if let Some(id) = &id {
                        a.revoke_sent.insert(id.clone());
                    }
                    id
                };
                let Some(id) = pick else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let out = c.leashctl(&["revoke", "--lease", &id, "--reason", "chaos"]);
                if out.code == 0 {
                    let seq: u64 = out.stdout.trim().parse().unwrap_or_else(|e| {
                        panic!("revoke printed no sequence number ({e})\n{out}")
                    });
                    acked.lock().expect("lock").revoked.insert(id, seq);
                } else {
                    assert!(
                        out.code == 5 || out.code == 6,
                        "a revocation failed with an unexpected code\n{out}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
    });
}

/// A fresh credential once the agent has reconnected to the restarted control plane.
fn back(c: &Cluster) -> leash_tests::Fetched {
    c.eventually(
        "the agent issues through the restarted control plane",
        || (c.leash(&["get", "api", "--fresh", "--output", "json"]).code == 0).then_some(()),
    );
    c.get("api", &["--fresh"])
}

/// The checks after a restart; returns what was lost (empty when nothing was).
fn check(c: &Cluster, acked: &mut Acked) -> Vec<String> {
    let mut lost = Vec::new();
    let leases = c.leashctl(&["lease", "list", "--output", "json"]);
    let leases = leases.json();
    let state: HashMap<String, String> = leases
        .as_array()
        .unwrap_or_else(|| panic!("lease list is not an array: {leases}"))
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap_or_default().to_string(),
                l["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for id in acked.issued.keys() {
        let got = state.get(id).map(String::as_str);
        let ok = match got {
            None => false,
            Some(s) if acked.revoked.contains_key(id) => s == "revoked",
            Some(s) if acked.revoke_sent.contains(id) => s == "revoked" || s == "active",
            Some(s) => s == "active",
        };
        if !ok {
            lost.push(format!("lease {id} is {got:?}"));
        }
    }
    // A marker revocation after the restart: the agent must reach its sequence number.
    let marker = back(c);
    let seq: u64 = c
        .leashctl(&["revoke", "--lease", &marker.lease_id, "--reason", "marker"])
        .ok()
        .parse()
        .expect("a sequence number");
    acked
        .issued
        .insert(marker.lease_id.clone(), marker.token.clone());
    acked.revoke_sent.insert(marker.lease_id.clone());
    acked.revoked.insert(marker.lease_id.clone(), seq);
    c.eventually("the agent caught up with the marker revocation", || {
        (c.status()["last_seq"].as_u64().unwrap_or(0) >= seq).then_some(())
    });
    // Nothing revoked is served: the cached answer is a live lease...
    let served = c.get("api", &[]);
    if acked.revoked.contains_key(&served.lease_id) {
        lost.push(format!(
            "the agent served revoked lease {}",
            served.lease_id
        ));
    }
    let l = c.lease(&served.lease_id);
    if l["state"] != "active" {
        lost.push(format!(
            "the agent served lease {} in state {}",
            served.lease_id, l["state"]
        ));
    }
    // ... and introspection of every acknowledged revocation says inactive.
    for id in acked.revoked.keys() {
        let token = &acked.issued[id];
        let intro = c.leashctl(&["introspect", token]).json();
        if intro["active"] != false {
            lost.push(format!("introspection says revoked lease {id} is active"));
        }
    }
    lost
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let mut c = Cluster::start();
    basic(&c);
    let mut acked = Acked::default();
    let mut lost = Vec::new();
    for round in 0..3u64 {
        let stop = AtomicBool::new(false);
        let shared = Mutex::new(std::mem::take(&mut acked));
        std::thread::scope(|s| {
            let (issued0, revoked0) = {
                let a = shared.lock().expect("lock");
                (a.issued.len(), a.revoked.len())
            };
            s.spawn(|| load(&c, &shared, &stop));
            // Kill mid-load, at a different point each round: once this round has had
            // some issuances and revocations acknowledged (more each round), rather than
            // after a fixed time.
            let want = (
                issued0 + 3 + 2 * round as usize,
                revoked0 + 1 + round as usize,
            );
            c.eventually("the load has been acknowledged for a while", || {
                let a = shared.lock().expect("lock");
                (a.issued.len() >= want.0 && a.revoked.len() >= want.1).then_some(())
            });
            c.signal_control_plane(nix::sys::signal::Signal::SIGKILL);
            stop.store(true, Ordering::Relaxed);
        });
        acked = shared.into_inner().expect("lock");
        c.restart_control_plane();
        lost.extend(check(&c, &mut acked));
    }
    let revoked_under_load = acked.revoked.len().saturating_sub(3);
    assert!(
        acked.issued.len() > 3 && revoked_under_load > 0,
        "the load acknowledged too little to test anything: {} issued, {} revoked",
        acked.issued.len(),
        acked.revoked.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged operation(s) lost or wrong:\n{}\n{}",
        lost.len(),
        lost.join("\n"),
        c.logs_dump()
    );
}

/// Unmounts the tmpfs when dropped (also when the test fails).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fill the file system holding `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let mb = vec![0x5a_u8; 1 << 20];
    while f.write_all(&mb).is_ok() {}
    let kb = vec![0x5a_u8; 4096];
    while f.write_all(&kb).is_ok() {}
    while f.write_all(&[0x5a]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// `leash get api --fresh` / `leashctl revoke` while the disk is full: exit 5, never a
/// success, never "denied".
#[track_caller]
fn assert_unavailable(out: &leash_tests::Output) {
    assert_eq!(out.code, 5, "expected UNAVAILABLE (exit 5)\n{out}");
    assert!(
        !out.stderr.to_lowercase().contains("denied"),
        "a full disk is not a denial\n{out}"
    );
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_full_disk_answers_unavailable_and_loses_nothing() {
    if leash_tests::sled_only("it fills the disk under the sled data directory") {
        return;
    }
    leash_tests::require_root();
    let mut c = Cluster::start();
    basic(&c);
    // Acknowledged before the disk fills.
    let kept = c.get("api", &["--fresh"]);
    let gone = c.get("api", &["--fresh"]);
    c.leashctl(&[
        "revoke",
        "--lease",
        &gone.lease_id,
        "--reason",
        "before the fill",
    ])
    .ok();

    // Move the data dir onto a small tmpfs.
    c.kill_control_plane();
    let data = c.data_dir.clone();
    let saved = c.dir().join("cp-data.saved");
    std::fs::rename(&data, &saved).expect("move the data dir aside");
    std::fs::create_dir(&data).expect("mount point");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount -t tmpfs failed ({st})");
    let _mount = Mount(data.clone());
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&data)
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "copying the data dir onto the tmpfs failed ({st})"
    );
    c.restart_control_plane();
    back(&c);

    let filler = fill(&data);
    // sled may still have room in space it allocated before the fill: an issuance that
    // succeeds then is durable, and is checked after the restart like any other. Within
    // a few hundred the store needs new space and must answer unavailable.
    let mut during = Vec::new();
    let mut failed = None;
    for _ in 0..500 {
        let out = c.leash(&["get", "api", "--fresh", "--output", "json"]);
        if out.code != 0 {
            failed = Some(out);
            break;
        }
        during.push(
            out.json()["lease_id"]
                .as_str()
                .expect("lease_id")
                .to_string(),
        );
    }
    let failed = failed.unwrap_or_else(|| {
        panic!(
            "500 issuances on a full disk all succeeded\n{}",
            c.logs_dump()
        )
    });
    assert_unavailable(&failed);
    eprintln!(
        "{} issuance(s) succeeded on the full disk before the first failure",
        during.len()
    );
    for _ in 0..3 {
        assert_unavailable(&c.leash(&["get", "api", "--fresh", "--output", "json"]));
    }
    assert_unavailable(&c.leashctl(&["revoke", "--lease", &kept.lease_id, "--reason", "full"]));
    assert!(
        c.control_plane_alive(),
        "the control plane died on a full disk\n{}",
        c.logs_dump()
    );
    let hosts = c.leashctl(&["host", "list"]);
    assert!(
        hosts.code == 0 || hosts.code == 5,
        "host list on a full disk\n{hosts}"
    );
    eprintln!("leashctl host list on the full disk: exit {}", hosts.code);
    let log = c.control_plane_log();
    for l in log.lines().filter(|l| l.contains("ERROR")).take(4) {
        eprintln!("control plane: {l}");
    }
    assert!(
        log.contains("STORE FLUSH FAILED"),
        "no loud log line:\n{log}"
    );

    // Space again. sled keeps the I/O error it hit until the database is reopened, so the
    // control plane stops by itself (exit 75) once the data directory has room, for its
    // supervisor to start it again with the store reopened; until then writes stay
    // unavailable, never a false success.
    std::fs::remove_file(&filler).expect("remove the filler");
    let code = c.wait_control_plane_exit(leash_tests::WAIT);
    assert_eq!(
        code,
        75,
        "the control plane's exit once space was back\n{}",
        c.logs_dump()
    );
    assert!(
        c.control_plane_log()
            .contains("the data directory has room again"),
        "no log line saying why it stopped\n{}",
        c.control_plane_log()
    );
    // The supervisor's part.
    c.restart_control_plane();
    let fresh = back(&c);
    assert_ne!(fresh.lease_id, kept.lease_id);
    // Nothing acknowledged before the fill was lost.
    // Its revocation on the full disk was not acknowledged: either state is right.
    let k = c.lease(&kept.lease_id);
    assert!(k["state"] == "active" || k["state"] == "revoked", "{k}");
    for id in &during {
        assert_eq!(
            c.lease(id)["state"],
            "active",
            "lease {id} acknowledged on the full disk"
        );
    }
    let g = c.lease(&gone.lease_id);
    assert_eq!(g["state"], "revoked", "{g}");
    assert_eq!(g["reason"], "before the fill", "{g}");
    assert_eq!(
        c.leashctl(&["introspect", &gone.token]).json()["active"],
        false
    );
    // And the full disk was never recorded as a denial.
    let audit = c.audit();
    assert!(
        !audit.iter().any(|e| e["type"] == "denied"),
        "a denied event: {audit:?}"
    );
}

/// A daemon whose output nobody reads any more (the log collector died, journald was
/// restarted: writes to its stderr fail with EPIPE) serves on and drops the lines. Both
/// daemons used to panic in every request that logged, answering it with an HTTP/2 error.
#[test]
fn daemons_serve_on_when_nobody_reads_their_log() {
    let mut c = Cluster::start();
    basic(&c);
    let before = c.get("api", &[]);
    c.stop_reading_logs();
    // Each of these logs on the control plane (an issuance, a revocation) or the agent
    // (a task started and ended): the first line ends the reading, the rest meet EPIPE.
    let work = crate::tasks::workdir(&c, "log-gone");
    let mut last = before.lease_id.clone();
    for _ in 0..3 {
        let f = c.get("api", &["--fresh"]);
        assert_ne!(f.lease_id, last);
        last = f.lease_id;
        crate::tasks::exec(&c, &work, &["--env", "T=api", "--", "true"]).ok();
    }
    assert_eq!(c.cached_at(0), 1, "the last fresh token is cached");
    c.leashctl(&["revoke", "--lease", &last, "--wait", "--timeout", "10s"])
        .ok();
    assert_eq!(c.lease(&last)["state"], "revoked");
    assert_eq!(c.cached_at(0), 0, "acknowledged means wiped");
    assert_ne!(c.get("api", &[]).lease_id, last);
    assert!(c.control_plane_alive(), "the control plane exited");
    assert!(c.agent_alive(0), "the agent exited");
    let logs = format!("{}{}", c.control_plane_log(), c.agent_log("host-1"));
    assert!(!logs.contains("panicked"), "{logs}");
}
