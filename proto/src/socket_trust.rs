//! Which Unix sockets the CLIs may talk to, and which directories the daemons may put
//! their sockets in; and the default socket paths.
//!
//! A socket is trusted only if no one but root and the caller could have put it there:
//! the socket and every directory on its path up to `/`
//!
//! - are owned by root or by the caller (effective uid);
//! - are not writable by group or others, unless the directory is sticky and owned by
//!   root (like `/tmp`: others may create entries there, but not replace ours).
//!
//! Symlinks are followed the way the kernel does, one component at a time: the
//! directory holding a symlink is checked before the link is read, the link itself must
//! be owned by root or the caller, and every real directory on the path it leads to is
//! checked too. So a link can neither be swapped by someone else nor lead somewhere
//! someone else controls.
//!
//! Inside a user namespace that does not map root, root's files show as the overflow
//! uid (65534), as do other users' files: nothing there can be shown to be root's, so
//! sockets outside the namespace's own files are refused.
//!
//! This runs before every CLI call (`leash get`), so it costs one `lstat` per path
//! component and nothing else on success; user names are looked up only for errors.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The system-wide workload socket of `leash-agentd`.
pub const SYSTEM_AGENT_SOCKET: &str = "/run/leash/agent.sock";
/// The system-wide admin socket of `leash-control-plane`.
pub const SYSTEM_ADMIN_SOCKET: &str = "/run/leash/admin.sock";

/// Most symlinks followed while resolving one path (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// Why a socket path (or a socket directory) is not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Nothing exists at the path.
    #[error("{path} does not exist")]
    Missing {
        /// The path, as resolved so far.
        path: PathBuf,
    },
    /// `lstat` or `readlink` failed for another reason.
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        /// The path, as resolved so far.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Owned by someone other than root and the caller.
    #[error(
        "{path} is owned by {} (uid {uid}), not by root or by you (uid {euid}); \
         someone else could have put a fake service there",
        user_name(*uid)
    )]
    Owner {
        /// The offending file or directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The caller's effective uid.
        euid: u32,
    },
    /// A directory others may write to without the sticky-and-root protection.
    #[error(
        "{path} (owner {} uid {uid}, mode {mode:04o}) is writable by group or others; \
         someone else could replace the socket in it",
        user_name(*uid)
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The final path is not a socket.
    #[error("{path} is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A component before the last is neither a directory nor a symlink.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Too many symlinks (or a loop).
    #[error("{path}: too many levels of symbolic links")]
    Loop {
        /// The path given.
        path: PathBuf,
    },
}

impl TrustError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            TrustError::Missing { path }
            | TrustError::Inspect { path, .. }
            | TrustError::Owner { path, .. }
            | TrustError::Writable { path, .. }
            | TrustError::NotASocket { path }
            | TrustError::NotADirectory { path }
            | TrustError::Loop { path } => path,
        }
    }
}

/// `name` for `uid` from the user database, or `uid N` when it has none.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("unknown user {uid}"),
    }
}

/// The caller's effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Check that `path` is a socket that only root or `euid` could have created, in
/// directories only root or `euid` can change (see the module doc).
pub fn check_socket(path: &Path, euid: u32) -> Result<(), TrustError> {
    let (real, md) = resolve(path, euid)?;
    if !md.file_type().is_socket() {
        return Err(TrustError::NotASocket { path: real });
    }
    owned(&real, &md, euid)
}

/// Check that `dir` is a directory that, with every directory above it, only root or
/// `euid` can change: where a daemon may create its socket.
pub fn check_dir(dir: &Path, euid: u32) -> Result<(), TrustError> {
    let (real, md) = resolve(dir, euid)?;
    if !md.is_dir() {
        return Err(TrustError::NotADirectory { path: real });
    }
    check_one_dir(&real, &md, euid)
}

/// Whether `uid` counts as root. Inside a user namespace that does not map root (a
/// rootless container, `unshare --user`), root's files show as the overflow uid, like
/// those of every other unmapped user: there the check cannot tell root from another
/// user, so it trusts neither, and the CLI must run outside the namespace.
fn root_like(uid: u32) -> bool {
    uid == 0
}

fn owned(path: &Path, md: &Metadata, euid: u32) -> Result<(), TrustError> {
    let uid = md.uid();
    if uid == euid || root_like(uid) {
        Ok(())
    } else {
        Err(TrustError::Owner {
            path: path.to_path_buf(),
            uid,
            euid,
        })
    }
}

fn check_one_dir(path: &Path, md: &Metadata, euid: u32) -> Result<(), TrustError> {
    owned(path, md, euid)?;
    let mode = md.mode() & 0o7777;
    let sticky_root = mode & 0o1000 != 0 && root_like(md.uid());
    if mode & 0o022 != 0 && !sticky_root {
        return Err(TrustError::Writable {
            path: path.to_path_buf(),
            uid: md.uid(),
            mode,
        });
    }
    Ok(())
}

fn lstat(path: &Path) -> Result<Metadata, TrustError> {
    std::fs::symlink_metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TrustError::Missing {
            path: path.to_path_buf(),
        },
        _ => TrustError::Inspect {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Resolve `path` component by component, checking every directory walked through
/// and every symlink followed; returns the real path of the last component and its
/// metadata (not checked here).
fn resolve(path: &Path, euid: u32) -> Result<(PathBuf, Metadata), TrustError> {
    let given = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|source| TrustError::Inspect {
            path: path.to_path_buf(),
            source,
        })?;
        cwd.join(path)
    };
    // Components still to walk, last first (so that a link's target is pushed on top).
    let mut todo: Vec<PathBuf> = Vec::new();
    push_components(&mut todo, &given);
    let root = PathBuf::from("/");
    let mut cur = root.clone();
    let mut cur_md = lstat(&cur)?;
    let mut checked_cur = false;
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == "/" {
            // Every absolute path starts here; `/` is looked at once.
            if cur != root {
                cur = root.clone();
                cur_md = lstat(&cur)?;
                checked_cur = false;
            }
            continue;
        }
        if c.as_os_str() == ".." {
            // `cur` is a real path (links already resolved), so its parent is the
            // real `..`; it was checked on the way down (or above `/`, which is `/`).
            cur.pop();
            cur_md = lstat(&cur)?;
            checked_cur = false;
            continue;
        }
        // `cur` is about to be looked into: it must be a directory we trust.
        if !checked_cur {
            if !cur_md.is_dir() {
                return Err(TrustError::NotADirectory { path: cur });
            }
            check_one_dir(&cur, &cur_md, euid)?;
        }
        let next = cur.join(&c);
        let md = lstat(&next)?;
        if md.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(TrustError::Loop {
                    path: path.to_path_buf(),
                });
            }
            owned(&next, &md, euid)?;
            let target = std::fs::read_link(&next).map_err(|source| TrustError::Inspect {
                path: next.clone(),
                source,
            })?;
            // A relative target is relative to the link's directory, which is `cur`.
            push_components(&mut todo, &target);
            checked_cur = true;
            continue;
        }
        cur = next;
        cur_md = md;
        checked_cur = false;
    }
    Ok((cur, cur_md))
}

/// Push `p`'s components onto `todo` so that they pop in order; `.` is dropped.
fn push_components(todo: &mut Vec<PathBuf>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::RootDir => todo.push(PathBuf::from("/")),
            Component::ParentDir => todo.push(PathBuf::from("..")),
            Component::Normal(n) => todo.push(PathBuf::from(n)),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// The socket a CLI talks to when none was given explicitly (flag or environment):
/// `system` if it exists; else `$XDG_RUNTIME_DIR/leash/<file name of system>` if that
/// exists; else `system` (so that the error names the system path). Never a path in a
/// directory anyone can create, such as `/tmp`.
pub fn default_client_socket(system: &Path, xdg_runtime_dir: Option<&OsStr>) -> PathBuf {
    if std::fs::symlink_metadata(system).is_ok() {
        return system.to_path_buf();
    }
    if let (Some(xdg), Some(name)) = (xdg_runtime_dir, system.file_name()) {
        let xdg = Path::new(xdg);
        if xdg.is_absolute() {
            let p = xdg.join("leash").join(name);
            if std::fs::symlink_metadata(&p).is_ok() {
                return p;
            }
        }
    }
    system.to_path_buf()
}

/// The socket a daemon creates when none was given: `system` as root; as another user
/// `$XDG_RUNTIME_DIR/leash/<file name of system>` when that variable holds an absolute
/// path, else `system` (which then usually cannot be created, and the error says to pass
/// the path explicitly).
pub fn default_daemon_socket(system: &Path, euid: u32, xdg_runtime_dir: Option<&OsStr>) -> PathBuf {
    if euid == 0 {
        return system.to_path_buf();
    }
    match (xdg_runtime_dir.map(Path::new), system.file_name()) {
        (Some(xdg), Some(name)) if xdg.is_absolute() => xdg.join("leash").join(name),
        _ => system.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::os::unix::net::UnixListener;

    const NOBODY: u32 = 65534;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn chown(p: &Path, uid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), None).expect("chown");
    }

    fn root() -> bool {
        euid() == 0
    }

    /// A temp dir (0755, ours, under root's sticky /tmp) holding `d/agent.sock`.
    fn setup() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let t = tempfile::Builder::new()
            .prefix("leash-trust-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        chmod(t.path(), 0o755);
        let d = t.path().join("d");
        std::fs::create_dir(&d).expect("mkdir");
        chmod(&d, 0o755);
        let s = d.join("agent.sock");
        let l = UnixListener::bind(&s).expect("bind");
        chmod(&s, 0o666);
        (t, s, l)
    }

    #[test]
    fn own_socket_in_own_dirs_under_sticky_tmp_is_trusted() {
        let (_t, s, _l) = setup();
        check_socket(&s, euid()).expect("trusted");
        check_dir(s.parent().unwrap(), euid()).expect("trusted dir");
    }

    #[test]
    fn a_socket_owned_by_root_is_trusted_by_another_uid() {
        if !root() {
            return;
        }
        let (_t, s, _l) = setup();
        check_socket(&s, NOBODY).expect("root's socket is fine for uid 65534");
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused_with_its_owner() {
        let (_t, s, _l) = setup();
        if !root() {
            // Without root we cannot chown; the same rule seen from another uid.
            let e = check_socket(&s, euid() + 1).unwrap_err();
            assert!(matches!(e, TrustError::Owner { .. }), "{e}");
            return;
        }
        let d = s.parent().unwrap();
        chown(d, NOBODY);
        let e = check_socket(&s, 0).unwrap_err();
        match &e {
            TrustError::Owner { path, uid, .. } => {
                assert_eq!(path, d);
                assert_eq!(*uid, NOBODY);
            }
            other => panic!("wrong error: {other}"),
        }
        let m = e.to_string();
        assert!(m.contains(&d.display().to_string()), "{m}");
        assert!(m.contains("uid 65534"), "{m}");
        assert!(m.contains(&user_name(NOBODY)), "{m}");
        assert!(matches!(check_dir(d, 0), Err(TrustError::Owner { .. })));
        // The owner himself may use it.
        check_socket(&s, NOBODY).expect("the owner trusts his own dir");
    }

    #[test]
    fn a_socket_owned_by_another_user_is_refused() {
        if !root() {
            return;
        }
        let (_t, s, _l) = setup();
        chown(&s, NOBODY);
        let e = check_socket(&s, 0).unwrap_err();
        assert!(
            matches!(&e, TrustError::Owner { path, uid: NOBODY, .. } if path == &s),
            "{e}"
        );
    }

    #[test]
    fn group_or_other_writable_dirs_are_refused_unless_sticky_and_root() {
        let (_t, s, _l) = setup();
        let d = s.parent().unwrap();
        for mode in [0o777, 0o775, 0o757] {
            chmod(d, mode);
            let e = check_socket(&s, euid()).unwrap_err();
            assert!(
                matches!(&e, TrustError::Writable { path, .. } if path == d),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains("writable"), "{e}");
        }
        chmod(d, 0o1777);
        if root() {
            check_socket(&s, 0).expect("sticky and root-owned, like /tmp");
            chown(d, NOBODY);
            // Sticky but owned by someone else: its owner can still replace entries.
            assert!(check_socket(&s, 0).is_err());
            assert!(matches!(
                check_socket(&s, NOBODY),
                Err(TrustError::Writable { .. })
            ));
        }
    }

    #[test]
    fn not_a_socket_and_missing_are_refused() {
        let (t, s, _l) = setup();
        let f = t.path().join("d/file");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(
            check_socket(&f, euid()),
            Err(TrustError::NotASocket { .. })
        ));
        let m = t.path().join("d/none.sock");
        assert!(matches!(
            check_socket(&m, euid()),
            Err(TrustError::Missing { path }) if path == m
        ));
        let through_file = f.join("agent.sock");
        assert!(check_socket(&through_file, euid()).is_err());
        assert!(matches!(
            check_dir(&s, euid()),
            Err(TrustError::NotADirectory { .. })
        ));
    }

    #[test]
    fn symlinks_are_followed_and_both_sides_checked() {
        let (t, s, _l) = setup();
        // A link to the socket, and a link to its directory (relative), both fine.
        let l1 = t.path().join("link.sock");
        symlink(&s, &l1).unwrap();
        check_socket(&l1, euid()).expect("link to a trusted socket");
        let l2 = t.path().join("dirlink");
        symlink("d", &l2).unwrap();
        check_socket(&l2.join("agent.sock"), euid()).expect("through a dir link");
        check_socket(&t.path().join("d/../d/./agent.sock"), euid()).expect("dots");

        // The link's target in a writable directory: refused there.
        let bad = t.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        chmod(&bad, 0o777);
        let l3 = t.path().join("to-bad.sock");
        symlink(bad.join("x.sock"), &l3).unwrap();
        let e = check_socket(&l3, euid()).unwrap_err();
        assert!(
            matches!(&e, TrustError::Writable { path, .. } if path == &bad),
            "{e}"
        );

        // A trusted target reached through a link in a writable directory: the link
        // could be swapped, so refused.
        let l4 = bad.join("link.sock");
        symlink(&s, &l4).unwrap();
        assert!(matches!(
            check_socket(&l4, euid()),
            Err(TrustError::Writable { .. })
        ));

        // A loop.
        let a = t.path().join("a");
        let b = t.path().join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        assert!(matches!(
            check_socket(&a, euid()),
            Err(TrustError::Loop { .. })
        ));

        if root() {
            // A link owned by someone else is refused even if its target is fine.
            let l5 = t.path().join("theirs.sock");
            symlink(&s, &l5).unwrap();
            chown(&l5, NOBODY);
            assert!(matches!(
                check_socket(&l5, 0),
                Err(TrustError::Owner { uid: NOBODY, .. })
            ));
        }
    }

    #[test]
    fn a_relative_path_is_checked_from_the_working_directory() {
        // The working directory is the test's (the crate dir, in a trusted tree or
        // not): the check must at least resolve it and not accept a missing socket.
        assert!(check_socket(Path::new("no-such-dir/agent.sock"), euid()).is_err());
    }

    #[test]
    fn client_default_prefers_the_system_socket_then_xdg() {
        let t = tempfile::tempdir().unwrap();
        let system = t.path().join("run/leash/agent.sock");
        let xdg = t.path().join("xdg");
        let none = t.path().join("none");
        // Nothing anywhere: the system path, even with XDG set.
        assert_eq!(default_client_socket(&system, None), system);
        assert_eq!(
            default_client_socket(&system, Some(xdg.as_os_str())),
            system
        );
        // Only the per-user one exists: used.
        std::fs::create_dir_all(xdg.join("leash")).unwrap();
        let _u = UnixListener::bind(xdg.join("leash/agent.sock")).unwrap();
        assert_eq!(
            default_client_socket(&system, Some(xdg.as_os_str())),
            xdg.join("leash/agent.sock")
        );
        assert_eq!(
            default_client_socket(&system, Some(none.as_os_str())),
            system
        );
        // A relative XDG_RUNTIME_DIR is ignored (the spec requires absolute).
        assert_eq!(
            default_client_socket(&system, Some(OsStr::new("xdg"))),
            system
        );
        // Both exist: the system agent wins.
        std::fs::create_dir_all(system.parent().unwrap()).unwrap();
        let _s = UnixListener::bind(&system).unwrap();
        assert_eq!(
            default_client_socket(&system, Some(xdg.as_os_str())),
            system
        );
    }

    #[test]
    fn daemon_default_never_falls_back_to_tmp() {
        let sys = Path::new(SYSTEM_ADMIN_SOCKET);
        assert_eq!(default_daemon_socket(sys, 0, Some(OsStr::new("/x"))), sys);
        assert_eq!(default_daemon_socket(sys, 1000, None), sys);
        assert_eq!(
            default_daemon_socket(sys, 1000, Some(OsStr::new("/run/user/1000"))),
            Path::new("/run/user/1000/leash/admin.sock")
        );
        assert_eq!(default_daemon_socket(sys, 1000, Some(OsStr::new(""))), sys);
    }
}
