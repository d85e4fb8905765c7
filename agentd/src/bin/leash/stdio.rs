//! How `leash exec` wires its child's stdout and stderr through the masking filter.
//!
//! Pipes by default: one thread per stream reads the child's output, filters it and
//! writes it to ours. When our stdout is a terminal the child gets a pty instead (its
//! stdout, and its stderr and stdin when ours are terminals too), so programs that check
//! `isatty`, draw, prompt or use job control behave as they would without `leash`: the
//! child leads a new session on the pty, our terminal is put in raw mode while it runs
//! (keys, Ctrl-C included, reach the child through the pty's line discipline), and the
//! window size follows ours (on SIGWINCH). What it prints comes back through the filter.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::termios::{self, SetArg, Termios};

use crate::mask::{self, Patterns};

/// Our terminal's settings, put back when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The filters of a running child.
pub(crate) struct Filtered {
    threads: Vec<JoinHandle<()>>,
    /// Disconnected once every thread in `threads` has ended (each holds a sender).
    ended: mpsc::Receiver<()>,
    /// The pty's master side, when the child has a pty (for window-size changes).
    master: Option<Arc<File>>,
    raw: Option<RawMode>,
}

impl std::fmt::Debug for Filtered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filtered")
            .field("threads", &self.threads.len())
            .field("pty", &self.master.is_some())
            .finish()
    }
}

/// A thread copying `input` to `output` through the filter. When the copy ends (the
/// child's side closed, or our output failed) the input is dropped, so a child that
/// writes on to a closed reader gets EPIPE as it would without masking.
fn filter_thread(
    p: Arc<Patterns>,
    input: impl Read + Send + 'static,
    output: File,
    ended: mpsc::Sender<()>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("leash-mask".into())
        .spawn(move || {
            let _ = mask::pump(&p, input, output);
            drop(ended);
        })
}

/// As [`filter_thread`] for the read end of a pipe: unmasked output moves on from it
/// without a second copy ([`mask::pump_pipe`]).
fn pipe_filter_thread(
    p: Arc<Patterns>,
    input: File,
    output: File,
    ended: mpsc::Sender<()>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("leash-mask".into())
        .spawn(move || {
            let _ = mask::pump_pipe(&p, input, output);
            drop(ended);
        })
}

/// Our stream `fd` (1 or 2) as a file to write to.
fn ours(fd: impl AsFd) -> io::Result<File> {
    Ok(File::from(fd.as_fd().try_clone_to_owned()?))
}

/// A pipe whose write end becomes the child's stream and whose read end is filtered to
/// our `out`.
fn piped(
    p: &Arc<Patterns>,
    out: File,
    ended: &mpsc::Sender<()>,
) -> io::Result<(Stdio, JoinHandle<()>)> {
    let (r, w) = io::pipe()?;
    // A pipe of a read's size (the default is 64 KiB) lets the child write on while the
    // filter works, and the filter take what is there in one read: fewer wake-ups on both
    // sides. Not fatal: the kernel may cap it (fs.pipe-max-size), and 64 KiB still works.
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&r),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(mask::CHUNK as libc::c_int),
    );
    let t = pipe_filter_thread(p.clone(), File::from(OwnedFd::from(r)), out, ended.clone())?;
    Ok((Stdio::from(w), t))
}

/// Set up `cmd`'s stdout and stderr (and stdin, with a pty) to go through the filter, and
/// start the threads that copy. Call right before spawning; drop `cmd` right after, so
/// only the child holds the write ends.
pub(crate) fn wire(cmd: &mut tokio::process::Command, p: Arc<Patterns>) -> io::Result<Filtered> {
    let (ended_tx, ended) = mpsc::channel();
    if !io::stdout().is_terminal() {
        let (out, t1) = piped(&p, ours(io::stdout())?, &ended_tx)?;
        let (err, t2) = piped(&p, ours(io::stderr())?, &ended_tx)?;
        cmd.stdout(out).stderr(err);
        return Ok(Filtered {
            threads: vec![t1, t2],
            ended,
            master: None,
            raw: None,
        });
    }
    let size = leash_agentd::sys::window_size(io::stdout().as_fd()).ok();
    let pty = nix::pty::openpty(size.as_ref(), None)?;
    let master = Arc::new(File::from(pty.master));
    let slave: OwnedFd = pty.slave;
    let mut threads = vec![filter_thread(
        p.clone(),
        ArcRead(master.clone()),
        ours(io::stdout())?,
        ended_tx.clone(),
    )?];
    cmd.stdout(Stdio::from(slave.try_clone()?));
    if io::stderr().is_terminal() {
        cmd.stderr(Stdio::from(slave.try_clone()?));
    } else {
        let (err, t) = piped(&p, ours(io::stderr())?, &ended_tx)?;
        cmd.stderr(err);
        threads.push(t);
    }
    let mut raw = None;
    if io::stdin().is_terminal() {
        cmd.stdin(Stdio::from(slave.try_clone()?));
        raw = Some(RawMode::enter()?);
        let to_child = master.clone();
        // Keys to the child. Not joined: it waits on our terminal, and ends with us.
        std::thread::Builder::new()
            .name("leash-stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = io::stdin().lock();
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || (&*to_child).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })?;
    }
    leash_agentd::sys::controlling_terminal_on_exec(cmd);
    drop(slave);
    Ok(Filtered {
        threads,
        ended,
        master: Some(master),
        raw,
    })
}

/// Reads through a shared `File` (the pty master is read by one thread and written by
/// another).
struct ArcRead(Arc<File>);

impl Read for ArcRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Filtered {
    /// Whether the child has a pty.
    pub(crate) fn has_pty(&self) -> bool {
        self.master.is_some()
    }

    /// Our window changed size: pass the new size on to the child's pty.
    pub(crate) fn resized(&self) {
        if let (Some(m), Ok(ws)) = (
            &self.master,
            leash_agentd::sys::window_size(io::stdout().as_fd()),
        ) {
            let _ = leash_agentd::sys::set_window_size(m.as_fd(), &ws);
        }
    }

    /// Wait (at most `limit`) until everything the child's processes wrote has gone out,
    /// then put our terminal back.
    pub(crate) fn finish(mut self, limit: Duration) {
        // Nothing is sent: this returns as the last thread drops its sender (at its very
        // end, so joining is then immediate), or at the limit.
        let all_ended = matches!(
            self.ended.recv_timeout(limit),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        for t in std::mem::take(&mut self.threads) {
            if all_ended || t.is_finished() {
                let _ = t.join();
            }
        }
        drop(self.raw.take());
    }
}
