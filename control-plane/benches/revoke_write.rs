//! The store's half of a secret rotation: the one durable write that adds a version and
//! revokes every lease of the older one (and, for comparison, `Revoke {all}` of the same
//! number of leases), against a sled store in a temporary directory. Each round first
//! issues one lease per host, as the `bench revoke --secret` rounds do. Reports p50/p99
//! per write.
//!
//! Run: `cargo bench -p leash-control-plane --bench revoke_write [-- LEASES ROUNDS [rotate-only]]`

use std::time::{Duration, Instant};

use leash_control_plane::clock::Clock;
use leash_control_plane::model::{
    Credential, Event, Facts, Host, JoinTokenRecord, Lease, LeaseState, RevocationTarget,
    SecretVersion, Workload,
};
use leash_control_plane::store::{Older, SecretWrite, SledStore, Storage, SECRET_KIND};
use leash_proto::workload_kind::WorkloadKind;

const SECRET: &str = "bench-secret";

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn secret_def(version: u32) -> Credential {
    Credential {
        name: SECRET.into(),
        kind: SECRET_KIND.into(),
        default_ttl: 3600,
        max_ttl: 86400,
        default_action: "read".into(),
        owner: Some("bench".into()),
        format: "text".into(),
        current_version: version,
        ..Default::default()
    }
}

fn version(v: u32) -> SecretVersion {
    SecretVersion {
        version: v,
        created_at: 0,
        created_by: "root".into(),
        size: 32,
        fingerprint: "f".into(),
        sealed: vec![7; 80],
    }
}

fn lease(host: usize, version: u32) -> Lease {
    Lease {
        id: leash_control_plane::random_id("l", 10),
        workload: "bench/revoke".into(),
        credential: SECRET.into(),
        action: "read".into(),
        audience: "bench".into(),
        host: format!("sim-{host:05}"),
        task: None,
        on_behalf_of: None,
        approval: None,
        context: Some(Facts {
            uid: 4242,
            user: "bench".into(),
            exe_path: "/usr/bin/bench".into(),
            sha256: "ab".repeat(32),
            ttl_seconds: 3600,
            audience: "bench".into(),
            task: None,
            on_behalf_of: String::new(),
            now: 1_700_000_000,
        }),
        policy_version: 1,
        issued_at: 1_700_000_000,
        expires_at: 1_700_003_600,
        seq: 0,
        state: LeaseState::Active,
        reason: None,
        fingerprint: "0123456789ab".into(),
        ends_outside: false,
        version,
        audiences: Vec::new(),
    }
}

async fn issue_all(s: &std::sync::Arc<SledStore>, hosts: usize, version: u32) {
    let mut set = tokio::task::JoinSet::new();
    for h in 0..hosts {
        let l = lease(h, version);
        let e = Event::new("issued").lease(l.id.clone());
        let s = s.clone();
        set.spawn(async move { s.issue_lease(l, e, Vec::new()).await.expect("issue") });
    }
    while set.join_next().await.is_some() {}
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let hosts = args.first().copied().unwrap_or(1000);
    let rounds = args.get(1).copied().unwrap_or(30);
    // `rotate-only`: every round is a rotation (no revocation of everything between).
    let rotate_only = std::env::args().any(|a| a == "rotate-only");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(dir.path(), Clock::default()).expect("open");
        s.put_workload(
            Workload {
                name: "bench/revoke".into(),
                owner: "bench".into(),
                kind: WorkloadKind::Service,
                selectors: vec!["unix:uid:4242".into()],
                hosts: Default::default(),
                allow: vec![SECRET.into()],
                expires_at: 0,
                disabled: false,
                created_at: 0,
                x509_svid_ttl: 0,
            },
            Event::new("x"),
        )
        .await
        .expect("workload");
        for h in 0..hosts {
            let id = format!("t{h}");
            s.put_join_token(
                JoinTokenRecord {
                    id: id.clone(),
                    secret_sha256: "x".into(),
                    name: None,
                    labels: Default::default(),
                    created_at: 0,
                    expires_at: i64::MAX,
                    used_by: None,
                    revoked: false,
                },
                Event::new("x"),
            )
            .await
            .expect("token");
            s.enroll(
                &id,
                "x",
                Host {
                    name: format!("sim-{h:05}"),
                    labels: Default::default(),
                    enrolled_at: 0,
                    last_seen: 0,
                    evicted: false,
                    cert_serial: format!("{h:08x}"),
                    cert_not_after: 0,
                },
                0,
                Event::new("enrolled"),
            )
            .await
            .expect("enroll");
        }
        s.put_secret(SecretWrite {
            def: secret_def(1),
            expected: 0,
            version: version(1),
            older: Older::Keep,
            event: Event::new("secret-put"),
        })
        .await
        .expect("put");
        let mut current = 1;
        let (mut rotate, mut revoke) = (Vec::new(), Vec::new());
        for round in 0..(rounds * 2 + 6) {
            issue_all(&s, hosts, current).await;
            let t = Instant::now();
            let n = if rotate_only || round % 2 == 0 {
                let w = s
                    .put_secret(SecretWrite {
                        def: secret_def(current + 1),
                        expected: current,
                        version: version(current + 1),
                        older: Older::Revoke {
                            reason: "bench".into(),
                            actor: "root".into(),
                        },
                        event: Event::new("secret-rotated"),
                    })
                    .await
                    .expect("rotate");
                current += 1;
                let n = w.revocation.map_or(0, |r| r.lease_ids.len());
                if round >= 6 {
                    rotate.push(t.elapsed());
                }
                n
            } else {
                let r = s
                    .revoke(RevocationTarget::All, "bench".into(), "root".into(), vec![])
                    .await
                    .expect("revoke");
                if round >= 6 {
                    revoke.push(t.elapsed());
                }
                r.lease_ids.len()
            };
            assert_eq!(n, hosts, "round {round} covered {n} leases");
        }
        for (name, v) in [
            ("rotate (put_secret, Older::Revoke)", &mut rotate),
            ("revoke all", &mut revoke),
        ] {
            if v.is_empty() {
                continue;
            }
            let p50 = pct(v, 50.0);
            let p99 = pct(v, 99.0);
            println!(
                "{name}: {} leases, {} rounds: p50 {:.2} ms ({:.1} µs per lease), p99 {:.2} ms",
                hosts,
                v.len(),
                p50.as_secs_f64() * 1e3,
                p50.as_secs_f64() * 1e6 / hosts as f64,
                p99.as_secs_f64() * 1e3
            );
        }
    });
}
