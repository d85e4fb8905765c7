//! Simulated agents: the load generator speaking the agent side of the protocol itself
//! (enrollment, mTLS, the Sync stream), so one process can stand in for many hosts.

use std::sync::Arc;

use anyhow::{bail, Context};
use leash_agentd::tls::{self, Trust};
use leash_proto::join_token::JoinToken;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// A channel to the control plane trusting only the CA pinned in `token` (first contact,
/// as an enrolling agent makes it); one such channel can carry many Enroll calls.
pub async fn enroll_channel(addr: &str, token: &str) -> anyhow::Result<Channel> {
    let pin = JoinToken::parse(token)?.ca_pin;
    let cfg = tls::client_config(Trust::Pin(pin), None)?;
    Ok(tls::connect(&[addr.to_string()], cfg).await?)
}

/// Enroll a host and keep its identity in memory only: the same key, CSR and Enroll call
/// as `leash_agentd::identity::enroll`, without its four fsync'd files per host, which
/// would dominate set-up time at thousands of hosts. Returns the mTLS client config.
pub async fn enroll_in_memory(
    mut client: ControlPlaneClient<Channel>,
    token: &str,
    name: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let r = client
        .enroll(v1::EnrollRequest {
            protocol_version: leash_proto::PROTOCOL_VERSION,
            join_token: token.to_string(),
            csr_der: csr.der().to_vec(),
            name: name.to_string(),
            labels: Default::default(),
            agent_version: "bench".into(),
            default_name: String::new(),
        })
        .await
        .with_context(|| format!("enrolling {name}"))?
        .into_inner();
    let cfg = tls::client_config(
        Trust::Ca {
            cas: vec![CertificateDer::from(r.ca_certificate_der)],
            trust_domain: r.trust_domain,
        },
        Some((
            vec![CertificateDer::from(r.certificate_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )),
    )?;
    Ok(cfg)
}

/// An open Sync stream: the sender for agent messages and the control plane's messages.
#[derive(Debug)]
pub struct SyncStream {
    pub up: mpsc::Sender<v1::AgentMessage>,
    pub down: Streaming<v1::ControlMessage>,
}

/// Open a Sync stream with a hello from sequence 0 (a full snapshot follows).
pub async fn open_sync(client: &mut ControlPlaneClient<Channel>) -> anyhow::Result<SyncStream> {
    let (up, rx) = mpsc::channel(64);
    up.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::SyncHello {
            protocol_version: leash_proto::PROTOCOL_VERSION,
            last_seq: 0,
            agent_version: "bench".into(),
        })),
    })
    .await
    .context("sync stream closed")?;
    let down = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    Ok(SyncStream { up, down })
}

/// Send an agent message on the stream.
pub async fn send(
    up: &mpsc::Sender<v1::AgentMessage>,
    msg: v1::agent_message::Msg,
) -> anyhow::Result<()> {
    if up.send(v1::AgentMessage { msg: Some(msg) }).await.is_err() {
        bail!("sync stream closed");
    }
    Ok(())
}

/// Keep a Sync stream alive the way an agent does (acknowledge heartbeats and the
/// catch-up marker, acknowledge revocations with nothing wiped) until it ends.
pub async fn drain(mut s: SyncStream) {
    use v1::agent_message::Msg as Up;
    use v1::control_message::Msg;
    while let Ok(Some(m)) = s.down.message().await {
        let up = match m.msg {
            Some(Msg::Heartbeat(h)) => Up::Ack(v1::SyncAck { seq: h.seq }),
            Some(Msg::CaughtUp(c)) => Up::Ack(v1::SyncAck { seq: c.seq }),
            Some(Msg::Revocation(r)) => Up::WipeAck(v1::WipeAck {
                seq: r.seq,
                wiped: 0,
            }),
            _ => continue,
        };
        if send(&s.up, up).await.is_err() {
            return;
        }
    }
}

/// What an Issue from a simulated host says it attested: a caller with uid and gid `uid`
/// (the benches' workloads select `unix:uid:UID`).
pub fn attested(uid: u32) -> v1::Attested {
    v1::Attested {
        pid: std::process::id(),
        uid,
        gid: uid,
        user: "bench".into(),
        exe_path: "/usr/bin/bench-caller".into(),
        selectors: vec![format!("unix:uid:{uid}"), format!("unix:gid:{uid}")],
        ..Default::default()
    }
}
