//! Fuzz targets: every parser that takes input from outside the process, fed raw bytes.
//!
//! Each target is a plain function of `&[u8]` so that the same code runs under libFuzzer
//! (`cargo xtask fuzz`, binaries in `fuzz_targets/`) and in the smoke tests (`tests/`),
//! which replay the seed corpus and a few thousand mutations of it on every test run.
//! A target fails by panicking; it must not panic on any input.
//!
//! - `policy`: the Cedar policy text that `leashctl policy check` and `policy apply` send,
//!   through [`Engine::check`] and [`Engine::install`];
//! - `config`: the control plane's TOML config through [`FileConfig::parse`] and
//!   [`Config::resolve`];
//! - `join_token`: the join-token text through [`JoinToken::parse`], re-encoded;
//! - `agent_request`: the requests of the agent's workload socket, decoded with prost and
//!   fed to the first step that needs no live peer (the task-handle check);
//! - `cp_request`: the requests of the control plane's agent API, decoded and fed to the
//!   join-token parser, the label narrowing, the CSR signer and the token verifier;
//! - `reference`: `leash://NAME?…#field` references through [`reference::parse`]; what
//!   parses is written back in canonical form and parses to the same reference;
//! - `envfile`: the env files of `leash exec --env-file` through [`envfile::parse`];
//!   errors name a line that exists and holds an assignment;
//! - `http_query`: the request path and query of the agent's HTTP API through
//!   [`http::endpoint`] and [`CredentialQuery::parse`]; what parses is form-encoded
//!   again and parses to the same query.
//!
//! The first byte of a request input chooses the message type; the rest is its encoding.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use leash_agentd::attest::Attestation;
use leash_agentd::http::{self, CredentialQuery};
use leash_agentd::tasks::Tasks;
use leash_control_plane::config::{Config, FileConfig, Overrides};
use leash_control_plane::keys::{Keys, MasterKey};
use leash_control_plane::policy::Engine;
use leash_proto::envfile;
use leash_proto::join_token::JoinToken;
use leash_proto::reference;
use leash_proto::v1;
use prost::Message;

pub mod seeds;

/// The targets, by name (as `cargo xtask fuzz TARGET` takes them).
pub const TARGETS: &[&str] = &[
    "policy",
    "config",
    "join_token",
    "agent_request",
    "cp_request",
    "reference",
    "envfile",
    "http_query",
];

/// Run target `name` on `data`. Unknown names panic (a bug in the caller).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "policy" => policy(data),
        "config" => config(data),
        "join_token" => join_token(data),
        "agent_request" => agent_request(data),
        "cp_request" => cp_request(data),
        "reference" => reference(data),
        "envfile" => env_file(data),
        "http_query" => http_query(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let actions: Vec<String> = ["read", "write", "deploy", "admin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Engine::new(&actions).expect("the default schema builds")
    })
}

/// Policy text as `policy check` and `policy apply` take it (the CLI reads the file as
/// UTF-8 and sends the text).
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let e = engine();
    match e.check(text) {
        Ok(_) => {
            // What apply does next: compile and install it.
            let _ = e.install(1, text, &[]);
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
}

/// The config file (read as UTF-8), then every bound check.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FileConfig::parse(text, Path::new("fuzz.toml")) {
        Ok(file) => match Config::resolve(file, Overrides::default()) {
            Ok(c) => {
                // Every resolved value is within what its users assume.
                assert!(!c.issuer.is_empty());
                assert!(c.heartbeat < c.max_offline);
                assert!(u32::try_from(c.max_offline.as_secs()).is_ok());
                assert!(u32::try_from(c.max_approval.as_secs()).is_ok());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Join-token text; what parses re-encodes to the same token.
pub fn join_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = JoinToken::parse(text) {
        let again = JoinToken::encode(&t.id, &t.secret_bytes(), &t.ca_pin);
        assert_eq!(JoinToken::parse(&again).as_ref(), Ok(&t), "{again}");
    }
}

/// Decode `bytes` as `M`; what decodes must re-encode and decode to the same message.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again, m);
    Some(m)
}

/// A caller as attestation would describe it (the task check needs one).
fn caller() -> Attestation {
    Attestation {
        pid: std::process::id(),
        uid: 1000,
        gid: 1000,
        user: None,
        exe_path: None,
        exe_sha256: None,
        via_cli: false,
        selectors: Default::default(),
    }
}

/// The message types of the agent socket, in the order the first byte picks them.
pub const AGENT_REQUESTS: &[&str] = &[
    "FetchRequest",
    "WhoAmIRequest",
    "StatusRequest",
    "IntrospectRequest",
    "StartTaskRequest",
    "EndTaskRequest",
];

/// A request on the agent's workload socket.
pub fn agent_request(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let tasks = Tasks::default();
    match kind as usize % AGENT_REQUESTS.len() {
        0 => {
            if let Some(r) = decode::<v1::FetchRequest>(bytes) {
                // No task exists: any non-empty handle is refused, never accepted.
                let m = tasks.membership(&r.task_handle, &caller());
                if r.task_handle.trim().is_empty() {
                    assert!(matches!(m, Ok(None)));
                } else {
                    assert!(m.is_err());
                }
            }
        }
        1 => {
            let _ = decode::<v1::WhoAmIRequest>(bytes);
        }
        2 => {
            let _ = decode::<v1::StatusRequest>(bytes);
        }
        3 => {
            // Forwarded to the control plane, which verifies the token.
            if let Some(r) = decode::<v1::IntrospectRequest>(bytes) {
                verify_token(&r.token);
            }
        }
        4 => {
            let _ = decode::<v1::StartTaskRequest>(bytes);
        }
        _ => {
            if let Some(r) = decode::<v1::EndTaskRequest>(bytes) {
                let m = tasks.membership(&r.handle, &caller());
                assert!(r.handle.trim().is_empty() || m.is_err());
            }
        }
    }
}

/// Keys made once per process in a temp dir (the CSR signer and token verifier need them).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<(tempfile::TempDir, Keys)> = OnceLock::new();
    &KEYS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = leash_control_plane::store::SledStore::open(
                dir.path(),
                leash_control_plane::clock::Clock::default(),
            )
            .expect("store");
            let master = MasterKey::load_or_create(dir.path()).expect("master key");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let keys = rt
                .block_on(Keys::load_or_create(&*store, &master, "fuzz.example"))
                .expect("keys");
            (dir, keys)
        })
        .1
}

fn verify_token(token: &str) {
    // Arbitrary text never verifies: only tokens these keys signed do.
    assert!(leash_control_plane::issuer::verify(keys(), token).is_none());
}

/// The message types of the control plane's agent API, in the order the first byte picks
/// them.
pub const CP_REQUESTS: &[&str] = &[
    "EnrollRequest",
    "RenewRequest",
    "AgentMessage",
    "IssueRequest",
    "IntrospectRequest",
    "TaskStartedRequest",
    "CompleteTaskRequest",
];

/// A request on the control plane's agent API.
pub fn cp_request(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind as usize % CP_REQUESTS.len() {
        0 => {
            if let Some(r) = decode::<v1::EnrollRequest>(bytes) {
                // Enroll's steps before the store: token text, labels, CSR.
                let _ = JoinToken::parse(&r.join_token);
                let bound: BTreeMap<String, String> =
                    [("role".to_string(), "ci".to_string())].into();
                let asked: BTreeMap<String, String> = r.labels.into_iter().collect();
                if let Ok(l) = leash_control_plane::agent_api::narrow_labels(&bound, &asked) {
                    assert!(l.iter().all(|(k, v)| bound.get(k) == Some(v)));
                }
                sign_csr(&r.csr_der);
            }
        }
        1 => {
            if let Some(r) = decode::<v1::RenewRequest>(bytes) {
                sign_csr(&r.csr_der);
            }
        }
        2 => {
            let _ = decode::<v1::AgentMessage>(bytes);
        }
        3 => {
            let _ = decode::<v1::IssueRequest>(bytes);
        }
        4 => {
            if let Some(r) = decode::<v1::IntrospectRequest>(bytes) {
                verify_token(&r.token);
            }
        }
        5 => {
            let _ = decode::<v1::TaskStartedRequest>(bytes);
        }
        _ => {
            let _ = decode::<v1::CompleteTaskRequest>(bytes);
        }
    }
}

fn sign_csr(der: &[u8]) {
    let _ = keys().sign_host_cert(der, "host-1", std::time::Duration::from_secs(3600));
}

/// Longest error message a parser may give: they quote input only through
/// `names::excerpt`, never whole.
const MAX_MESSAGE: usize = 2048;

/// `%XX` for every byte but the unreserved ones (RFC 3986), so the text survives as one
/// query value or fragment.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `leash://` reference (as a file, the environment or an argument holds it).
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match reference::parse(text) {
        Ok(r) => {
            assert!(reference::is_reference(text));
            assert!(!r.name.is_empty());
            assert!(r.field.as_ref().is_none_or(|f| !f.is_empty()));
            // The canonical form parses to the same reference.
            let mut opts = Vec::new();
            for (k, v) in [
                ("action", &r.action),
                ("audience", &r.audience),
                ("as", &r.as_workload),
            ] {
                if !v.is_empty() {
                    opts.push(format!("{k}={}", percent(v)));
                }
            }
            if r.ttl_seconds > 0 {
                opts.push(format!("ttl={}", r.ttl_seconds));
            }
            let mut again = format!("{}{}", reference::SCHEME, r.name);
            if !opts.is_empty() {
                again.push('?');
                again.push_str(&opts.join("&"));
            }
            if let Some(f) = &r.field {
                again.push('#');
                again.push_str(&percent(f));
            }
            assert_eq!(reference::parse(&again).as_ref(), Ok(&r), "{again}");
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.len() <= MAX_MESSAGE, "{} bytes", m.len());
        }
    }
}

/// An env file of `leash exec --env-file`.
pub fn env_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    match envfile::parse("fuzz.env", text) {
        Ok(parsed) => {
            let mut last = 0;
            for l in &parsed {
                assert!(l.number > last && l.number <= lines.len());
                last = l.number;
                assert!(envfile::valid_var(&l.var), "{:?}", l.var);
                if let envfile::Value::Plain(p) = &l.value {
                    assert!(!reference::is_reference(p));
                }
            }
        }
        Err(e) => {
            let m = e.to_string();
            let n: usize = m
                .strip_prefix("fuzz.env line ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("the error names no line: {m}"));
            let line = lines
                .get(n.wrapping_sub(1))
                .unwrap_or_else(|| panic!("line {n} of {} does not exist", lines.len()));
            let t = line.trim();
            assert!(!t.is_empty() && !t.starts_with('#'), "line {n} is {t:?}");
            assert!(m.len() <= MAX_MESSAGE, "{} bytes", m.len());
            // A line that is not `VAR=…` is never shown: the message is only the
            // location and the rule.
            if matches!(
                e,
                envfile::EnvFileError::NotAnAssignment { .. }
                    | envfile::EnvFileError::BadVariable { .. }
            ) {
                assert!(m.len() < 300, "{m}");
            }
        }
    }
}

/// A request target of the agent's HTTP API (`/v1/credentials/NAME?QUERY`), split at
/// the first `?` into its path and its query, as the URI parser splits it.
pub fn http_query(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match http::endpoint(path) {
        Ok(http::Endpoint::Credential(name)) => assert!(!name.is_empty()),
        Ok(_) => {}
        Err(f) => {
            let _ = f.document();
            assert!(f.message.len() <= MAX_MESSAGE, "{} bytes", f.message.len());
        }
    }
    match CredentialQuery::parse(query) {
        Ok(q) => {
            let mut pairs = Vec::new();
            for (k, v) in [
                ("action", &q.action),
                ("audience", &q.audience),
                ("as", &q.as_workload),
            ] {
                if !v.is_empty() {
                    pairs.push(format!("{k}={}", percent(v)));
                }
            }
            if q.ttl_seconds > 0 {
                pairs.push(format!("ttl={}", q.ttl_seconds));
            }
            if let Some(f) = &q.field {
                assert!(!f.is_empty());
                pairs.push(format!("field={}", percent(f)));
            }
            if q.fresh {
                pairs.push("fresh=true".into());
            }
            let again = pairs.join("&");
            assert_eq!(CredentialQuery::parse(&again).as_ref(), Ok(&q), "{again}");
            let r = q.clone().request("c".into());
            assert_eq!((r.ttl_seconds, r.fresh), (q.ttl_seconds, q.fresh));
            assert!(r.on_behalf_of.is_empty() && r.task_handle.is_empty());
        }
        Err(f) => {
            let doc = f.document();
            assert_eq!(doc["error"]["exit_code"], 1, "{doc}");
            assert!(f.message.len() <= MAX_MESSAGE, "{} bytes", f.message.len());
        }
    }
}
