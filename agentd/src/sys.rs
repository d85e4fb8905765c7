#![allow(unsafe_code)]
//! Raw Linux system calls: the one module in the workspace allowed to use `unsafe`.
//!
//! It owns exactly three things, each kept as small as possible so it can be audited in one
//! sitting:
//! - process pinning: [`peer_pidfd`], [`pidfd_open`], [`pidfd_send_signal`],
//!   [`pidfd_pid`] and [`pidfd_creds`], which let `attest` refer to a caller by a handle
//!   the kernel never recycles, instead of a pid number that it does;
//! - process hardening: [`set_not_dumpable`] and [`set_child_subreaper`];
//! - terminals for `leash exec`'s masked child: [`window_size`], [`set_window_size`] and
//!   [`controlling_terminal_on_exec`], and its output's way through the filter without a
//!   second copy: [`tee`] and [`splice`];
//! - secret memory: [`SecretBuf`], a page-aligned allocation that is locked in RAM and kept
//!   out of core dumps, and the range helpers it uses ([`lock_memory`], [`dont_dump`], …).
//!
//! Everything here returns `std::io::Error` rather than a module error enum: these are thin
//! wrappers whose only failure is an errno, and the modules above them (`attest`, `secret`)
//! turn that errno into a message that says what the user can do.
//!
//! Rules for this file: every `unsafe` block has a `// SAFETY:` comment, and nothing here
//! makes a policy decision — that belongs to the callers.

use std::alloc::Layout;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::OnceLock;

use zeroize::Zeroize;

/// `SO_PEERPIDFD` (Linux ≥ 6.5). Not every `libc` release exports it, and its value is part
/// of the kernel ABI, so it is spelled out here. SPARC is the one Linux architecture that
/// numbers socket options differently.
#[cfg(target_arch = "sparc64")]
const SO_PEERPIDFD: libc::c_int = 0x0056;
#[cfg(not(target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 77;

/// Returns a pidfd for the process that connected the Unix socket `fd`.
///
/// The kernel takes the pidfd from the same record as `SO_PEERCRED`, so unlike
/// `pidfd_open(pid)` there is no window in which the peer can exit and its pid be reused.
/// Returns `Ok(None)` when the kernel does not know the option (before 6.5), so the caller
/// can fall back to [`pidfd_open`] plus a start-time check.
pub fn peer_pidfd(fd: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is open for the whole borrow. `pidfd` and `len` are live, writable locals
    // and `len` tells the kernel the exact size of `pidfd`, so it writes nothing beyond it.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            // Older kernels reject the unknown option; either answer means "not supported".
            Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) => Ok(None),
            _ => Err(err),
        };
    }
    if pidfd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERPIDFD succeeded but returned no descriptor",
        ));
    }
    // SAFETY: on success the kernel installed a new descriptor (O_CLOEXEC) in our table;
    // nothing else refers to it, so taking ownership is sound.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Opens a pidfd for `pid` (Linux ≥ 5.3). The descriptor is close-on-exec.
///
/// A pidfd names one process for as long as the descriptor is open, even after the pid
/// number has been reused; but *which* process it names is decided now, so the caller must
/// verify it (start time) if the pid came from somewhere older than this call.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        // 0 and negative values mean "this process" / "a group" to other calls; never here.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let flags: libc::c_uint = 0;
    // SAFETY: pidfd_open(2) takes two integers by value and reads no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(rc).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "pidfd_open returned an out-of-range fd",
        )
    })?;
    // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends `sig` to the process behind `pidfd`. Signal 0 sends nothing and only checks that
/// the process still exists (`ESRCH` once it has been reaped).
///
/// Unlike `kill(pid, …)`, this can never hit an unrelated process that inherited the pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    let flags: libc::c_uint = 0;
    // SAFETY: pidfd_send_signal(2) reads `info` only when it is non-null; we pass null, so
    // the kernel touches no memory of ours. `pidfd` is open for the whole borrow.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the pid (in our pid namespace) of the process behind `pidfd`, read from
/// `/proc/self/fdinfo/<fd>`; `None` once that process has exited (the kernel shows `-1`).
///
/// `Some(0)` means the process is alive but not visible in our pid namespace. No `unsafe`
/// is needed, but it is part of the pidfd toolkit and so lives beside it.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    parse_fdinfo_pid(&text)
}

/// The `Pid:` line of a pidfd's fdinfo. Kept separate so the parsing is testable.
fn parse_fdinfo_pid(text: &str) -> io::Result<Option<i32>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    // `NSpid:` also contains "Pid:", so match the line start exactly.
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .ok_or_else(|| invalid("fdinfo has no Pid: line (is this descriptor a pidfd?)"))?;
    match value.trim().parse::<i32>() {
        Ok(-1) => Ok(None),
        Ok(pid) => Ok(Some(pid)),
        Err(_) => Err(invalid("fdinfo Pid: line is not a number")),
    }
}

/// The real, effective, saved and fs uids and gids of a process, in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidfdCreds {
    /// Real, effective, saved, fs.
    pub uids: [u32; 4],
    /// Real, effective, saved, fs.
    pub gids: [u32; 4],
}

/// `struct pidfd_info` as of Linux 6.13 (`PIDFD_INFO_SIZE_VER0`, 64 bytes). Later kernels
/// append fields; they fill only as much as the size encoded in the request.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// `PIDFD_INFO_CREDS`: the uid and gid fields are filled in.
const PIDFD_INFO_CREDS: u64 = 1 << 1;
/// `PIDFD_GET_INFO` = `_IOWR(0xFF, 11, struct pidfd_info)`: direction read|write (3) in bits
/// 30-31, the 64-byte size in bits 16-29, type 0xFF, number 11.
const PIDFD_GET_INFO: u64 =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// The credentials of the process behind `pidfd`, from the kernel's own record
/// (`PIDFD_GET_INFO`, Linux ≥ 6.13): the same ids `/proc/<pid>/status` prints, for a
/// fraction of the cost. `Ok(None)` when the kernel does not have the ioctl; `ESRCH` once
/// the process has been reaped.
pub fn pidfd_creds(pidfd: BorrowedFd<'_>) -> io::Result<Option<PidfdCreds>> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_CREDS,
        ..PidfdInfo::default()
    };
    // SAFETY: PIDFD_GET_INFO writes at most the size encoded in the request number, which
    // is `size_of::<PidfdInfo>()`, into `info`, a live, writable, correctly sized
    // `repr(C)` value. `pidfd` is open for the whole borrow.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO as _,
            std::ptr::addr_of_mut!(info),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // Not a kernel with PIDFD_GET_INFO (or a pidfs-less pidfd).
            Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    if info.mask & PIDFD_INFO_CREDS == 0 {
        return Ok(None);
    }
    Ok(Some(PidfdCreds {
        uids: [info.ruid, info.euid, info.suid, info.fsuid],
        gids: [info.rgid, info.egid, info.sgid, info.fsgid],
    }))
}

/// Marks this process non-dumpable: no core dumps, and other same-uid processes can no
/// longer ptrace it or read its `/proc/<pid>/mem`, `environ` or fds. The agent holds
/// credentials in memory, so this is the first thing it does.
pub fn set_not_dumpable() -> io::Result<()> {
    let off: libc::c_ulong = 0;
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only and touches no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            off,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process a child subreaper: orphaned descendants are re-parented to us rather
/// than to init, so `leash exec` can find (and stop) double-forked helpers of its task.
pub fn set_child_subreaper() -> io::Result<()> {
    let on: libc::c_ulong = 1;
    // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only and touches no memory of
    // ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            on,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The system page size, read once.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| n.is_power_of_two())
            // 4 KiB is the smallest page any Linux target uses; over-aligning is harmless.
            .unwrap_or(4096)
    })
}

/// Locks the pages holding `buf` in RAM so they are never written to swap. Returns `false`
/// if the kernel refused (typically `RLIMIT_MEMLOCK` for an unprivileged agent); callers
/// tolerate that, because an unlocked secret is still better than no secret.
///
/// Locks apply to whole pages and do not nest: unlocking any range on a page unlocks it for
/// everything on that page. [`SecretBuf`] gives each secret its own pages for that reason.
pub fn lock_memory(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    // SAFETY: mlock(2) only changes whether the pages backing this (valid, borrowed) range
    // may be swapped; it neither reads nor writes the memory.
    unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) == 0 }
}

/// Undoes [`lock_memory`] for the pages holding `buf`. Returns `false` on failure.
pub fn unlock_memory(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    // SAFETY: munlock(2) only changes whether the pages backing this (valid, borrowed) range
    // may be swapped; it neither reads nor writes the memory.
    unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) == 0 }
}

/// Excludes the whole pages inside `buf` from core dumps (`MADV_DONTDUMP`). Returns `false`
/// if there are none or the kernel refused.
///
/// madvise works on whole pages, so the range is rounded *inward*: a page that `buf` only
/// partly covers may hold someone else's data and is left alone. A buffer that starts on a
/// page boundary and spans whole pages (as [`SecretBuf`] does) is covered exactly.
pub fn dont_dump(buf: &[u8]) -> bool {
    advise_whole_pages(buf, libc::MADV_DONTDUMP)
}

/// Undoes [`dont_dump`], so the heap pages can merge back with their neighbours' mappings
/// once the secret is gone (each differently-flagged range costs the process one VMA).
pub fn do_dump(buf: &[u8]) -> bool {
    advise_whole_pages(buf, libc::MADV_DODUMP)
}

fn advise_whole_pages(buf: &[u8], advice: libc::c_int) -> bool {
    let page = page_size();
    let start = buf.as_ptr() as usize;
    let Some(end) = start.checked_add(buf.len()) else {
        return false;
    };
    let Some(first) = start.checked_next_multiple_of(page) else {
        return false;
    };
    let last = end - end % page;
    if last <= first {
        return false;
    }
    // SAFETY: [first, last) lies inside `buf`, which we borrow, and is page-aligned as
    // madvise requires. MADV_DONTDUMP/MADV_DODUMP only set or clear a flag on the mapping;
    // they never change or free the memory.
    unsafe { libc::madvise(first as *mut libc::c_void, last - first, advice) == 0 }
}

/// A heap buffer for secret bytes that shares its pages with nothing else.
///
/// - It starts on a page boundary and spans whole pages, so [`lock_memory`] and
///   [`dont_dump`] cover exactly this secret and unlocking it cannot unlock a neighbour.
/// - It is locked and marked don't-dump *before* the secret is copied in, so the bytes are
///   never on a swappable page.
/// - Drop wipes every byte (volatile writes from `zeroize`) before the memory is unlocked
///   and handed back to the allocator.
///
/// The bytes are immutable after construction. `Debug` shows only the length.
pub struct SecretBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
    locked: bool,
    dont_dump: bool,
}

// SAFETY: SecretBuf exclusively owns its allocation (like a Box<[u8]>), and the bytes are
// never mutated after construction except in Drop, which has `&mut self`.
unsafe impl Send for SecretBuf {}
// SAFETY: shared access only hands out `&[u8]` to immutable bytes; there is no interior
// mutability, so concurrent readers cannot race.
unsafe impl Sync for SecretBuf {}

impl SecretBuf {
    /// Copies `bytes` into a fresh, page-aligned, locked (where allowed) allocation.
    ///
    /// # Panics
    /// If the length rounded up to whole pages overflows `isize` (as `Vec` would), or, via
    /// `handle_alloc_error`, if the allocator is out of memory.
    pub fn copy_from(bytes: &[u8]) -> SecretBuf {
        let page = page_size();
        // At least one page, even for an empty secret: a zero-sized Layout cannot be
        // allocated, and a single code path is easier to audit.
        let cap = bytes
            .len()
            .max(1)
            .checked_next_multiple_of(page)
            .expect("secret length overflows when rounded up to whole pages");
        let layout = Layout::from_size_align(cap, page)
            .expect("secret length overflows when rounded up to whole pages");
        // SAFETY: `layout` has a non-zero size (at least one page).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut buf = SecretBuf {
            ptr,
            len: bytes.len(),
            layout,
            locked: false,
            dont_dump: false,
        };
        buf.locked = lock_memory(buf.whole());
        buf.dont_dump = dont_dump(buf.whole());
        // SAFETY: `ptr` is valid for `cap >= bytes.len()` writes, properly aligned for u8,
        // and freshly allocated, so it cannot overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len()) };
        buf
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `layout.size() >= len` initialised bytes (zeroed, then
        // copied into) for as long as `self` lives, and they are not mutated while shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Whether the pages are locked in RAM (`mlock` succeeded).
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// Whether the pages are excluded from core dumps (`MADV_DONTDUMP` succeeded).
    pub fn excluded_from_dumps(&self) -> bool {
        self.dont_dump
    }

    /// The whole allocation, including the zero padding after the secret.
    fn whole(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `layout.size()` initialised bytes for as long as `self`
        // lives (alloc_zeroed initialises all of them).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        {
            // SAFETY: we own the allocation, it is valid for `layout.size()` bytes, and
            // `&mut self` guarantees no other reference to it exists.
            let whole =
                unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) };
            // Volatile writes the optimiser may not elide, although the memory is freed next.
            whole.zeroize();
        }
        // Flags are cleared only after the wipe, so the secret is never on an unlocked page.
        if self.dont_dump {
            do_dump(self.whole());
        }
        if self.locked {
            unlock_memory(self.whole());
        }
        // SAFETY: `ptr` was allocated in `copy_from` with exactly this layout and is freed
        // only here, once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBuf")
            .field("len", &self.len)
            .field("locked", &self.locked)
            .finish_non_exhaustive()
    }
}

/// Resolves when the process behind `pidfd` exits: a pidfd polls readable then. Used to
/// end a task the moment its root process is gone, whatever killed it.
pub async fn pidfd_exited(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: `AsyncFd` takes ownership of the `OwnedFd`, so the descriptor stays open
    // and refers to the same pidfd until the `AsyncFd` is dropped at the end of this
    // function; `OwnedFd::as_raw_fd` always returns that same descriptor.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(|e| e.into_parts().1)?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// The window size of the terminal on `fd` (`TIOCGWINSZ`).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to
    // a live, properly aligned `libc::winsize` of ours; `fd` is open for the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ,
            &mut ws as *mut libc::winsize,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(ws)
}

/// Set the window size of the terminal on `fd` (`TIOCSWINSZ`); the kernel sends SIGWINCH
/// to its foreground process group.
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ only reads one `struct winsize` through the pointer, which points
    // to a live `libc::winsize`; `fd` is open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make `cmd`'s child the leader of a new session whose controlling terminal is its
/// stdout (a pty slave), as a login shell's would be, so job control and `/dev/tty` work.
pub fn controlling_terminal_on_exec(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, and calls only
    // setsid(2) and ioctl(2), which are async-signal-safe; it allocates nothing and takes
    // no lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(1, libc::TIOCSCTTY, 0 as libc::c_int) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `tee(2)`: duplicate up to `len` bytes from the head of the pipe `from` into the pipe
/// `to` without consuming them (the kernel shares the pages; nothing is copied). Blocks
/// until `from` holds something; 0 when its writers are gone and it is empty.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: tee(2) takes two descriptors, borrowed for the call, and integers; it
    // touches no memory of ours.
    let n = unsafe { libc::tee(from.as_raw_fd(), to.as_raw_fd(), len, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `splice(2)` at the descriptors' own positions: move up to `len` bytes from `from` to
/// `to`, one of which is a pipe (pages move between pipes instead of being copied).
/// Returns how many moved; blocks as a read or write on the same descriptors would.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "the descriptor's own position", so the kernel reads and
    // writes no memory of ours; both descriptors are borrowed for the call.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_creds_are_our_own_ids() {
        let pidfd = pidfd_open(std::process::id() as i32).unwrap();
        let Some(creds) = pidfd_creds(pidfd.as_fd()).unwrap() else {
            eprintln!("SKIPPED: this kernel has no PIDFD_GET_INFO (Linux < 6.13)");
            return;
        };
        let u = nix::unistd::getresuid().unwrap();
        let g = nix::unistd::getresgid().unwrap();
        assert_eq!(
            creds.uids[..3],
            [u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()]
        );
        assert_eq!(
            creds.gids[..3],
            [g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()]
        );
    }

    #[test]
    fn pidfd_creds_of_a_reaped_process_fail() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        if let Err(e) = pidfd_creds(pidfd.as_fd()) {
            assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
        } else {
            // Without PIDFD_GET_INFO the call reports Ok(None); with it, a reaped
            // process must be an error, never someone's ids.
            assert!(pidfd_creds(pidfd.as_fd()).unwrap().is_none());
        }
    }

    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn own_pid() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn peer_pidfd_of_socketpair_names_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        // None means a kernel older than 6.5: the caller falls back to pidfd_open.
        if let Some(pidfd) = peer_pidfd(a.as_fd()).unwrap() {
            assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), Some(own_pid()));
        }
    }

    #[test]
    fn pidfd_open_self_is_alive() {
        let pidfd = pidfd_open(own_pid()).unwrap();
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), Some(own_pid()));
        pidfd_send_signal(pidfd.as_fd(), 0).unwrap();
    }

    #[test]
    fn pidfd_open_rejects_non_positive_pids() {
        assert!(pidfd_open(0).is_err());
        assert!(pidfd_open(-1).is_err());
    }

    #[test]
    fn pidfd_of_reaped_child_reports_gone() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), None);
        let err = pidfd_send_signal(pidfd.as_fd(), 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn fdinfo_parsing() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n";
        assert_eq!(parse_fdinfo_pid(text).unwrap(), Some(4242));
        assert_eq!(parse_fdinfo_pid("Pid:\t-1\nNSpid:\t-1\n").unwrap(), None);
        assert_eq!(parse_fdinfo_pid("Pid:\t0\n").unwrap(), Some(0));
        assert!(parse_fdinfo_pid("NSpid:\t12\n").is_err());
        assert!(parse_fdinfo_pid("Pid:\tx\n").is_err());
    }

    /// Runs `f` in a forked child, so process-wide flags do not leak into the test harness,
    /// and returns the child's exit status. The child only makes async-signal-safe calls.
    fn in_child(f: fn() -> bool) -> i32 {
        // SAFETY: the child runs `f`, which only calls prctl (async-signal-safe), then
        // `_exit`; it never returns into the multi-threaded harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = f();
                // SAFETY: `_exit` ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child ended unexpectedly: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn set_not_dumpable_clears_the_flag() {
        let code = in_child(|| {
            // SAFETY: PR_GET_DUMPABLE takes no pointers.
            set_not_dumpable().is_ok() && unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } == 0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn set_child_subreaper_sets_the_flag() {
        let code = in_child(|| {
            let mut flag: libc::c_int = 0;
            set_child_subreaper().is_ok()
                // SAFETY: PR_GET_CHILD_SUBREAPER writes one int to the pointer we pass,
                // which points at a live local.
                && unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) } == 0
                && flag == 1
        });
        assert_eq!(code, 0);
    }

    /// The VmFlags of the mapping in /proc/self/smaps that contains `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = lo <= addr && addr < hi;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.trim().to_owned();
                }
            }
        }
        panic!("no mapping contains {addr:#x}");
    }

    #[test]
    fn secret_buf_is_page_aligned_and_round_trips() {
        let page = page_size();
        for len in [0, 1, page - 1, page, page + 1, 3 * page] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let buf = SecretBuf::copy_from(&data);
            assert_eq!(buf.as_bytes(), &data[..]);
            assert_eq!(buf.as_bytes().as_ptr() as usize % page, 0);
            assert_eq!(buf.whole().len() % page, 0);
            assert!(buf.whole()[len..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn secret_buf_is_excluded_from_dumps_and_locked_when_allowed() {
        let buf = SecretBuf::copy_from(b"token");
        assert!(buf.excluded_from_dumps());
        let flags = vm_flags(buf.as_bytes().as_ptr() as usize);
        assert!(flags.split(' ').any(|f| f == "dd"), "VmFlags: {flags}");
        if buf.locked() {
            assert!(flags.split(' ').any(|f| f == "lo"), "VmFlags: {flags}");
        }
    }

    #[test]
    fn dont_dump_rounds_inward() {
        let page = page_size();
        let buf = SecretBuf::copy_from(&vec![7u8; 2 * page]);
        let whole = buf.whole();
        // Less than one whole page inside the range: nothing may be advised.
        assert!(!dont_dump(&whole[1..page]));
        assert!(!dont_dump(&whole[..0]));
        // One whole page inside a range that starts mid-page.
        assert!(dont_dump(&whole[1..]));
    }

    #[test]
    fn debug_hides_contents() {
        let buf = SecretBuf::copy_from(b"hunter2");
        let shown = format!("{buf:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("len: 7"));
    }
}
