//! Unit tests of the backup file format, writing one, and a snapshot taken under
//! concurrent writes restored into a new store.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::clock::Clock;
use crate::fixtures::workload;
use crate::model::Event;
use crate::store::{SledStore, Storage};

fn sample() -> Snapshot {
    Snapshot {
        seq: 42,
        trees: vec![
            SnapshotTree {
                name: "meta".into(),
                rows: vec![(b"seq".to_vec(), 42u64.to_be_bytes().to_vec())],
            },
            SnapshotTree {
                name: "workloads".into(),
                rows: vec![
                    (b"a".to_vec(), b"{\"name\":\"a\"}".to_vec()),
                    (b"b".to_vec(), Vec::new()),
                ],
            },
            SnapshotTree {
                name: "leases".into(),
                rows: Vec::new(),
            },
        ],
    }
}

#[test]
fn a_backup_reads_back_as_written() {
    let bytes = encode(&sample(), 1_700_000_000_000);
    assert_eq!(&bytes[..8], MAGIC);
    let (h, snap) = decode("f", &bytes).expect("decode");
    assert_eq!(
        h,
        Header {
            version: VERSION,
            seq: 42,
            taken_ms: 1_700_000_000_000
        }
    );
    assert_eq!(snap, sample());
    assert_eq!(snap.rows(), 3);
}

#[test]
fn any_flipped_byte_is_refused() {
    let bytes = encode(&sample(), 1);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let e = decode("f", &b).expect_err("a changed byte is refused");
        assert!(matches!(e, BackupError::Corrupt { .. }), "byte {i}: {e}");
    }
}

#[test]
fn a_truncated_backup_is_refused() {
    let bytes = encode(&sample(), 1);
    for n in [0, 7, 12, 40, bytes.len() - 33, bytes.len() - 1] {
        let e = decode("f", &bytes[..n]).expect_err("cut short");
        assert!(matches!(e, BackupError::Corrupt { .. }), "{n} bytes: {e}");
        assert!(e.to_string().contains("not a usable backup"), "{e}");
    }
}

#[test]
fn another_version_is_refused_by_name() {
    let mut bytes = encode(&sample(), 1);
    bytes.truncate(bytes.len() - 32);
    bytes[8..12].copy_from_slice(&2u32.to_be_bytes());
    let sum = digest(&SHA256, &bytes);
    bytes.extend_from_slice(sum.as_ref());
    let e = decode("f", &bytes).expect_err("version 2");
    assert!(matches!(e, BackupError::Version { found: 2, .. }), "{e}");
}

#[test]
fn lengths_past_the_end_are_refused_even_with_a_good_checksum() {
    // A row whose key claims 4 GiB: never allocated, refused.
    let mut body = Vec::new();
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&VERSION.to_be_bytes());
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&1i64.to_be_bytes());
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&4u16.to_be_bytes());
    body.extend_from_slice(b"meta");
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    let sum = digest(&SHA256, &body);
    body.extend_from_slice(sum.as_ref());
    let e = decode("f", &body).expect_err("runs past the end");
    assert!(e.to_string().contains("runs past the end"), "{e}");
}

#[test]
fn a_backup_file_is_private_and_never_overwritten_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("b.leashbak");
    write_file(&f, b"one", false).expect("write");
    let mode = std::fs::metadata(&f).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let e = write_file(&f, b"two", false).expect_err("exists");
    assert!(matches!(e, BackupError::Exists(_)), "{e}");
    assert_eq!(std::fs::read(&f).expect("read"), b"one");
    write_file(&f, b"two", true).expect("forced");
    assert_eq!(std::fs::read(&f).expect("read"), b"two");
    assert!(!dir.path().join("b.leashbak.tmp").exists());
}

/// Open the store in `dir`, retrying while sled's threads of a dropped handle still
/// hold the lock.
fn reopen(dir: &std::path::Path) -> Arc<SledStore> {
    for _ in 0..100 {
        if let Ok(s) = SledStore::open(dir, Clock::default()) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    SledStore::open(dir, Clock::default()).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_concurrent_writes_holds_whole_batches_and_restores() {
    let src = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(src.path(), Clock::default()).expect("open");
    let mut writers = Vec::new();
    for i in 0..400 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            s.put_workload(workload(&format!("w{i}")), Event::new("workload-added"))
                .await
                .expect("put")
        }));
    }
    tokio::task::yield_now().await;
    let snap = s.snapshot().await.expect("snapshot");
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(s.workloads().expect("list").len(), 400);
    // Each write added one workload, one change and one event: the copy holds exactly
    // the writes up to its sequence, in every tree.
    assert_eq!(snap.rows_of("workloads"), snap.seq);
    assert_eq!(snap.rows_of("events"), snap.seq);

    let bytes = encode(&snap, 7);
    let file = src.path().join("b.leashbak");
    write_file(&file, &bytes, false).expect("write");
    let dst = tempfile::tempdir().expect("tempdir");
    let target = dst.path().join("data");
    let r = restore(&file, &target, false, 9).expect("restore");
    assert_eq!(r.header.seq, snap.seq);
    assert_eq!(r.rows_of("workloads"), snap.seq);
    assert!(r.replaced.is_none());
    assert!(!r.master_key_present);
    let restored = reopen(&target);
    assert_eq!(restored.current_seq(), snap.seq);
    assert_eq!(restored.workloads().expect("list").len() as u64, snap.seq);
    // The restored store carries on from the snapshot's sequence.
    let next = restored
        .put_workload(workload("after"), Event::new("workload-added"))
        .await
        .expect("put");
    assert_eq!(next, snap.seq + 1);
    drop(restored);

    // A second restore without --force is refused; with it, the old store is kept aside.
    let e = restore(&file, &target, false, 10).expect_err("not empty");
    assert!(matches!(e, BackupError::NotEmpty(_)), "{e}");
    let mut forced = restore(&file, &target, true, 11);
    for _ in 0..100 {
        if !matches!(forced, Err(BackupError::InUse(_))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        forced = restore(&file, &target, true, 11);
    }
    let forced = forced.expect("forced");
    assert_eq!(
        forced.replaced.as_deref(),
        Some(target.join("db.before-restore-11").as_path())
    );
    assert_eq!(reopen(&target).current_seq(), snap.seq);
}

#[test]
fn a_restore_of_a_damaged_file_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = encode(&sample(), 1);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x80;
    let file = dir.path().join("b.leashbak");
    std::fs::write(&file, &bytes).expect("write");
    let target = dir.path().join("data");
    let e = restore(&file, &target, true, 1).expect_err("damaged");
    assert!(matches!(e, BackupError::Corrupt { .. }), "{e}");
    assert!(!target.exists(), "nothing was created");
}

/// Not a check: the figures of docs (time and size of a backup of a store of N leases).
/// `LEASH_BACKUP_BENCH_LEASES=N [LEASH_BACKUP_BENCH_OUT=FILE] cargo test -p
/// leash-control-plane --lib --release backup::tests::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_backup_and_restore_of_n_leases() {
    let n: usize = std::env::var("LEASH_BACKUP_BENCH_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let src = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(src.path(), Clock::default()).expect("open");
    s.put_workload(workload("w"), Event::new("workload-added"))
        .await
        .expect("put");
    s.put_join_token(crate::fixtures::token("t"), Event::new("x"))
        .await
        .expect("token");
    s.enroll(
        "t",
        "x",
        crate::fixtures::host("h", "01"),
        0,
        Event::new("enrolled"),
    )
    .await
    .expect("enroll");
    let mut next = 0;
    while next < n {
        let mut batch = Vec::new();
        for i in next..(next + 512).min(n) {
            let s = s.clone();
            batch.push(tokio::spawn(async move {
                let mut ev = Event::new("issued");
                ev.lease = Some(format!("l{i:08}"));
                s.issue_lease(
                    crate::fixtures::lease(&format!("l{i:08}"), "w"),
                    ev,
                    Vec::new(),
                )
                .await
                .expect("issue")
            }));
        }
        next = (next + 512).min(n);
        for b in batch {
            b.await.expect("issue");
        }
    }
    let t = Instant::now();
    let snap = s.snapshot().await.expect("snapshot");
    let snap_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let bytes = encode(&snap, 1);
    let encode_ms = t.elapsed().as_millis();
    let file = src.path().join("b.leashbak");
    let t = Instant::now();
    write_file(&file, &bytes, false).expect("write");
    let write_ms = t.elapsed().as_millis();
    // Kept for a measurement through the binaries (restore it, serve, back it up).
    if let Ok(out) = std::env::var("LEASH_BACKUP_BENCH_OUT") {
        std::fs::copy(&file, out).expect("copy the backup out");
    }
    let dst = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let r = restore(&file, &dst.path().join("data"), false, 1).expect("restore");
    let restore_ms = t.elapsed().as_millis();
    assert_eq!(r.rows_of("leases"), n as u64);
    println!(
        "leases={n} rows={} file_bytes={} sled_bytes={} snapshot_in_writer_ms={snap_ms} encode_sha256_ms={encode_ms} write_fsync_ms={write_ms} restore_ms={restore_ms}",
        snap.rows(),
        bytes.len(),
        s.size_on_disk(),
    );
}
