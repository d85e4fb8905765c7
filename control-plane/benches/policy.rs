//! Policy evaluation benchmark: building the request (entities + context) and
//! evaluating it, at 10 and 1,000 policies. Reports p50/p99 per decision, which is
//! why it times each iteration itself rather than using criterion (whose report is a
//! mean with a confidence interval, not tail latency).
//!
//! Run: `cargo bench -p leash-control-plane --bench policy`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use leash_control_plane::model::{Credential, Host, Workload};
use leash_control_plane::policy::{Engine, Facts};
use leash_proto::workload_kind::WorkloadKind;

fn workload(i: usize) -> Workload {
    Workload {
        name: format!("team-{}/svc-{i}", i % 50),
        owner: format!("team-{}", i % 50),
        kind: WorkloadKind::Service,
        selectors: vec![format!("unix:uid:{}", 1000 + i)],
        hosts: BTreeMap::new(),
        allow: vec![format!("cred-{}", i % 100)],
        expires_at: 0,
        disabled: false,
        created_at: 0,
        x509_svid_ttl: 0,
    }
}

fn policies(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        match i % 4 {
            0 => out.push_str(&format!(
                "permit(principal == Leash::Workload::\"team-{}/svc-{i}\", action == Leash::Action::\"read\", resource == Leash::Credential::\"cred-{}\") when {{ context.ttl_seconds <= 900 }};\n",
                i % 50,
                i % 100
            )),
            1 => out.push_str(&format!(
                "permit(principal, action == Leash::Action::\"deploy\", resource == Leash::Credential::\"cred-{}\") when {{ context.host.hasTag(\"role\") && context.host.getTag(\"role\") == \"ci-{i}\" && context.task.present }};\n",
                i % 100
            )),
            2 => out.push_str(&format!(
                "forbid(principal, action, resource == Leash::Credential::\"cred-{}\") when {{ context.hour < 6 && principal.owner == \"team-{}\" }};\n",
                i % 100,
                i % 50
            )),
            _ => out.push_str(&format!(
                "@approval(\"required\")\npermit(principal, action == Leash::Action::\"admin\", resource == Leash::Credential::\"cred-{}\") when {{ context.on_behalf_of == \"user-{i}\" }};\n",
                i % 100
            )),
        }
    }
    out
}

fn pct(v: &mut [u128], p: f64) -> f64 {
    v.sort_unstable();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx] as f64 / 1000.0
}

fn main() {
    let actions: Vec<String> = ["read", "write", "deploy", "admin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let workloads: Vec<Workload> = (0..100).map(workload).collect();
    let cred = Credential {
        name: "cred-7".into(),
        kind: "jwt".into(),
        audiences: vec!["https://api.example".into()],
        default_ttl: 300,
        max_ttl: 3600,
        default_action: "read".into(),
        scopes: BTreeMap::new(),
        created_at: 0,
        ..Default::default()
    };
    let host = Host {
        name: "runner-1".into(),
        labels: [("role".to_string(), "ci-runner".to_string())].into(),
        enrolled_at: 0,
        last_seen: 0,
        evicted: false,
        cert_serial: "01".into(),
        cert_not_after: 0,
    };
    let facts = Facts {
        uid: 1007,
        user: "svc".into(),
        ttl_seconds: 300,
        audience: "https://api.example".into(),
        now: 1_795_867_200,
        ..Default::default()
    };
    println!("command: cargo bench -p leash-control-plane --bench policy");
    println!();
    println!("| policies | decision | p50 (µs) | p99 (µs) | iterations |");
    println!("|---:|---|---:|---:|---:|");
    for n in [10usize, 1000] {
        let engine = Engine::new(&actions).expect("engine");
        engine
            .install(1, &policies(n), &workloads)
            .expect("policies validate");
        let w = &workloads[7];
        let iters = 20_000;
        for _ in 0..2_000 {
            black_box(
                engine
                    .decide(w, &cred, "read", &host, &facts)
                    .expect("decide"),
            );
        }
        let mut t = Vec::with_capacity(iters);
        let mut allowed = false;
        for _ in 0..iters {
            let s = Instant::now();
            let v = engine
                .decide(black_box(w), &cred, "read", &host, &facts)
                .expect("decide");
            t.push(s.elapsed().as_nanos());
            allowed = v.allow;
        }
        let p50 = pct(&mut t, 0.50);
        let p99 = pct(&mut t, 0.99);
        println!(
            "| {n} | {} | {p50:.1} | {p99:.1} | {iters} |",
            if allowed { "allow" } else { "deny" }
        );
    }
}
