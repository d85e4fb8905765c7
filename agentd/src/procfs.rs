//! Reading `/proc`: the one place the agent parses `/proc/<pid>/stat` and `status`, walks
//! a process's ancestry, and lists a process tree.
//!
//! Attestation (`attest`) and tasks (`tasks`) both decide by what is read here. Everything
//! is read by pid number, so a caller that must know the facts belong to one particular
//! process pins it first (a pidfd and its start time) and re-checks the pin afterwards.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};

/// Longest parent chain followed (pid_max is 2^22, but real process trees are a few dozen
/// deep; the bound only guarantees termination).
const MAX_ANCESTRY_DEPTH: usize = 4096;

/// Longest executable path [`exe_or_comm`] returns, in characters.
pub const MAX_EXE_LEN: usize = 256;

/// Why a `/proc` file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// `/proc/<pid>` is missing: the process is gone.
    #[error("process {pid} is gone")]
    Gone {
        /// The pid.
        pid: i32,
    },
    /// The file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },
    /// The file did not have the expected format.
    #[error("unexpected contents in {path}: {detail}")]
    Malformed {
        /// The file.
        path: String,
        /// What was wrong.
        detail: FormatError,
    },
}

impl ProcError {
    /// An I/O failure on a `/proc/<pid>` file. A missing file means the process is gone,
    /// not that the agent is misconfigured.
    pub fn io(pid: i32, path: String, source: io::Error) -> ProcError {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => ProcError::Gone { pid },
            _ => ProcError::Read { path, source },
        }
    }
}

/// What is wrong with the contents of a `/proc` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// `stat` is cut short or has no comm.
    #[error("expected `pid (comm) state ppid …` with at least 22 fields")]
    Stat,
    /// `State:` has no value.
    #[error("empty State: line")]
    EmptyState,
    /// A `Uid:` or `Gid:` line is not four numbers.
    #[error("{0}: line is not four numbers")]
    Ids(&'static str),
    /// `Groups:` is not a list of numbers.
    #[error("Groups: line is not a list of numbers")]
    Groups,
    /// A key appears twice.
    #[error("duplicate {0}: line")]
    Duplicate(&'static str),
    /// A key is missing.
    #[error("no {0}: line")]
    Missing(&'static str),
}

/// `/proc/<pid>/<file>`.
pub fn proc_path(pid: i32, file: &str) -> String {
    format!("/proc/{pid}/{file}")
}

/// Reads a `/proc` file whole. `std::fs::read` sizes its buffer from the file's length,
/// which `/proc` reports as 0, and then probes with small reads: a dozen system calls for
/// `status`. A page-sized first read takes these files in one go.
fn read_proc_file(path: &str) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 3.
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 22: clock ticks after boot.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`.
pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    let path = proc_path(pid, "stat");
    // Bytes, not a String: comm is whatever the process set with PR_SET_NAME, UTF-8 or not.
    let bytes = read_proc_file(&path).map_err(|e| ProcError::io(pid, path.clone(), e))?;
    parse_stat(&bytes).ok_or(ProcError::Malformed {
        path,
        detail: FormatError::Stat,
    })
}

/// Parses `/proc/<pid>/stat`. comm (field 2) may contain spaces and parentheses — a
/// process can name itself `x) R 1 (` — so fields are counted from the *last* `)`.
pub fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&bytes[close + 1..]).ok()?;
    // After the comm: field 3 (state) is index 0, field 4 (ppid) index 1, field 22
    // (starttime) index 19.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let mut state = fields.first()?.chars();
    let state_char = state.next()?;
    if state.next().is_some() {
        return None;
    }
    Some(Stat {
        state: state_char,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The fields of `/proc/<pid>/status` the agent uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    /// `State:`.
    pub state: char,
    /// Real, effective, saved, fs.
    pub uids: [u32; 4],
    /// Real, effective, saved, fs.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Status {
    /// Zombie or dead: the process can no longer make requests, and its pid is about to be
    /// freed.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/status`.
pub fn read_status(pid: i32) -> Result<Status, ProcError> {
    let path = proc_path(pid, "status");
    let bytes = read_proc_file(&path).map_err(|e| ProcError::io(pid, path.clone(), e))?;
    parse_status(&String::from_utf8_lossy(&bytes))
        .map_err(|detail| ProcError::Malformed { path, detail })
}

/// Parses `/proc/<pid>/status`. The kernel escapes newlines in the `Name:` line, so a
/// process cannot forge a `Uid:` line; refusing duplicate keys keeps that true even if
/// some kernel did not.
pub fn parse_status(text: &str) -> Result<Status, FormatError> {
    let mut state = None;
    let mut uids = None;
    let mut gids = None;
    let mut groups = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, slot_taken) = match key {
            "State" => (
                "State",
                state
                    .replace(
                        value
                            .trim_start()
                            .chars()
                            .next()
                            .ok_or(FormatError::EmptyState)?,
                    )
                    .is_some(),
            ),
            "Uid" => (
                "Uid",
                uids.replace(parse_ids(value).ok_or(FormatError::Ids("Uid"))?)
                    .is_some(),
            ),
            "Gid" => (
                "Gid",
                gids.replace(parse_ids(value).ok_or(FormatError::Ids("Gid"))?)
                    .is_some(),
            ),
            "Groups" => (
                "Groups",
                groups
                    .replace(
                        value
                            .split_ascii_whitespace()
                            .map(str::parse)
                            .collect::<Result<Vec<u32>, _>>()
                            .map_err(|_| FormatError::Groups)?,
                    )
                    .is_some(),
            ),
            _ => ("", false),
        };
        if slot_taken {
            return Err(FormatError::Duplicate(key));
        }
    }
    Ok(Status {
        state: state.ok_or(FormatError::Missing("State"))?,
        uids: uids.ok_or(FormatError::Missing("Uid"))?,
        gids: gids.ok_or(FormatError::Missing("Gid"))?,
        groups: groups.ok_or(FormatError::Missing("Groups"))?,
    })
}

fn parse_ids(value: &str) -> Option<[u32; 4]> {
    let mut ids = value.split_ascii_whitespace().map(str::parse::<u32>);
    let out = [
        ids.next()?.ok()?,
        ids.next()?.ok()?,
        ids.next()?.ok()?,
        ids.next()?.ok()?,
    ];
    ids.next().is_none().then_some(out)
}

/// Start time of `pid` in clock ticks after boot (field 22 of `/proc/<pid>/stat`), or
/// `None` if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    parent_and_start(pid).map(|(_, s)| s)
}

/// Parent pid and start time of `pid`, from `/proc/<pid>/stat`.
pub fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    if pid <= 0 {
        return None;
    }
    read_stat(pid).ok().map(|s| (s.ppid, s.start_time))
}

/// Real, effective, saved and fs uid of `pid`, from `/proc/<pid>/status`.
pub fn process_uids(pid: i32) -> Option<[u32; 4]> {
    if pid <= 0 {
        return None;
    }
    read_status(pid).ok().map(|s| s.uids)
}

/// Whether `pid` is the process (`ancestor_pid`, `ancestor_start_time`) or one of its
/// descendants, following parent links in `/proc`. The start time makes a reused
/// ancestor pid fail rather than match.
///
/// Re-parenting moves orphans to the nearest child subreaper; `leash exec` is one (see
/// `agentd/src/bin/leash/exec.rs`), so a task's double-forked helpers still count as
/// inside it. Best effort against a tree that changes during the walk: pin `pid` first
/// and re-check it afterwards.
pub fn is_ancestor_or_self(ancestor_pid: i32, ancestor_start_time: u64, pid: i32) -> bool {
    walk_up(ancestor_pid, ancestor_start_time, pid, parent_and_start)
}

/// The ancestry walk over any source of (parent, start time).
fn walk_up(
    ancestor_pid: i32,
    ancestor_start_time: u64,
    pid: i32,
    parent_of: impl Fn(i32) -> Option<(i32, u64)>,
) -> bool {
    let mut current = pid;
    for _ in 0..MAX_ANCESTRY_DEPTH {
        let Some((ppid, start)) = parent_of(current) else {
            return false;
        };
        if current == ancestor_pid {
            return start == ancestor_start_time;
        }
        // A descendant never started before its ancestor, and parents are only older
        // than their children, so the walk can stop as soon as it passes that time.
        if start < ancestor_start_time || ppid <= 0 {
            return false;
        }
        current = ppid;
    }
    false
}

/// Parent and start time of every process visible in `/proc`, read once.
#[derive(Debug, Default)]
pub struct ProcessTree(HashMap<i32, (i32, u64)>);

impl ProcessTree {
    /// Read every `/proc/<pid>/stat` now.
    pub fn read() -> ProcessTree {
        let mut map = HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    if let Some(ps) = parent_and_start(pid) {
                        map.insert(pid, ps);
                    }
                }
            }
        }
        ProcessTree(map)
    }

    /// Start time of `pid` when the tree was read.
    pub fn start_time(&self, pid: i32) -> Option<u64> {
        self.0.get(&pid).map(|&(_, s)| s)
    }

    /// Every process (pid, start time) below `root` (not `root` itself), following parent
    /// links with the same start-time checks as [`is_ancestor_or_self`].
    pub fn descendants(&self, root: i32, root_start: u64) -> HashSet<(i32, u64)> {
        self.0
            .iter()
            .filter(|&(&pid, _)| pid != root)
            .filter(|&(&pid, _)| walk_up(root, root_start, pid, |p| self.0.get(&p).copied()))
            .map(|(&pid, &(_, start))| (pid, start))
            .collect()
    }
}

/// Every process (pid, start time) below `root` (not `root` itself), read from the root
/// down through the kernel's children lists (`/proc/<pid>/task/<tid>/children`): only
/// the root's own descendants are read, however many processes the host runs. Each
/// child is kept only if its parent and start time still say it is that parent's child
/// (a pid reused meanwhile is not). `None` when the root is gone or not the process
/// started at `root_start`, or when the kernel keeps no children lists
/// (`CONFIG_PROC_CHILDREN`): then read the whole table ([`ProcessTree::read`]).
pub fn descendants_of(root: i32, root_start: u64) -> Option<HashSet<(i32, u64)>> {
    static LISTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let listed = *LISTED.get_or_init(|| {
        let tid = nix::unistd::gettid().as_raw();
        std::path::Path::new(&format!("/proc/self/task/{tid}/children")).exists()
    });
    if !listed || parent_and_start(root).map(|(_, s)| s) != Some(root_start) {
        return None;
    }
    let mut out = HashSet::new();
    let mut todo = vec![(root, root_start)];
    while let Some((pid, start)) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(proc_path(pid, "task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let mut path = t.path();
            path.push("children");
            // A thread (or the process) that ended meanwhile has no list any more.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for child in text
                .split_ascii_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                let Some((ppid, cs)) = parent_and_start(child) else {
                    continue;
                };
                if ppid == pid && cs >= start && out.len() < MAX_TREE && out.insert((child, cs)) {
                    todo.push((child, cs));
                }
            }
        }
    }
    Some(out)
}

/// Most processes [`descendants_of`] follows below one root.
const MAX_TREE: usize = 65_536;

/// The executable of `pid` (else its comm), at most [`MAX_EXE_LEN`] characters; empty
/// when neither can be read.
pub fn exe_or_comm(pid: i32) -> String {
    let name = std::fs::read_link(proc_path(pid, "exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .or_else(|_| std::fs::read_to_string(proc_path(pid, "comm")).map(|c| c.trim().to_string()))
        .unwrap_or_default();
    name.chars().take(MAX_EXE_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn own_pid() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn descendants_from_the_children_lists_match_the_whole_table() {
        // A shell with a child of its own: the child is below the shell, nothing else.
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        let root = sh.id() as i32;
        let (_, start) = parent_and_start(root).expect("the shell's stat");
        let mut seen = None;
        for _ in 0..250 {
            let full = ProcessTree::read().descendants(root, start);
            if !full.is_empty() {
                seen = Some(full);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let full = seen.expect("the shell's sleep appears in the table");
        assert_eq!(full.len(), 1, "{full:?}");
        if let Some(listed) = descendants_of(root, start) {
            assert_eq!(listed, full, "the children lists find what the table finds");
        }
        assert_eq!(descendants_of(root, start + 1), None, "another start time");
        let _ = sh.kill();
        let _ = sh.wait();
        for (pid, _) in full {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let tail = "S 4321 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        for comm in ["bash", "a b", "x) (y", ") R 1 (", "((", "))"] {
            let text = format!("1234 ({comm}) {tail}");
            assert_eq!(
                parse_stat(text.as_bytes()),
                Some(Stat {
                    state: 'S',
                    ppid: 4321,
                    start_time: 987654
                }),
                "comm {comm:?}"
            );
        }
        // Not UTF-8 in comm is fine; a truncated line is not.
        let mut bytes = b"1 (\xff\xfe) ".to_vec();
        bytes.extend_from_slice(tail.as_bytes());
        assert_eq!(parse_stat(&bytes).unwrap().start_time, 987654);
        assert_eq!(parse_stat(b"1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(b"no paren"), None);
    }

    const STATUS: &str =
        "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t1\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t10 27 100 \n";

    #[test]
    fn parses_status() {
        let status = parse_status(STATUS).unwrap();
        assert_eq!(status.state, 'S');
        assert_eq!(status.uids, [1000; 4]);
        assert_eq!(status.gids, [100; 4]);
        assert_eq!(status.groups, vec![10, 27, 100]);
        assert!(!status.is_dead());

        let empty_groups = STATUS.replace("Groups:\t10 27 100 ", "Groups:\t");
        assert_eq!(
            parse_status(&empty_groups).unwrap().groups,
            Vec::<u32>::new()
        );
        let zombie = STATUS.replace("S (sleeping)", "Z (zombie)");
        assert!(parse_status(&zombie).unwrap().is_dead());
        let forged = format!("{STATUS}Uid:\t0\t0\t0\t0\n");
        assert!(parse_status(&forged)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let short = STATUS.replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000");
        assert!(parse_status(&short).is_err());
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn ancestry_follows_parents_and_checks_start_times() {
        let me = own_pid();
        let my_start = start_time(me).unwrap();
        let parent = nix::unistd::getppid().as_raw();
        let parent_start = start_time(parent).unwrap();
        assert!(is_ancestor_or_self(me, my_start, me));
        assert!(is_ancestor_or_self(parent, parent_start, me));
        // Same pid, other start time: a reused pid is not the ancestor.
        assert!(!is_ancestor_or_self(parent, parent_start + 1, me));
        // A child is not our ancestor.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30"])
            .spawn()
            .unwrap();
        let child_pid = child.id() as i32;
        let child_start = start_time(child_pid).unwrap();
        assert!(!is_ancestor_or_self(child_pid, child_start, me));
        assert!(is_ancestor_or_self(me, my_start, child_pid));
        // The tree read at once finds the child below us, and us below our parent.
        let tree = ProcessTree::read();
        assert!(tree
            .descendants(me, my_start)
            .contains(&(child_pid, child_start)));
        assert!(tree
            .descendants(parent, parent_start)
            .contains(&(me, my_start)));
        assert!(!tree.descendants(me, my_start).contains(&(me, my_start)));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_ancestor_or_self(me, my_start, child_pid));
    }

    #[test]
    fn start_time_of_missing_process_is_none() {
        assert_eq!(start_time(0), None);
        assert_eq!(start_time(-5), None);
        assert_eq!(start_time(i32::MAX), None);
    }
}
