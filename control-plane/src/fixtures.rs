//! Records for the control plane's unit tests, made one way everywhere: a workload, a
//! lease, a join token whose secret hashes to "x", an enrolled host.

use std::collections::BTreeMap;

use leash_proto::workload_kind::WorkloadKind;

use crate::model::{Host, JoinTokenRecord, Lease, LeaseState, Workload};

/// A job workload owned by `team`, matching uid 1, allowed nothing.
pub fn workload(name: &str) -> Workload {
    Workload {
        name: name.into(),
        owner: "team".into(),
        kind: WorkloadKind::Job,
        selectors: vec!["unix:uid:1".into()],
        hosts: BTreeMap::new(),
        allow: vec![],
        expires_at: 0,
        disabled: false,
        created_at: 0,
        x509_svid_ttl: 0,
    }
}

/// An active lease of workload `w` on host `h`, issued at 0, expiring at 10.
pub fn lease(id: &str, w: &str) -> Lease {
    Lease {
        id: id.into(),
        workload: w.into(),
        credential: "c".into(),
        action: "read".into(),
        audience: "a".into(),
        host: "h".into(),
        task: None,
        on_behalf_of: None,
        approval: None,
        context: None,
        policy_version: 0,
        issued_at: 0,
        expires_at: 10,
        seq: 0,
        state: LeaseState::Active,
        reason: None,
        fingerprint: "f".into(),
        ends_outside: false,
        version: 0,
        audiences: Vec::new(),
    }
}

/// An unused, unrevoked join token that never expires, whose secret hashes to "x".
pub fn token(id: &str) -> JoinTokenRecord {
    JoinTokenRecord {
        id: id.into(),
        secret_sha256: "x".into(),
        name: None,
        labels: BTreeMap::new(),
        created_at: 0,
        expires_at: i64::MAX,
        used_by: None,
        revoked: false,
    }
}

/// Host `name` with certificate serial `serial` and no labels.
pub fn host(name: &str, serial: &str) -> Host {
    Host {
        name: name.into(),
        labels: BTreeMap::new(),
        enrolled_at: 0,
        last_seen: 0,
        evicted: false,
        cert_serial: serial.into(),
        cert_not_after: 0,
    }
}
