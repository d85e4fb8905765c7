//! Unit tests of attestation, against this test process and a child it starts.

use super::exe::hash_at_most;
use super::*;
use crate::procfs::{parse_status, start_time};
use nix::unistd::{Gid, Group, Uid, User};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set for the copy of this test binary that `connect_child` starts.
const CHILD_SOCKET_ENV: &str = "LEASH_ATTEST_TEST_CHILD_SOCKET";

fn own_pid() -> i32 {
    std::process::id() as i32
}

fn own_exe() -> String {
    std::env::current_exe()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn sha256_of(path: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(path).unwrap(),
    ))
}

fn attestor(cli_paths: Vec<PathBuf>) -> Attestor {
    Attestor::new(AttestorConfig {
        cli_paths,
        ..AttestorConfig::default()
    })
    .unwrap()
}

fn self_peer() -> (Peer, UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let peer = Peer::from_stream(a.as_fd()).unwrap();
    (peer, a, b)
}

fn assert_shareable<T: Clone + Send + Sync + 'static>() {}

#[test]
fn peer_and_attestor_are_shareable() {
    assert_shareable::<Peer>();
    fn sync<T: Send + Sync>() {}
    sync::<Attestor>();
}

/// Checks attest_quick against tampered copies of what it remembered. `via_status`
/// forces the `/proc/<pid>/status` path (kernels without `PIDFD_GET_INFO`).
fn check_reuse(via_status: bool) {
    let (peer, _a, _b) = self_peer();
    if via_status {
        let files = ProcFiles {
            dir: File::open(format!("/proc/{}", own_pid())).unwrap(),
            status: Some(File::open(proc_path(own_pid(), "status")).unwrap()),
        };
        peer.inner.files.set(Some(files)).unwrap();
    }
    let att = attestor(vec![]);
    let full = att.attest(&peer).unwrap();
    assert_eq!(att.attest_quick(&peer).as_ref(), Some(&full));
    let original = peer.inner.remembered.lock().unwrap().clone().unwrap();
    let tamper = |f: &dyn Fn(&mut Remembered)| {
        let mut r = Remembered {
            attestor: original.attestor,
            at: original.at,
            // Due for the executable and namespace re-check.
            exe_checked: Mutex::new(original.at - EXE_RECHECK),
            uids: original.uids,
            gids: original.gids,
            groups: original.groups.clone(),
            exe: original.exe,
            attestation: original.attestation.clone(),
        };
        f(&mut r);
        *peer.inner.remembered.lock().unwrap() = Some(Arc::new(r));
        att.attest_quick(&peer)
    };
    assert!(tamper(&|_| {}).is_some(), "unchanged grounds are reused");
    assert!(tamper(&|r| r.exe.ino ^= 1).is_none(), "another executable");
    assert!(
        tamper(&|r| r.exe.ctime.1 ^= 1).is_none(),
        "executable changed"
    );
    assert!(tamper(&|r| r.uids[2] ^= 1).is_none(), "saved uid changed");
    assert!(tamper(&|r| r.uids[3] ^= 1).is_none(), "fs uid changed");
    assert!(tamper(&|r| r.gids[0] ^= 1).is_none(), "real gid changed");
    if via_status {
        assert!(
            tamper(&|r| r.groups.push(4_000_000)).is_none(),
            "groups changed"
        );
    }
    assert!(
        tamper(&|r| r.at -= REMEMBER_FOR).is_none(),
        "too old to reuse"
    );
    // Between executable re-checks only the ids are read: a changed executable is
    // seen at the next re-check, EXE_RECHECK at most after the last.
    assert!(
        tamper(&|r| {
            r.exe.ino ^= 1;
            r.exe_checked = Mutex::new(std::time::Instant::now());
        })
        .is_some(),
        "executable not re-checked within EXE_RECHECK"
    );
    // attest() falls back to a full attestation, which remembers afresh.
    assert_eq!(att.attest(&peer).unwrap(), full);
    assert_eq!(att.attest_quick(&peer), Some(full));
}

#[test]
fn remembered_attestation_is_reused_only_while_its_grounds_hold() {
    check_reuse(false);
    check_reuse(true);
}

#[test]
fn attests_itself_over_a_socketpair() {
    let (peer, _a, _b) = self_peer();
    assert_eq!(peer.pid(), own_pid());
    assert_eq!(Some(peer.start_time()), start_time(own_pid()));

    let att = attestor(vec![]).attest(&peer).unwrap();
    let uid = Uid::effective().as_raw();
    let gid = Gid::effective().as_raw();
    let exe = own_exe();
    let sha = sha256_of(&exe);
    assert_eq!((att.pid, att.uid, att.gid), (own_pid() as u32, uid, gid));
    assert!(!att.via_cli);
    assert_eq!(att.exe_path.as_deref(), Some(exe.as_str()));
    assert_eq!(att.exe_sha256.as_deref(), Some(sha.as_str()));
    let user = User::from_uid(Uid::from_raw(uid)).unwrap().map(|u| u.name);
    assert_eq!(att.user, user);
    let mut expected = vec![
        format!("unix:uid:{uid}"),
        format!("unix:gid:{gid}"),
        format!("unix:path:{exe}"),
        format!("unix:sha256:{sha}"),
    ];
    if let Some(name) = user {
        expected.push(format!("unix:user:{name}"));
    }
    if let Some(group) = Group::from_gid(Gid::from_raw(gid)).unwrap() {
        expected.push(format!("unix:group:{}", group.name));
    }
    for s in &expected {
        assert!(
            att.selectors.contains(s),
            "missing {s} in {:?}",
            att.selectors
        );
    }
    assert!(att.matches(&expected));
}

#[test]
fn pins_with_pidfd_open_when_peer_pidfd_is_unavailable() {
    let (a, _b) = UnixStream::pair().unwrap();
    let peer = Peer::pin_stream(a.as_fd(), false).unwrap();
    assert_eq!(peer.pin_method(), PinMethod::PidfdOpen);
    assert_eq!(sys::pidfd_pid(peer.pidfd()).unwrap(), Some(own_pid()));
    let att = attestor(vec![]).attest(&peer).unwrap();
    assert_eq!(att.exe_path.as_deref(), Some(own_exe().as_str()));
    // A clone shares the pin.
    let clone = peer.clone();
    assert_eq!(clone.start_time(), peer.start_time());
}

#[test]
fn exe_hash_is_cached() {
    let attestor = attestor(vec![]);
    let (peer, _a, _b) = self_peer();
    let first = attestor.attest(&peer).unwrap();
    let second = attestor.attest(&peer).unwrap();
    assert_eq!(first, second);
    assert_eq!(attestor.exes.hashes_computed.load(Ordering::Relaxed), 1);
    assert_eq!(attestor.exes.cache().len(), 1);
}

#[test]
fn large_executables_get_no_sha256() {
    let attestor = Attestor::new(AttestorConfig {
        cli_paths: vec![],
        max_hash_bytes: 1024,
    })
    .unwrap();
    let (peer, _a, _b) = self_peer();
    let att = attestor.attest(&peer).unwrap();
    assert_eq!(att.exe_path.as_deref(), Some(own_exe().as_str()));
    assert_eq!(att.exe_sha256, None);
    assert!(!att.selectors.iter().any(|s| s.starts_with("unix:sha256:")));
}

#[test]
fn hash_limit_is_enforced_while_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"0123456789").unwrap();
    let mut f = File::open(&path).unwrap();
    assert_eq!(hash_at_most(&mut f, 9).unwrap(), None);
    let mut f = File::open(&path).unwrap();
    assert_eq!(
        hash_at_most(&mut f, 10).unwrap().unwrap(),
        sha256_of(path.to_str().unwrap())
    );
}

#[test]
fn cli_peer_is_attested_by_its_parent() {
    // Pretend this test binary is the installed CLI: the socket peer (us) is then
    // "leash", and path/sha256 must come from whoever started us (cargo, a shell…).
    let attestor = attestor(vec![PathBuf::from(own_exe())]);
    let (peer, _a, _b) = self_peer();
    let att = attestor.attest(&peer).unwrap();
    assert!(att.via_cli);
    // uid/gid still come from the peer itself.
    assert_eq!((att.uid, att.gid), (peer.uid(), peer.gid()));
    assert!(!att.selectors.contains(&format!("unix:path:{}", own_exe())));

    let ppid = nix::unistd::getppid().as_raw();
    let parent = procfs::read_status(ppid).unwrap();
    if check_ids(ppid, &parent, peer.uid(), peer.gid()).is_err() {
        // Started by a parent with other ids (e.g. `setpriv … test-binary` from a root
        // shell): it must lend nothing.
        assert_eq!((&att.exe_path, &att.exe_sha256), (&None, &None));
        assert!(!att.selectors.iter().any(|s| s.starts_with("unix:path:")));
        return;
    }
    let parent_path = att.exe_path.clone().expect("parent runs with our ids");
    assert_ne!(parent_path, own_exe());
    assert_eq!(
        std::fs::read_link(format!("/proc/{ppid}/exe"))
            .unwrap()
            .to_str(),
        Some(parent_path.as_str())
    );
    assert!(att.selectors.contains(&format!("unix:path:{parent_path}")));
    assert_eq!(att.exe_sha256, Some(sha256_of(&parent_path)));
}

#[test]
fn refuses_peers_in_other_namespaces() {
    let (peer, _a, _b) = self_peer();
    let mut attestor = attestor(vec![]);
    attestor.mnt_ns = (0, 0);
    let err = attestor.attest(&peer).unwrap_err();
    assert!(
        matches!(err, AttestError::Namespace { kind: "mount", .. }),
        "{err}"
    );
    attestor.pid_ns = (0, 0);
    let err = attestor.attest(&peer).unwrap_err();
    assert!(
        matches!(err, AttestError::Namespace { kind: "pid", .. }),
        "{err}"
    );
}

const STATUS: &str =
    "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t1\n\
    Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t10 27 100 \n";

#[test]
fn set_id_processes_are_refused() {
    let ok = parse_status(STATUS).unwrap();
    check_ids(42, &ok, 1000, 100).unwrap();

    // setuid root binary run by 1000: effective 0, real and saved differ.
    for (from, to) in [
        ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t0\t0\t0"),
        ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t0\t1000\t1000\t1000"),
        ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000\t0\t1000"),
        ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000\t1000\t0"),
        ("Gid:\t100\t100\t100\t100", "Gid:\t100\t0\t100\t100"),
        ("Gid:\t100\t100\t100\t100", "Gid:\t100\t100\t5\t100"),
    ] {
        let status = parse_status(&STATUS.replace(from, to)).unwrap();
        let err = check_ids(42, &status, 1000, 100).unwrap_err();
        assert!(
            matches!(err, AttestError::IdMismatch { pid: 42, .. }),
            "{to}"
        );
        assert!(err.to_string().contains("set-id programs are refused"));
    }
    // Socket credentials that match nothing in /proc (ids changed after connect).
    assert!(check_ids(42, &ok, 0, 100).is_err());
    assert!(check_ids(42, &ok, 1000, 0).is_err());
}

#[test]
fn matches_requires_every_selector() {
    let att = Attestation {
        pid: 1,
        uid: 1000,
        gid: 100,
        user: Some("ci".into()),
        exe_path: None,
        exe_sha256: None,
        via_cli: false,
        selectors: ["unix:uid:1000", "unix:user:ci", "unix:gid:100"]
            .map(String::from)
            .into(),
    };
    let req = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(att.matches(&req(&["unix:uid:1000"])));
    assert!(att.matches(&req(&["unix:uid:1000", "unix:user:ci"])));
    assert!(!att.matches(&req(&["unix:uid:1000", "unix:path:/usr/bin/python3"])));
    assert!(!att.matches(&req(&["unix:uid:0"])));
    assert!(!att.matches(&[]), "no selectors must match nothing");
}

/// Starts a copy of this test binary that connects to a listener and waits for EOF;
/// returns the child and our end of its connection.
fn connect_child() -> (Child, UnixStream, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "attest::tests::child_helper_connects_and_waits",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_SOCKET_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "child never connected");
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "child exited before connecting"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    (child, stream, dir)
}

#[test]
#[ignore = "helper: started as a child process by attests_another_process_until_it_exits"]
fn child_helper_connects_and_waits() {
    let Some(path) = std::env::var_os(CHILD_SOCKET_ENV) else {
        return;
    };
    let mut stream = UnixStream::connect(path).unwrap();
    // Hold the connection until the parent closes its end.
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

#[test]
fn attests_another_process_until_it_exits() {
    let (mut child, stream, _dir) = connect_child();
    let peer = Peer::from_stream(stream.as_fd()).unwrap();
    assert_eq!(peer.pid(), child.id() as i32);

    let direct = attestor(vec![]);
    assert_eq!(direct.attest_quick(&peer), None, "nothing to reuse yet");
    let plain = direct.attest(&peer).unwrap();
    assert_eq!(plain.pid, child.id());
    assert!(!plain.via_cli);
    assert_eq!(plain.exe_path.as_deref(), Some(own_exe().as_str()));
    assert_eq!(direct.attest_quick(&peer).as_ref(), Some(&plain));

    // With the child's binary as "the CLI", its parent — this process — is attested.
    let cli = attestor(vec![PathBuf::from(own_exe())]);
    let via = cli.attest(&peer).unwrap();
    assert!(via.via_cli);
    assert_eq!(via.exe_path.as_deref(), Some(own_exe().as_str()));
    assert_eq!(via.exe_sha256, plain.exe_sha256);

    // Closing our end lets the child exit; once reaped, its pin must fail.
    drop(stream);
    child.wait().unwrap();
    assert_eq!(
        direct.attest_quick(&peer),
        None,
        "a reaped peer is never reused"
    );
    let err = cli.attest(&peer).unwrap_err();
    assert!(matches!(err, AttestError::PeerGone { .. }), "{err}");
    assert!(!procfs::is_ancestor_or_self(
        peer.pid(),
        peer.start_time(),
        peer.pid()
    ));
}
