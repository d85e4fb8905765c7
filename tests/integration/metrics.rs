//! Prometheus metrics as a scraper sees them: the control plane's `/metrics` on its
//! HTTPS listener (curl, trusting the Leash CA) and on a plain `[metrics] listen`
//! listener, the agent's on `--metrics-listen`; every exposition is parsed by the Python
//! `prometheus_client` parsers (the Prometheus text parser and the strict OpenMetrics
//! one). The counters must move as the test acts (issue, deny, cache hit, attestation
//! failure, revoke with --wait, task end), and no label value may carry a lease id, a
//! token, a fingerprint, a host or a workload name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leash_tests::{bin, python, Cluster, Options, COMMAND_TIMEOUT};

use crate::basic;
use crate::oidc::{curl, pem};

/// Parses the exposition in the file `argv[1]` with both of prometheus_client's parsers
/// and prints one JSON line per sample: `[name, {labels}, value]`, after a first line
/// with the family names and types.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.openmetrics.parser import text_string_to_metric_families as strict
text = open(sys.argv[1]).read()
# The strict OpenMetrics parser raises on any malformed line, a missing # EOF included.
strict_families = {f.name: f.type for f in strict(text)}
families = list(text_string_to_metric_families(text))
print(json.dumps(strict_families))
for f in families:
    for s in f.samples:
        print(json.dumps([s.name, s.labels, s.value]))
"#;

/// A parsed scrape: sample values by `name{k="v",...}` (labels sorted), and the
/// OpenMetrics family types by name.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
    label_values: Vec<String>,
}

impl Scrape {
    /// The value of `key` (`name` or `name{k="v"}`), 0 when absent.
    fn get(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

/// Parse `text` with the Python parsers (from the harness's environment).
fn parse(c: &Cluster, text: &str) -> Scrape {
    let file = c.dir().join("scrape.txt");
    std::fs::write(&file, text).expect("write the scrape");
    let out = python::run_script(
        PARSE,
        &[file.to_str().expect("utf-8")],
        &[],
        Duration::from_secs(60),
    );
    out.code(0);
    let mut lines = out.stdout.lines();
    let types: BTreeMap<String, String> =
        serde_json::from_str(lines.next().expect("the family types")).expect("types JSON");
    let mut samples = BTreeMap::new();
    let mut label_values = Vec::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a sample");
        let name = v[0].as_str().expect("name").to_string();
        let labels: BTreeMap<String, String> =
            serde_json::from_value(v[1].clone()).expect("labels");
        label_values.extend(labels.values().cloned());
        let key = if labels.is_empty() {
            name
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        samples.insert(key, v[2].as_f64().expect("value"));
    }
    Scrape {
        samples,
        types,
        label_values,
    }
}

/// The Leash CA as a PEM file (from the first agent's state dir).
fn ca_file(c: &Cluster) -> PathBuf {
    let der = std::fs::read(c.agent(0).state_dir.join("ca.crt")).expect("the agent's ca.crt");
    let p = c.dir().join("metrics-ca.pem");
    std::fs::write(&p, pem("CERTIFICATE", &der)).expect("write the CA");
    p
}

/// The address a log line "metrics listening on ADDR" names.
fn logged_addr(c: &Cluster, log: impl Fn() -> String) -> SocketAddr {
    c.eventually("the metrics address in the log", || {
        log()
            .lines()
            .find_map(|l| l.split("metrics listening on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    })
}

/// `curl http://ADDR/metrics`: the body, after checking the status and content type.
fn plain_scrape(addr: SocketAddr) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-i"])
        .arg(format!("http://{addr}/metrics"));
    let out = leash_tests::process::run(cmd, None, COMMAND_TIMEOUT);
    out.code(0);
    let (head, body) = out
        .stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head\n{out}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_string()
}

/// The control plane's exposition over HTTPS.
fn cp_scrape(c: &Cluster, ca: &Path) -> Scrape {
    let got = curl(c, ca, "/metrics", &[], None);
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.headers
            .contains("content-type: application/openmetrics-text"),
        "{got:?}"
    );
    parse(c, &got.body)
}

fn agent_scrape(c: &Cluster, addr: SocketAddr) -> Scrape {
    parse(c, &plain_scrape(addr))
}

/// No label value names something per-lease or secret.
fn assert_bounded_labels(s: &Scrape, forbidden: &[&str]) {
    for v in &s.label_values {
        assert!(
            !v.starts_with("l-") && !v.contains("sha256") && !v.starts_with("ey"),
            "label value {v:?} looks like a lease id, fingerprint or token"
        );
        for f in forbidden {
            assert!(!f.is_empty());
            assert!(
                !v.contains(f),
                "label value {v:?} carries {f:?}, which must never be a label"
            );
        }
        assert!(v.len() <= 32, "label value {v:?} is not from a small set");
    }
}

#[test]
fn counters_move_as_credentials_are_issued_denied_revoked_and_wiped() {
    let c = Cluster::with(
        Options::default()
            .config("[http]\nlisten = \"127.0.0.1:0\"\n")
            .agent_args(&["--metrics-listen", "127.0.0.1:0"]),
    );
    basic(&c);
    c.credential(
        "other",
        &["--audience", "https://other.example", "--ttl", "5m"],
    );
    let ca = ca_file(&c);
    let agent_addr = logged_addr(&c, || c.agent_log("host-1"));
    assert!(agent_addr.ip().is_loopback(), "{agent_addr}");

    let cp0 = cp_scrape(&c, &ca);
    let ag0 = agent_scrape(&c, agent_addr);
    assert_eq!(cp0.get("leash_hosts_connected"), 1.0, "{:?}", cp0.samples);
    let now = leash_tests::now_ms() as f64 / 1000.0;
    assert!(
        cp0.get("leash_ca_not_after_timestamp_seconds") > now,
        "{cp0:?}"
    );
    // One control plane leads the background workers (on PostgreSQL once it took the lock).
    c.eventually("the control plane leads the background workers", || {
        (cp_scrape(&c, &ca).get("leash_control_plane_leading") == 1.0).then_some(())
    });
    assert!(
        ag0.get("leash_agent_host_cert_expiry_timestamp_seconds") > now,
        "{ag0:?}"
    );
    assert_eq!(ag0.get("leash_agent_connected"), 1.0, "{ag0:?}");
    let age = ag0.get("leash_agent_heartbeat_age_seconds");
    assert!((0.0..60.0).contains(&age), "heartbeat age {age}");

    // Issued (a miss), then served from the cache (a hit).
    let first = c.get("api", &[]);
    assert!(!first.cached);
    let second = c.get("api", &[]);
    assert!(second.cached, "{:?}", second.json);
    // Denied: ci/job may not have `other`.
    c.leash(&["get", "other"]).code(2);
    // Not attested as the workload asked for.
    c.leash(&["get", "api", "--as", "nobody/else"]).code(2);

    let allowed = "leash_issuances_total{kind=\"jwt\",result=\"allowed\"}";
    let denied = "leash_issuances_total{kind=\"jwt\",result=\"denied\"}";
    let cp1 = cp_scrape(&c, &ca);
    assert_eq!(
        cp1.types.get("leash_issuances").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        cp1.types
            .get("leash_issuance_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        cp1.get(allowed) - cp0.get(allowed),
        1.0,
        "{:?}",
        cp1.samples
    );
    assert_eq!(cp1.get(denied) - cp0.get(denied), 1.0, "{:?}", cp1.samples);
    assert!(
        cp1.get("leash_issuance_duration_seconds_count{kind=\"jwt\"}")
            - cp0.get("leash_issuance_duration_seconds_count{kind=\"jwt\"}")
            >= 2.0
    );
    assert!(
        cp1.get("leash_policy_decisions_total{decision=\"allow\"}")
            > cp0.get("leash_policy_decisions_total{decision=\"allow\"}")
    );
    assert!(
        cp1.get("leash_policy_decisions_total{decision=\"deny\"}")
            > cp0.get("leash_policy_decisions_total{decision=\"deny\"}")
    );
    assert!(
        cp1.get("leash_store_write_batches_total") > cp0.get("leash_store_write_batches_total")
    );
    assert!(cp1.get("leash_store_flush_duration_seconds_count") > 0.0);
    let ag1 = agent_scrape(&c, agent_addr);
    let hit = "leash_agent_cache_requests_total{result=\"hit\"}";
    let miss = "leash_agent_cache_requests_total{result=\"miss\"}";
    assert_eq!(ag1.get(hit) - ag0.get(hit), 1.0, "{:?}", ag1.samples);
    assert_eq!(ag1.get(miss) - ag0.get(miss), 1.0, "{:?}", ag1.samples);
    assert!(ag1.get("leash_agent_fetch_duration_seconds_count{result=\"hit\"}") >= 1.0);
    let refused = "leash_agent_attestation_failures_total{reason=\"not_that_workload\"}";
    assert_eq!(
        ag1.get(refused) - ag0.get(refused),
        1.0,
        "{:?}",
        ag1.samples
    );
    assert_eq!(ag1.get("leash_agent_cached_credentials{kind=\"jwt\"}"), 1.0);

    // Revoked, waiting for the wipe: counted on both sides, with the ack latency.
    c.leashctl(&["revoke", "--all", "--wait"]).code(0);
    let cp2 = cp_scrape(&c, &ca);
    assert_eq!(
        cp2.get("leash_revocations_total{target=\"all\"}")
            - cp1.get("leash_revocations_total{target=\"all\"}"),
        1.0,
        "{:?}",
        cp2.samples
    );
    assert_eq!(
        cp2.get("leash_revocation_ack_duration_seconds_count")
            - cp1.get("leash_revocation_ack_duration_seconds_count"),
        1.0
    );
    let ag2 = agent_scrape(&c, agent_addr);
    let revoked = "leash_agent_wipes_total{cause=\"revoked\"}";
    assert_eq!(
        ag2.get(revoked) - ag1.get(revoked),
        1.0,
        "{:?}",
        ag2.samples
    );
    assert_eq!(ag2.get("leash_agent_cached_credentials{kind=\"jwt\"}"), 0.0);

    // A task's credential is wiped when the task ends.
    let work = c.dir().join("task");
    std::fs::create_dir_all(&work).expect("work dir");
    let mut cmd = c.leash_command(0);
    cmd.current_dir(&work)
        .env("LEASH_BIN", bin("leash"))
        .env_remove("LEASH_TASK")
        .args([
            "exec",
            "--task-name",
            "m",
            "--env",
            "TOKEN=api",
            "--",
            "true",
        ]);
    c.run(cmd).code(0);
    let task_end = "leash_agent_wipes_total{cause=\"task_end\"}";
    c.eventually("the task-end wipe is counted", || {
        let s = agent_scrape(&c, agent_addr);
        (s.get(task_end) - ag2.get(task_end) == 1.0).then_some(())
    });

    // Caught up once the agent acknowledged the latest sequence (the next heartbeat).
    let cp3 = c.eventually("the host is counted caught up", || {
        let s = cp_scrape(&c, &ca);
        (s.get("leash_hosts_caught_up") == 1.0).then_some(s)
    });
    assert_eq!(
        cp3.get("leash_sync_lag_max_sequences"),
        0.0,
        "{:?}",
        cp3.samples
    );
    assert_eq!(cp3.get("leash_sync_lag_hosts{lag=\"0\"}"), 1.0);
    assert_eq!(cp3.get("leash_hosts_failed_closed"), 0.0);
    let ag3 = agent_scrape(&c, agent_addr);
    let forbidden = [
        first.lease_id.as_str(),
        second.lease_id.as_str(),
        first.token.as_str(),
        "host-1",
        "ci/job",
        "team-ci",
    ];
    for s in [&cp0, &cp1, &cp2, &cp3, &ag0, &ag1, &ag2, &ag3] {
        assert_bounded_labels(s, &forbidden);
    }
    c.assert_no_secret_leaked();
}

#[test]
fn the_plain_metrics_listener_serves_metrics_only_and_a_bad_address_is_refused() {
    let c = Cluster::with(Options::default().config("[metrics]\nlisten = \"127.0.0.1:0\"\n"));
    let addr = logged_addr(&c, || c.control_plane_log());
    let s = parse(&c, &plain_scrape(addr));
    assert_eq!(s.get("leash_hosts_connected"), 1.0, "{:?}", s.samples);
    assert_eq!(s.get("leash_approvals_pending"), 0.0);
    assert!(
        s.types.contains_key("leash_end_queue_pending"),
        "{:?}",
        s.types
    );
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .arg(format!("http://{addr}/keys"));
    let out = leash_tests::process::run(cmd, None, COMMAND_TIMEOUT);
    assert_eq!(out.stdout.trim(), "404", "{out}");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\n[metrics]\nlisten = \"localhost\"\n",
            dir.path().join("data").display().to_string(),
            dir.path().join("admin.sock").display().to_string()
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--check-config", "--config"])
        .arg(&config);
    let out = leash_tests::process::run(cmd, None, COMMAND_TIMEOUT);
    out.code(1);
    out.stderr_has(&["metrics.listen", "not a socket address"]);

    // The agent refuses an address it cannot parse, as bad usage.
    let mut cmd = Command::new(bin("leash-agentd"));
    cmd.args([
        "run",
        "--control-plane",
        "https://127.0.0.1:1",
        "--state-dir",
    ])
    .arg(dir.path().join("state"))
    .args(["--metrics-listen", "nowhere"]);
    let out = leash_tests::process::run(cmd, None, COMMAND_TIMEOUT);
    out.code(1);
    out.stderr_has(&["--metrics-listen"]);
}
