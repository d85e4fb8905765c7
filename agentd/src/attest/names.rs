//! User and group names for the `unix:user:` and `unix:group:` selectors, briefly cached.
//!
//! Resolving goes through NSS (files, and possibly sssd or systemd-userdb sockets) and
//! costs more than the rest of an attestation; names of ids change rarely, and ids, not
//! names, are the boundary. The cache is measured in `Instant`s: it bounds cost, and
//! decides nothing by the time of day.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group, Uid, User};

/// How long a resolved user or group name is reused.
const NAME_TTL: Duration = Duration::from_secs(10);

/// Names past this many are dropped all at once (a bound on memory, not a policy).
const NAMES_MAX: usize = 4096;

type Names = Mutex<HashMap<u32, (Option<String>, Instant)>>;

/// uid/gid -> name.
#[derive(Debug, Default)]
pub(super) struct NameCache {
    users: Names,
    groups: Names,
}

impl NameCache {
    fn lookup(map: &Names, id: u32, resolve: impl FnOnce() -> Option<String>) -> Option<String> {
        if let Some((name, at)) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            if at.elapsed() < NAME_TTL {
                return name.clone();
            }
        }
        let name = resolve();
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > NAMES_MAX {
            m.clear();
        }
        m.insert(id, (name.clone(), Instant::now()));
        name
    }

    /// The user name of `uid`, when it resolves.
    pub(super) fn user(&self, uid: u32) -> Option<String> {
        Self::lookup(&self.users, uid, || {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
    }

    /// The group name of `gid`, when it resolves.
    pub(super) fn group(&self, gid: u32) -> Option<String> {
        Self::lookup(&self.groups, gid, || {
            Group::from_gid(Gid::from_raw(gid))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
    }
}
