//! The workload socket: a Unix listener whose connections carry their pinned peer.
//!
//! Each accepted connection's peer is read once (SO_PEERCRED, pinned by pidfd) and
//! travels with the connection as tonic connect-info; the API attests it again on every
//! request. Connections per uid are capped here, before any request is read. A
//! connection over the cap gets no service: it is kept open only briefly (and only a few
//! such at a time), for every request on it to be answered with the limit that was hit
//! (see [`Conn::over_cap`]), so the caller learns why instead of seeing a reset.
//!
//! The socket speaks two protocols. Every gRPC client opens with the HTTP/2 preface
//! (`PRI * HTTP/2.0…`); the first bytes of each connection are read (and replayed to
//! whoever serves it) to tell that from plain HTTP/1.1, which goes to the JSON API
//! (`http.rs`, handed over by the caller of [`incoming`] so this file does not depend on
//! it). Both kinds of connection are counted against the same per-uid cap, carry the
//! same pinned peer and are attested the same way.
//!
//! The client-to-server bytes of every gRPC connection pass through [`authority`]: many
//! gRPC clients send the socket's path as HTTP/2 `:authority`, which the HTTP/2 server
//! under tonic refuses; that layer replaces it with `localhost`, so every service on the
//! socket serves those clients unchanged.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use leash_proto::clock::Clock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

use crate::attest::Peer;

mod authority;
mod hpack;

/// Socket set-up failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The path exists and is not a socket; we never delete such a file.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Could not create the directory or bind.
    #[error("cannot listen on {path}: {source}; pass --socket with a path this user may create")]
    Bind {
        /// Path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket's directory could be changed by someone other than root and this
    /// user, who could then replace the socket with their own.
    #[error(
        "refusing to serve the workload socket {path}: {source}. Put it in a directory \
         that only root or this user can change (pass --socket)"
    )]
    Untrusted {
        /// Socket path.
        path: PathBuf,
        /// What is wrong with its directory.
        source: leash_proto::socket_trust::TrustError,
    },
}

/// Default socket path: `/run/leash/agent.sock` as root; as another user
/// `$XDG_RUNTIME_DIR/leash/agent.sock`, or the system path when that variable is unset
/// (never a guessable directory in `/tmp` that another user could create first).
pub fn default_socket() -> PathBuf {
    leash_proto::socket_trust::default_daemon_socket(
        Path::new(leash_proto::socket_trust::SYSTEM_AGENT_SOCKET),
        nix::unistd::geteuid().as_raw(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
    )
}

/// Bind the workload socket: mode 0666 in a 0755 directory (identity comes from
/// attestation, not file permissions). The directory, and every one above it, must be
/// one only root or this user can change (see `leash_proto::socket_trust`): the CLIs
/// refuse anything else. A stale file is removed only if it is a socket.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    prepare_dir(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(l)
}

/// Create the socket's directory (0755) if missing, and check that it and every
/// directory above it can be changed only by root or this user.
pub fn prepare_dir(path: &Path) -> Result<(), SocketError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    leash_proto::socket_trust::check_dir(dir, nix::unistd::geteuid().as_raw()).map_err(|source| {
        SocketError::Untrusted {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Open connections per uid.
#[derive(Debug, Default)]
struct ConnCounts(Mutex<HashMap<u32, usize>>);

/// Decrements the uid's count when the connection closes.
#[derive(Debug)]
struct ConnGuard {
    counts: Arc<ConnCounts>,
    uid: u32,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

/// How long a connection over the per-uid cap stays open to be told so.
pub const OVER_CAP_LINGER: Duration = Duration::from_secs(2);
/// How many connections over the cap may be open at once (all uids together); past
/// that they are closed at once, unanswered.
pub const OVER_CAP_OPEN_MAX: usize = 32;

/// The per-uid connection limit a connection was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The caller's uid.
    pub uid: u32,
    /// The limit.
    pub limit: usize,
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many connections from uid {} (limit {}); close idle connections and try again",
            self.uid, self.limit
        )
    }
}

/// What a request learns about its connection (tonic connect-info).
#[derive(Debug, Clone)]
pub struct Conn {
    /// The pinned peer.
    pub peer: Peer,
    /// Set when the connection was over the per-uid cap: every request on it is refused
    /// with this.
    pub over_cap: Option<OverCap>,
}

/// Frees a slot of the over-the-cap pool when the connection closes.
#[derive(Debug)]
struct OverCapGuard(Arc<AtomicUsize>);

impl Drop for OverCapGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection with its pinned peer.
#[derive(Debug)]
pub struct AttestedStream {
    inner: UnixStream,
    peer: Peer,
    _guard: Option<ConnGuard>,
    /// Over the cap: the limit, the pool slot, and when reading ends.
    over_cap: Option<(OverCap, OverCapGuard, Pin<Box<tokio::time::Sleep>>)>,
    /// The first bytes, read to tell the protocol, given back to the first reads.
    replay: Vec<u8>,
    /// How much of `replay` has been given back.
    replayed: usize,
    /// gRPC connections: the `:authority` repair their input passes through.
    repair: Option<Box<Repair>>,
}

/// The `:authority` repair of one gRPC connection and the bytes it has ready for the
/// server.
#[derive(Debug, Default)]
struct Repair {
    fix: authority::AuthorityFix,
    ready: Vec<u8>,
    taken: usize,
    /// Set once the input was found malformed: every later read fails the same way.
    failed: Option<authority::AuthorityError>,
}

/// How much is read from the socket at a time for the repair.
const REPAIR_READ: usize = 16 * 1024;

/// The HTTP/2 client preface: every gRPC connection opens with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may stay silent before it is closed unanswered (it holds
/// one of its uid's connection slots meanwhile).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Which protocol a connection speaks, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (HTTP/2 with prior knowledge).
    Grpc,
    /// Anything else: plain HTTP/1.1 (malformed input is answered by the HTTP/1.1
    /// parser with 400).
    Http1,
}

/// The protocol `first` bytes of a connection show, or `None` while they are still a
/// proper prefix of the HTTP/2 preface.
pub fn protocol_of(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Grpc)
    } else {
        None
    }
}

impl AttestedStream {
    /// Read the first bytes (kept for replay) until they tell the protocol. `None` when
    /// the peer closed, failed or stayed silent past [`FIRST_BYTES_TIMEOUT`] first.
    pub async fn sniff(&mut self) -> Option<Protocol> {
        let deadline = tokio::time::Instant::now() + FIRST_BYTES_TIMEOUT;
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut n = 0;
        loop {
            if let Some(p) = protocol_of(&buf[..n]) {
                self.replay = buf[..n].to_vec();
                self.replayed = 0;
                if p == Protocol::Grpc {
                    self.repair = Some(Box::default());
                }
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.read(&mut buf[n..])).await {
                Ok(Ok(k)) if k > 0 => n += k,
                _ => return None,
            }
        }
    }
}

impl Connected for AttestedStream {
    type ConnectInfo = Conn;
    fn connect_info(&self) -> Conn {
        Conn {
            peer: self.peer.clone(),
            over_cap: self.over_cap.as_ref().map(|(o, _, _)| *o),
        }
    }
}

impl AttestedStream {
    /// Read the connection's own bytes: the first bytes given back, then the socket
    /// (ending early once a connection over the cap has lingered long enough).
    fn poll_raw(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.replayed < self.replay.len() {
            let rest = &self.replay[self.replayed..];
            let k = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..k]);
            self.replayed += k;
            if self.replayed == self.replay.len() {
                self.replay = Vec::new();
                self.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some((_, _, linger)) = self.over_cap.as_mut() {
            if linger.as_mut().poll(cx).is_ready() {
                // End of input: the server closes the connection.
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    /// Read through the `:authority` repair: give out what it has ready, or feed it
    /// what the socket has until it has something (or the input ends).
    fn poll_repaired(
        &mut self,
        r: &mut Repair,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(e) = &r.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())));
            }
            if r.taken < r.ready.len() {
                let k = (r.ready.len() - r.taken).min(buf.remaining());
                buf.put_slice(&r.ready[r.taken..r.taken + k]);
                r.taken += k;
                if r.taken == r.ready.len() {
                    r.ready.clear();
                    r.taken = 0;
                    // A large header block grew it: give the memory back.
                    r.ready.shrink_to(2 * REPAIR_READ);
                }
                return Poll::Ready(Ok(()));
            }
            // Not zeroed first: ReadBuf tracks what was written.
            let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); REPAIR_READ];
            let mut rb = ReadBuf::uninit(&mut raw);
            std::task::ready!(self.poll_raw(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(())); // end of input
            }
            if let Err(e) = r.fix.feed(rb.filled(), &mut r.ready) {
                tracing::info!(
                    uid = self.peer.uid(),
                    error = %e,
                    "closed a gRPC connection whose HTTP/2 input is malformed; \
                     the client must speak HTTP/2 (RFC 9113, HPACK RFC 7541)"
                );
                r.failed = Some(e);
            }
        }
    }
}

impl AsyncRead for AttestedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.repair.take() {
            None => this.poll_raw(cx, buf),
            Some(mut r) => {
                let res = this.poll_repaired(&mut r, cx, buf);
                this.repair = Some(r);
                res
            }
        }
    }
}

impl AsyncWrite for AttestedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept connections, pin their peers, enforce the per-uid connection cap. gRPC
/// connections come out of the returned stream (for tonic); HTTP/1.1 connections are
/// handed to `http1`. Telling them apart happens on a task of each connection's own, so
/// a silent client holds up no one else.
pub fn incoming(
    listener: UnixListener,
    max_per_uid: usize,
    http1: impl Fn(AttestedStream) + Send + Sync + 'static,
) -> tokio_stream::wrappers::ReceiverStream<Result<AttestedStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let http1 = Arc::new(http1);
    let counts = Arc::new(ConnCounts::default());
    let over_cap_open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = match Peer::from_stream(stream.as_fd()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(error = %e, "refused a connection whose peer could not be pinned");
                    continue;
                }
            };
            let uid = peer.uid();
            let within = {
                let mut m = counts.0.lock().unwrap_or_else(|p| p.into_inner());
                let n = m.entry(uid).or_insert(0);
                if *n >= max_per_uid {
                    false
                } else {
                    *n += 1;
                    true
                }
            };
            let s = if within {
                AttestedStream {
                    inner: stream,
                    peer,
                    _guard: Some(ConnGuard {
                        counts: counts.clone(),
                        uid,
                    }),
                    over_cap: None,
                    replay: Vec::new(),
                    replayed: 0,
                    repair: None,
                }
            } else {
                let taken = over_cap_open.fetch_add(1, Ordering::AcqRel);
                let slot = OverCapGuard(over_cap_open.clone());
                tracing::warn!(
                    uid,
                    limit = max_per_uid,
                    answered = taken < OVER_CAP_OPEN_MAX,
                    "refused a connection: too many open for this uid"
                );
                if taken >= OVER_CAP_OPEN_MAX {
                    continue; // dropping the stream closes it; the slot is given back
                }
                AttestedStream {
                    inner: stream,
                    peer,
                    _guard: None,
                    over_cap: Some((
                        OverCap {
                            uid,
                            limit: max_per_uid,
                        },
                        slot,
                        Box::pin(tokio::time::sleep(OVER_CAP_LINGER)),
                    )),
                    replay: Vec::new(),
                    replayed: 0,
                    repair: None,
                }
            };
            if tx.is_closed() {
                return;
            }
            let (tx, http1) = (tx.clone(), http1.clone());
            tokio::spawn(async move {
                let mut s = s;
                match s.sniff().await {
                    Some(Protocol::Grpc) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Some(Protocol::Http1) => http1(s),
                    None => {} // closed, failed or silent: dropping it frees its slot
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A token bucket per uid for requests. It refills by the agent's [`Clock`], so a test
/// that moves the clock refills it without waiting.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    clock: Clock,
    /// Tokens left and when (clock milliseconds) they were counted, per uid.
    buckets: Mutex<HashMap<u32, (f64, i64)>>,
}

impl RateLimit {
    /// `per_sec` requests a second with a burst of the same size; 0 disables it.
    pub fn new(per_sec: u32, clock: Clock) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec),
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `uid`.
    pub fn allow(&self, uid: u32) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = self.clock.now_ms();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = m.entry(uid).or_insert((self.per_sec, now));
        // A clock set back refills nothing (and never takes tokens away).
        let elapsed_secs = (now.saturating_sub(*last)).max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed_secs * self.per_sec).min(self.per_sec);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_caps_a_burst() {
        let r = RateLimit::new(10, Clock::default());
        let allowed = (0..100).filter(|_| r.allow(1)).count();
        assert!((10..=11).contains(&allowed), "{allowed}");
        assert!(r.allow(2), "other uids have their own bucket");
        assert!(RateLimit::new(0, Clock::default()).allow(1));
    }

    #[test]
    fn rate_limit_refills_by_the_clock_it_is_handed() {
        let clock = Clock::default();
        let r = RateLimit::new(10, clock.clone());
        while r.allow(1) {}
        assert!(!r.allow(1), "the burst is spent");
        // Moving the clock a second refills the whole burst, with no wait.
        clock.advance_ms(1_000);
        let allowed = (0..100).filter(|_| r.allow(1)).count();
        assert!((10..=11).contains(&allowed), "{allowed}");
    }

    #[test]
    fn the_first_bytes_tell_grpc_from_http1() {
        assert_eq!(protocol_of(b""), None);
        assert_eq!(
            protocol_of(b"PRI * HT"),
            None,
            "still a prefix of the preface"
        );
        assert_eq!(protocol_of(H2_PREFACE), Some(Protocol::Grpc));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(protocol_of(&more), Some(Protocol::Grpc));
        assert_eq!(protocol_of(b"G"), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"POST /"), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(protocol_of(&[0xff, 0]), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed_to_the_reader() {
        let (a, mut b) = UnixStream::pair().expect("socketpair");
        let peer = Peer::from_stream(a.as_fd()).expect("pin our own process");
        let mut s = AttestedStream {
            inner: a,
            peer,
            _guard: None,
            over_cap: None,
            replay: Vec::new(),
            replayed: 0,
            repair: None,
        };
        use tokio::io::AsyncWriteExt;
        b.write_all(b"GET /v1/status HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(s.sniff().await, Some(Protocol::Http1));
        drop(b);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET /v1/status HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn grpc_connections_are_read_through_the_authority_repair() {
        let (a, mut b) = UnixStream::pair().expect("socketpair");
        let peer = Peer::from_stream(a.as_fd()).expect("pin our own process");
        let mut s = AttestedStream {
            inner: a,
            peer,
            _guard: None,
            over_cap: None,
            replay: Vec::new(),
            replayed: 0,
            repair: None,
        };
        // The preface, then HEADERS (stream 1, END_HEADERS) with one literal field:
        // `:authority: tmp%2Fa.sock`, as grpc-core sends it.
        let mut block = vec![0x00, 10];
        block.extend_from_slice(b":authority");
        block.push(12);
        block.extend_from_slice(b"tmp%2Fa.sock");
        let mut input = H2_PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x4, 0, 0, 0, 1]);
        input.extend_from_slice(&block);
        use tokio::io::AsyncWriteExt;
        b.write_all(&input).await.expect("write");
        assert_eq!(s.sniff().await, Some(Protocol::Grpc));
        drop(b);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.expect("read");
        assert!(
            all.starts_with(H2_PREFACE),
            "the replayed preface goes through"
        );
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("localhost") && !text.contains("%2F"),
            "{text:?}"
        );
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("agent.sock");
        std::fs::write(&p, b"not a socket").expect("write");
        assert!(matches!(bind(&p), Err(SocketError::NotASocket(_))));
        std::fs::remove_file(&p).expect("rm");
        let l = bind(&p).expect("bind");
        drop(l);
        // A stale socket is replaced.
        bind(&p).expect("rebind over stale socket");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
    }

    #[tokio::test]
    async fn refuses_a_directory_others_can_write_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("run");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let p = d.join("agent.sock");
        let e = bind(&p).expect_err("a world-writable directory is refused");
        assert!(matches!(e, SocketError::Untrusted { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&d.display().to_string()) && m.contains("--socket"),
            "{m}"
        );
        assert!(!p.exists(), "nothing was bound");
        // The same directory made private again is fine.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        bind(&p).expect("bind");
    }
}
