//! A TCP proxy between the soak's agents and the control plane, so the soak can drop an
//! agent's connections (and make it reconnect) without restarting either process, which
//! would reset the memory figures the soak is watching. It forwards bytes only: TLS stays
//! end to end.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl State {
    fn close_all(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for s in conns.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The proxy. Dropping it closes every connection and stops its accept thread.
#[derive(Debug)]
pub struct Proxy {
    /// Where agents connect.
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Proxy {
    /// Listen on 127.0.0.1:0 and forward to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("the proxy cannot bind")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("soak-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let client = match conn {
                        Ok(c) => c,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    };
                    if st.cut.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(st.upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    {
                        let mut conns = st.conns.lock().unwrap_or_else(|p| p.into_inner());
                        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                            conns.push(a);
                            conns.push(b);
                        }
                    }
                    pipe(client, s2);
                    pipe(server, c2);
                }
            })?;
        Ok(Proxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// Close every connection and refuse new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.close_all();
    }

    /// Forward new connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.close_all();
        // Wake the blocking accept so its thread sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}
