//! Seed inputs for every target: real inputs made by Leash's own encoders (join tokens,
//! protobuf requests with a real CSR), plus the files under `corpus/<target>/` (the
//! example policy, a sample config, and every input that once crashed a target).
//!
//! Also a small deterministic mutator, so the smoke tests try thousands of inputs near
//! the seeds without a fuzzing engine.

use std::path::PathBuf;

use leash_proto::join_token::JoinToken;
use leash_proto::v1;
use prost::Message;

/// `corpus/<target>/` in this crate.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The files under `corpus/<target>/`, sorted by name.
pub fn on_disk(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(corpus_dir(target)) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push((e.file_name().to_string_lossy().into_owned(), b));
            }
        }
    }
    out.sort();
    out
}

fn pin() -> String {
    format!("sha256:{}", "3f".repeat(32))
}

fn token() -> String {
    JoinToken::encode("jt-4f2a9c", &[0x5a; 32], &pin())
}

/// A real PKCS#10 request, as an agent sends it.
fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(vec!["host-1".to_string()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec()
}

fn framed(kind: u8, m: &impl Message) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(m.encode_to_vec());
    v
}

/// Inputs made by the encoders, for `target`.
pub fn generated(target: &str) -> Vec<Vec<u8>> {
    let handle = format!("t-1a2b.{}", "QUFB".repeat(10) + "QUE");
    match target {
        "policy" => vec![
            b"permit(principal, action, resource);".to_vec(),
            b"@id(\"x\")\nforbid(principal, action == Leash::Action::\"read\", resource)\nwhen { context.ttl_seconds > 60 };".to_vec(),
        ],
        "config" => vec![
            b"listen = \"127.0.0.1:0\"\nheartbeat = \"1s\"\nmax_offline = \"5m\"\n".to_vec(),
            b"host_cert_ttl = \"99999999d\"\nissuer = \"\"\n".to_vec(),
        ],
        "join_token" => vec![
            token().into_bytes(),
            format!("  {}.127.0.0.1:8443\n", token()).into_bytes(),
        ],
        "agent_request" => vec![
            framed(
                0,
                &v1::FetchRequest {
                    credential: "db".into(),
                    action: "read".into(),
                    audience: "https://db.example".into(),
                    ttl_seconds: 300,
                    as_workload: "api".into(),
                    on_behalf_of: "alice".into(),
                    fresh: true,
                    task_handle: handle.clone(),
                },
            ),
            framed(1, &v1::WhoAmIRequest::default()),
            framed(2, &v1::StatusRequest::default()),
            framed(
                3,
                &v1::IntrospectRequest {
                    token: "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln".into(),
                },
            ),
            framed(
                4,
                &v1::StartTaskRequest {
                    name: "deploy-42".into(),
                    root_pid: 1,
                    ..Default::default()
                },
            ),
            framed(5, &v1::EndTaskRequest {
                    handle,
                    ..Default::default()
                }),
        ],
        "cp_request" => {
            let csr = csr();
            vec![
                framed(
                    0,
                    &v1::EnrollRequest {
                        protocol_version: leash_proto::PROTOCOL_VERSION,
                        join_token: token(),
                        csr_der: csr.clone(),
                        name: "host-1".into(),
                        labels: [("role".to_string(), "ci".to_string())].into(),
                        agent_version: "0.1.0".into(),
                        default_name: "host-1".into(),
                    },
                ),
                framed(1, &v1::RenewRequest { csr_der: csr }),
                framed(
                    2,
                    &v1::AgentMessage {
                        msg: Some(v1::agent_message::Msg::Ack(v1::SyncAck { seq: 7 })),
                    },
                ),
                framed(
                    3,
                    &v1::IssueRequest {
                        workload: "api".into(),
                        credential: "db".into(),
                        action: "read".into(),
                        audience: "https://db.example".into(),
                        ttl_seconds: 300,
                        ..Default::default()
                    },
                ),
                framed(
                    4,
                    &v1::IntrospectRequest {
                        token: "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln".into(),
                    },
                ),
                framed(
                    5,
                    &v1::TaskStartedRequest {
                        task: "t-1a2b".into(),
                        name: "deploy".into(),
                        root_pid: 42,
                        uid: 1000,
                    },
                ),
                framed(
                    6,
                    &v1::CompleteTaskRequest {
                        task: "t-1a2b".into(),
                        name: "deploy".into(),
                        ..Default::default()
                    },
                ),
            ]
        }
        "reference" => [
            "leash://stripe-key",
            "leash://team-web/db?action=deploy&audience=https://api.example&ttl=5m&as=ci/job#password",
            "leash://db?audience=https%3A%2F%2Fa.example%2F%3Fx%3D1%26y%3D2&ttl=90#pass%23word",
            "leash://api?ttl=&action=read&action=write",
            "leash://#",
            "leash://a?colour=red",
            "leash://a?ttl=99999999999999d",
            "leash://a#%E9%ff",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "envfile" => [
            "# migrated\n\nexport OPENAI_API_KEY=leash://team-web/openai-key\nDB=leash://db?action=read#password\n  PORT = 8080\nNAME=\"two words\"\nEMPTY=\nQ='leash://quoted'\r\n",
            "A=1\nsk_live_NOT_A_LINE\n",
            "1X=v\n=v\nK=\"open\nK='x\"\n",
            "postgres://svc:pw@db/app?sslmode=require\nc2VjcmV0+/w==\n",
            "K=leash://x?bogus=1\nL=leash://\nM=leash://y#\n",
            "export\nexport \nexport X\n\u{feff}A=1\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "http_query" => [
            "/v1/credentials/stripe-key",
            "/v1/credentials/team-web%2Fdb?action=deploy&audience=https%3A%2F%2Fapi.example&ttl=5m&as=ci%2Fjob&field=password&fresh",
            "/v1/credentials/x?fresh=false&field=a+b&ttl=90",
            "/v1/credentials/?ttl=soon&ttl=1m",
            "/v1/whoami?x",
            "/v1/status",
            "/v1/credentials/%ff?%e9=1&action=%zz",
            "/v2/nope?colour=red&field=",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        _ => Vec::new(),
    }
}

/// Every seed of `target`: generated, then on disk.
pub fn all(target: &str) -> Vec<Vec<u8>> {
    let mut v = generated(target);
    v.extend(on_disk(target).into_iter().map(|(_, b)| b));
    v
}

/// xorshift64*: deterministic, so a failing smoke run repeats exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is replaced: xorshift has no zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\n",
    b"\"",
    b"'",
    b".",
    b"\\u0000",
    b"99999999999999999999d",
    b"0",
    b"-1",
    b"\x1b[8m",
    b"\xc3\xa9",
    b"{",
    b"}",
    b"[",
    b"]",
    b"=",
    b"(",
    b")",
    b";",
];

/// One to four random edits of `seed`: flip, insert, delete, duplicate, splice in a token
/// that parsers treat specially.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next_u64() as u8),
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if !v.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                let part = v[at.min(end)..end].to_vec();
                v.splice(at..at, part);
            }
            4 => {
                let t = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, t.iter().copied());
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v
}

/// Under `cargo xtask fuzz`: write every seed of `target` into the directory named by
/// `$LEASH_FUZZ_SEEDS` (the corpus libFuzzer reads next), named by content.
pub fn write_for_libfuzzer(target: &str) {
    let Some(dir) = std::env::var_os("LEASH_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    for (i, s) in all(target).iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("seed-{i:03}")), s);
    }
}
