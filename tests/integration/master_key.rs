//! The master key: `leashctl key rotate-master` with no downtime, the old key refused
//! afterwards, a wrong key refused at start naming the key ids, `kill -9` during
//! rotations, a key from `$LEASH_MASTER_KEY` that is not ours to replace, and no
//! plaintext private key in the data directory's files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use leash_control_plane::keys::{KeyId, MasterKey};
use leash_control_plane::store::{SledStore, Storage};
use leash_tests::{bin, process, Cluster, Daemon, Options, COMMAND_TIMEOUT, WAIT};

use crate::basic;

/// The id of the key in `<data_dir>/master.key`.
fn file_key_id(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("master.key")).expect("master.key");
    let bytes: Vec<u8> = (0..text.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text.trim()[i..i + 2], 16).expect("hex"))
        .collect();
    KeyId::of(&bytes).to_string()
}

/// `leashctl key rotate-master`, which must succeed: (old id, new id).
fn rotate(c: &Cluster) -> (String, String) {
    let out = c.leashctl(&["key", "rotate-master"]);
    parse_rotation(&out).unwrap_or_else(|| panic!("no key ids in the output\n{out}"))
}

fn parse_rotation(out: &process::Output) -> Option<(String, String)> {
    if out.code != 0 {
        return None;
    }
    // "master key rotated: OLD -> NEW (N sealed records re-wrapped)"
    let rest = out.stdout.trim().strip_prefix("master key rotated: ")?;
    let (old, rest) = rest.split_once(" -> ")?;
    let new = rest.split_whitespace().next()?;
    Some((old.to_string(), new.to_string()))
}

/// A fresh token (a new lease) through the agent, retried until the agent is connected.
fn fresh_token(c: &Cluster) -> String {
    c.eventually("a fresh token is issued", || {
        let out = c.leash(&["get", "api", "--fresh"]);
        (out.code == 0).then(|| out.stdout.trim().to_string())
    })
}

fn jwks_kids(c: &Cluster) -> Vec<String> {
    let v = c.leashctl(&["jwks"]).json();
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

/// A config for a control plane started by the test itself, on `c`'s data dir.
fn own_config(dir: &Path, data_dir: &Path) -> PathBuf {
    let f = dir.join("own.toml");
    let text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\n{}",
        data_dir.display().to_string(),
        dir.join("run/admin.sock").display().to_string(),
        leash_tests::store_table_of(data_dir),
    );
    std::fs::write(&f, text).expect("write config");
    f
}

/// `leash-control-plane serve` on `data_dir`, expected to refuse to start.
fn serve_refused(data_dir: &Path) -> process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = own_config(dir.path(), data_dir);
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env_remove("LEASH_MASTER_KEY");
    let out = process::run(cmd, None, COMMAND_TIMEOUT);
    assert!(!dir.path().join("run/admin.sock").exists(), "{out}");
    out
}

#[test]
fn rotation_keeps_issuing_and_the_old_key_is_refused_after() {
    let mut c = Cluster::start();
    basic(&c);
    let before = fresh_token(&c);
    let kids = jwks_kids(&c);
    let ca_pin = c.ca_pin.clone();
    let old_key = std::fs::read(c.data_dir.join("master.key")).expect("master.key");
    let old_id = file_key_id(&c.data_dir);

    // Issuing goes on while the key is rotated, several times.
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let mut rotations = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let out = c.leash(&["get", "api", "--fresh"]);
                if out.code != 0 {
                    failures.lock().expect("lock").push(out.to_string());
                }
            }
        });
        for _ in 0..3 {
            rotations.push(rotate(&c));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().expect("lock");
    assert!(
        failures.is_empty(),
        "issuing failed during rotations:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        rotations[0].0, old_id,
        "the first rotation replaces the first key"
    );
    for w in rotations.windows(2) {
        assert_eq!(
            w[0].1, w[1].0,
            "each rotation starts from the previous one's key"
        );
    }
    let new_id = rotations[2].1.clone();
    assert_eq!(
        file_key_id(&c.data_dir),
        new_id,
        "master.key holds the new key"
    );
    assert!(!c.data_dir.join("master.key.new").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(c.data_dir.join("master.key"))
        .expect("master.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Audited with both ids.
    let events: Vec<_> = c
        .audit()
        .into_iter()
        .filter(|e| e["type"] == "master-key-rotated")
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[0]["detail"]["old_key_id"],
        old_id.as_str(),
        "{events:?}"
    );
    assert_eq!(
        events[2]["detail"]["new_key_id"],
        new_id.as_str(),
        "{events:?}"
    );

    // The same CA and signing key after a restart, and issuing still works.
    c.restart_control_plane();
    assert_eq!(c.ca_pin, ca_pin);
    assert_eq!(jwks_kids(&c), kids);
    let after = fresh_token(&c);
    assert_ne!(before, after);
    assert!(c
        .control_plane_log()
        .contains(&format!("master_key_id={new_id}")));

    // A copy of the old key file is refused, naming both ids.
    c.kill_control_plane();
    std::fs::write(c.data_dir.join("master.key"), &old_key).expect("write old key");
    let out = serve_refused(&c.data_dir);
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has(&[
        &format!("sealed with master key {new_id}"),
        &format!("the loaded key is {old_id}"),
        "start with the key the data was sealed with",
    ]);
}

#[test]
fn a_wrong_or_missing_master_key_is_refused_at_start() {
    let mut c = Cluster::control_plane_only();
    let id = file_key_id(&c.data_dir);
    c.kill_control_plane();
    let wrong = "ab".repeat(32);
    std::fs::write(c.data_dir.join("master.key"), &wrong).expect("write");
    let wrong_id = file_key_id(&c.data_dir);
    let out = serve_refused(&c.data_dir);
    out.code(1);
    out.stderr_has(&[
        &format!("sealed with master key {id}"),
        &format!("the loaded key is {wrong_id}"),
    ]);
    std::fs::remove_file(c.data_dir.join("master.key")).expect("rm");
    let out = serve_refused(&c.data_dir);
    out.code(1);
    out.stderr_has(&["master.key is missing", &id, "restore"]);
    assert!(
        !c.data_dir.join("master.key").exists(),
        "no new key is made for sealed data"
    );
}

#[test]
fn a_key_from_the_environment_is_not_rotated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config = own_config(dir.path(), &data_dir);
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("LEASH_MASTER_KEY", "cd".repeat(32))
        .env("LEASH_LOG", "info");
    let mut cp = Daemon::spawn("control plane", cmd);
    cp.wait_for_line("listening on ", WAIT);
    let mut ctl = Command::new(bin("leashctl"));
    ctl.env("LEASH_ADMIN_SOCKET", dir.path().join("run/admin.sock"))
        .args(["key", "rotate-master"]);
    let out = process::run(ctl, None, COMMAND_TIMEOUT);
    out.code(1);
    out.stderr_has(&["LEASH_MASTER_KEY", "cannot replace it"]);
    assert!(!data_dir.join("master.key").exists());
    assert!(!data_dir.join("master.key.new").exists());
    cp.kill9();
}

/// A tiny deterministic generator, so a failing round can be replayed from its seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn kill_9_during_rotations_restarts_with_a_consistent_key_and_data() {
    let mut c = Cluster::with(Options::default());
    basic(&c);
    fresh_token(&c);
    let kids = jwks_kids(&c);
    let ca_pin = c.ca_pin.clone();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    // Every key id a rotation acknowledged, oldest first.
    let mut acked: Vec<String> = vec![file_key_id(&c.data_dir)];
    let mut cut_short = 0;
    for round in 0..4 {
        let stop = AtomicBool::new(false);
        let done = Mutex::new(Vec::new());
        let delay = Duration::from_millis(20 + next(&mut seed) % 400);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let out = c.leashctl(&["key", "rotate-master"]);
                    match parse_rotation(&out) {
                        Some((_, new)) => done.lock().expect("lock").push(new),
                        None => break, // killed under it
                    }
                }
            });
            std::thread::sleep(delay);
            c.signal_control_plane(nix::sys::signal::Signal::SIGKILL);
            stop.store(true, Ordering::Relaxed);
        });
        acked.extend(done.into_inner().expect("lock"));
        c.restart_control_plane();
        let now = file_key_id(&c.data_dir);
        let last = acked.last().expect("a key").clone();
        if now != last {
            // Only a rotation that was under way at the kill may have taken over.
            assert!(
                !acked.contains(&now),
                "round {round} (seed {seed}): restarted with an older key {now}, acknowledged {acked:?}\n{}",
                c.logs_dump()
            );
            cut_short += 1;
            acked.push(now.clone());
        }
        assert!(
            c.control_plane_log()
                .contains(&format!("master_key_id={now}")),
            "round {round}: the control plane runs with the key in master.key"
        );
        assert!(
            !c.data_dir.join("master.key.new").exists(),
            "round {round}: a leftover master.key.new was not settled at start"
        );
        assert_eq!(c.ca_pin, ca_pin, "round {round}: the CA changed");
        assert_eq!(
            jwks_kids(&c),
            kids,
            "round {round}: the signing key changed"
        );
        fresh_token(&c);
    }
    assert!(
        acked.len() >= 3,
        "too few rotations happened to test anything: {acked:?}"
    );
    eprintln!(
        "{} key ids over 4 kills, {cut_short} rotations committed but not acknowledged",
        acked.len()
    );
    // Every older key is refused now.
    c.kill_control_plane();
    let current = std::fs::read(c.data_dir.join("master.key")).expect("key");
    std::fs::write(c.data_dir.join("master.key"), "ab".repeat(32)).expect("write");
    serve_refused(&c.data_dir).code(1);
    std::fs::write(c.data_dir.join("master.key"), current).expect("write");
    c.restart_control_plane();
    fresh_token(&c);
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The 32-byte private scalar inside a P-256 PKCS#8 document (after `04 20`, the
/// OCTET STRING holding it).
fn private_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let at = pkcs8
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .expect("a private key octet string");
    pkcs8[at + 2..at + 34].to_vec()
}

#[test]
fn the_data_directory_holds_no_plaintext_private_key() {
    if leash_tests::sled_only("it reads the sled database files in the data directory") {
        return;
    }
    let mut c = Cluster::start();
    basic(&c);
    fresh_token(&c);
    rotate(&c);
    fresh_token(&c);
    c.kill_control_plane();
    // The keys as the control plane unseals them, read with its own store and key.
    let (ca, jwt) = {
        let store = SledStore::open(&c.data_dir, Default::default()).expect("store");
        let master = MasterKey::load_or_create(&c.data_dir).expect("master key");
        let open = |name: &str| {
            let sealed = store.blob(name).expect("blob").expect("present");
            master.open(name, &sealed).expect("opens").to_vec()
        };
        (open("ca-key"), open("jwt-key-1"))
    };
    let mut needles = Vec::new();
    for (what, pkcs8) in [("CA key", &ca), ("JWT signing key", &jwt)] {
        needles.push((format!("{what} PKCS#8"), pkcs8.clone()));
        needles.push((format!("{what} private scalar"), private_scalar(pkcs8)));
    }
    let all = files(&c.data_dir);
    assert!(
        all.iter()
            .any(|(p, b)| p.starts_with(c.data_dir.join("db")) && !b.is_empty()),
        "no database files under {}",
        c.data_dir.display()
    );
    for (path, bytes) in &all {
        for (what, needle) in &needles {
            assert!(
                !contains(bytes, needle),
                "{} holds the {what} in plain text",
                path.display()
            );
        }
    }
}

#[test]
fn rotation_rewraps_secret_values_written_before_and_during_it() {
    let mut c = Cluster::start();
    c.my_workload("ci/job", "team-ci", &["kept", "busy"]);
    let put = |name: &str, value: &str| {
        c.leashctl_stdin(&["secret", "put", name, "--owner", "team-ci"], value)
            .code(0);
        c.remember_secret(value);
    };
    put("kept", "value-sealed-before-the-rotation");
    put("busy", "busy-0");
    let old_key = std::fs::read(c.data_dir.join("master.key")).expect("master.key");

    // Versions added while the key is rotated: each one is sealed under the key in force
    // and reaches the store before a rotation can leave it behind.
    let stop = AtomicBool::new(false);
    let written = Mutex::new(0u32);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                let v = format!("busy-{i}");
                let out = c.leashctl_stdin(&["secret", "put", "busy"], &v);
                assert_eq!(out.code, 0, "{out}");
                *written.lock().expect("lock") = i;
                i += 1;
            }
        });
        for _ in 0..3 {
            rotate(&c);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let last = *written.lock().expect("lock");
    assert!(last > 0, "no version was written during the rotations");

    // After a restart (which checks every sealed record's key id), both secrets read.
    c.restart_control_plane();
    let get = |name: &str| {
        c.eventually("the agent serves the secret", || {
            let out = c.leash(&["get", name, "--fresh"]);
            (out.code == 0).then(|| out.stdout.trim_end_matches('\n').to_string())
        })
    };
    assert_eq!(get("kept"), "value-sealed-before-the-rotation");
    assert_eq!(get("busy"), format!("busy-{last}"));
    let versions = c
        .leashctl(&["secret", "versions", "busy", "--output", "json"])
        .json();
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(last as usize + 1),
        "{versions}"
    );

    // The key from before the rotations opens none of it: refused at start.
    c.kill_control_plane();
    std::fs::write(c.data_dir.join("master.key"), &old_key).expect("restore the old key");
    let out = serve_refused(&c.data_dir);
    out.code(1)
        .stderr_has(&["the data is sealed with master key"]);
}
