//! Key rotation: `leashctl key rotate jwt|ca` makes a `next` key (published at once),
//! which becomes `active` after `[keys] publish_ahead`; the key it replaces becomes
//! `retiring` and stays published until everything it signed has expired, then it is
//! `retired`: unpublished, its private key erased.
//!
//! Every change is written (records, sealed blob or its removal, events) in one store
//! write before the new [`KeySet`] takes effect, so a kill at any point leaves the store
//! either before or after the change. The latest expiry a key signed is tracked in
//! memory; a key that was already active when the process started counts as having
//! signed something valid for the longest lifetime anything may have (the largest
//! `max_ttl` of any credential, or `host_cert_ttl`). When it stops signing, that latest
//! expiry becomes its durable `retires_at`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::error::KeyError;
use super::material::{CaKey, JwtKey, Signed};
use super::record::{self, blob_name, KeyKind, KeyRecord, KeyState, RECORDS_BLOB};
use super::{KeySet, Keys, Live, MasterKey};
use crate::clock::Clock;
use crate::model::Event;
use crate::store::Storage;

/// How often to look for a key whose time has come. A look that finds nothing due reads
/// only memory; short, so a clock moved forward (proto/src/clock.rs) takes effect fast.
const TICK: Duration = Duration::from_millis(200);

/// The durations rotation goes by, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a new key is published before it signs (`[keys] publish_ahead`).
    pub publish_ahead: i64,
    /// Host certificate lifetime (`host_cert_ttl`): the longest a CA's host
    /// certificate lives.
    pub host_cert_ttl: i64,
    /// Other control planes share the store and sign with the same keys: what this one
    /// saw signed is not all that was, so a key stops being published only once anything
    /// may have expired (the longest lifetime after it stopped signing).
    pub shared: bool,
}

impl Timing {
    /// From the two durations.
    pub fn new(publish_ahead: Duration, host_cert_ttl: Duration) -> Timing {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Timing {
            publish_ahead: secs(publish_ahead),
            host_cert_ttl: secs(host_cert_ttl),
            shared: false,
        }
    }

    /// The same, on a store other control planes share (see [`Timing::shared`]).
    pub fn on_shared_store(self, shared: bool) -> Timing {
        Timing { shared, ..self }
    }
}

/// What tells how long what a key signed lives.
trait Signs {
    fn signed(&self) -> &Signed;
}

impl Signs for JwtKey {
    fn signed(&self) -> &Signed {
        &self.signed
    }
}

impl Signs for CaKey {
    fn signed(&self) -> &Signed {
        &self.signed
    }
}

fn key_event(kind: &str, rec: &KeyRecord) -> Event {
    Event::new(kind).detail(json!({ "kind": rec.kind.as_str(), "id": rec.id }))
}

/// The longest anything signed may live, in seconds: the largest `max_ttl` of any
/// credential, or `host_cert_ttl`.
fn longest_lifetime(store: &dyn Storage, timing: Timing) -> Result<i64, KeyError> {
    let creds = store.credentials()?;
    Ok(creds
        .iter()
        .map(|c| i64::from(c.max_ttl))
        .max()
        .unwrap_or(0)
        .max(timing.host_cert_ttl))
}

/// Activate the `next` key of `lives` if its time has come; the active one becomes
/// `retiring` until the latest expiry of what it signed.
fn activate<K: Signs>(
    lives: &mut [Live<K>],
    now: i64,
    bound: i64,
    shared: bool,
    events: &mut Vec<Event>,
) {
    let Some(i) = lives
        .iter()
        .position(|l| l.rec.state == KeyState::Next && l.rec.activates_at <= now)
    else {
        return;
    };
    lives[i].rec.state = KeyState::Active;
    events.push(key_event("key-activated", &lives[i].rec));
    for (j, l) in lives.iter_mut().enumerate() {
        if j != i && l.rec.state == KeyState::Active {
            l.rec.state = KeyState::Retiring;
            l.rec.retiring_since = now;
            let floor = if shared {
                now.saturating_add(bound)
            } else {
                now
            };
            l.rec.retires_at = l.key.signed().latest(bound).max(floor);
            events.push(key_event("key-retiring", &l.rec));
        }
    }
}

/// Retire every `retiring` key of `lives` whose `retires_at` has come: its record moves
/// to `retired`, its blob to `erase`. A key that signed something after it stopped being
/// active (a signature under way at the switch) waits for that too.
fn retire<K: Signs>(
    lives: &mut Vec<Live<K>>,
    retired: &mut Vec<KeyRecord>,
    now: i64,
    events: &mut Vec<Event>,
    erase: &mut Vec<String>,
) {
    let mut kept = Vec::with_capacity(lives.len());
    for mut l in lives.drain(..) {
        if l.rec.state != KeyState::Retiring || l.rec.retires_at > now {
            kept.push(l);
            continue;
        }
        let seen = l.key.signed().seen();
        if seen > l.rec.retires_at {
            l.rec.retires_at = seen;
            kept.push(l);
            continue;
        }
        l.rec.state = KeyState::Retired;
        events.push(key_event("key-retired", &l.rec));
        erase.push(l.rec.blob.clone());
        retired.push(l.rec);
    }
    *lives = kept;
}

fn due<K>(lives: &[Live<K>], now: i64) -> bool {
    lives.iter().any(|l| match l.rec.state {
        KeyState::Next => l.rec.activates_at <= now,
        KeyState::Retiring => l.rec.retires_at <= now,
        _ => false,
    })
}

impl Keys {
    /// Make a new `next` key of `kind`, published at once, active `publish_ahead` after
    /// `now`; recorded with a `key-published` event by `actor`. Refused while a `next`
    /// key of that kind waits: two keys queued to take over would leave it unclear which
    /// one verifiers must have fetched.
    pub async fn rotate(
        &self,
        kind: KeyKind,
        actor: &str,
        store: &dyn Storage,
        master: &MasterKey,
        now: i64,
        timing: Timing,
    ) -> Result<KeyRecord, KeyError> {
        let _one = self.changing.lock().await;
        let (stored, _) = self.sync_locked(store, master, now)?;
        let set = self.current();
        let pending = match kind {
            KeyKind::Jwt => set
                .jwt
                .iter()
                .map(|l| &l.rec)
                .find(|r| r.state == KeyState::Next),
            KeyKind::Ca => set
                .ca
                .iter()
                .map(|l| &l.rec)
                .find(|r| r.state == KeyState::Next),
        };
        if let Some(r) = pending {
            return Err(KeyError::RotationPending {
                kind: kind.to_string(),
                id: r.id.clone(),
                activates_at: r.activates_at,
            });
        }
        let mut rec = KeyRecord {
            kind,
            id: String::new(),
            state: KeyState::Next,
            created: now,
            activates_at: now.saturating_add(timing.publish_ahead),
            retiring_since: 0,
            retires_at: 0,
            blob: String::new(),
            cert: String::new(),
            subject_cn: String::new(),
        };
        // Held from the seal until the write commits, so a master-key rotation cannot
        // switch keys in between (keys/master.rs).
        let _hold = master.hold_for_sealed_write().await;
        let (mut jwt, mut ca) = (set.jwt.clone(), set.ca.clone());
        let sealed = match kind {
            KeyKind::Jwt => {
                let pkcs8 = JwtKey::generate()?;
                let key = JwtKey::from_pkcs8(&pkcs8, Signed::default())?;
                rec.id = key.kid.clone();
                rec.blob = blob_name(kind, &rec.id);
                let sealed = master.seal(&rec.blob, &pkcs8)?;
                jwt.push(Live {
                    rec: rec.clone(),
                    key: Arc::new(key),
                });
                sealed
            }
            KeyKind::Ca => {
                let td = &self.trust_domain;
                let super::material::NewCa { pkcs8, der, id, cn } =
                    CaKey::generate(|id| format!("Leash CA {td} {id}"))?;
                let key = CaKey::load(&id, &pkcs8, der.clone(), &cn, Signed::default())?;
                rec.id = id;
                rec.blob = blob_name(kind, &rec.id);
                rec.subject_cn = cn;
                rec.set_cert_der(&der);
                let sealed = master.seal(&rec.blob, &pkcs8)?;
                ca.push(Live {
                    rec: rec.clone(),
                    key: Arc::new(key),
                });
                sealed
            }
        };
        let next = KeySet::new(jwt, ca, set.retired.clone(), set.generation + 1)?;
        let event = key_event("key-published", &rec).actor(actor);
        store
            .put_key_blobs_if(
                RECORDS_BLOB,
                stored,
                vec![
                    (rec.blob.clone(), sealed),
                    (RECORDS_BLOB.to_string(), record::encode(&next.records())?),
                ],
                Vec::new(),
                vec![event],
            )
            .await?;
        self.replace(next);
        tracing::info!(kind = %kind, id = %rec.id, activates_at = rec.activates_at, "key published");
        Ok(rec)
    }

    /// Move every key whose time has come at `now`: `next` to `active` (the active one to
    /// `retiring`), `retiring` to `retired`. Returns whether anything changed.
    pub async fn advance(
        &self,
        store: &dyn Storage,
        master: &MasterKey,
        now: i64,
        timing: Timing,
    ) -> Result<bool, KeyError> {
        if !self.is_due(now) {
            return Ok(false);
        }
        let _one = self.changing.lock().await;
        // Another control plane on this store may have made the change already.
        let (stored, reloaded) = self.sync_locked(store, master, now)?;
        let set = self.current();
        let bound = longest_lifetime(store, timing)?;
        let (mut jwt, mut ca, mut retired) = (set.jwt.clone(), set.ca.clone(), set.retired.clone());
        let (mut events, mut erase) = (Vec::new(), Vec::new());
        activate(&mut jwt, now, bound, timing.shared, &mut events);
        activate(&mut ca, now, bound, timing.shared, &mut events);
        retire(&mut jwt, &mut retired, now, &mut events, &mut erase);
        retire(&mut ca, &mut retired, now, &mut events, &mut erase);
        let next = KeySet::new(jwt, ca, retired, set.generation + 1)?;
        let records = next.records();
        if records == set.records() {
            return Ok(reloaded);
        }
        store
            .put_key_blobs_if(
                RECORDS_BLOB,
                stored,
                vec![(RECORDS_BLOB.to_string(), record::encode(&records)?)],
                erase,
                events.clone(),
            )
            .await?;
        self.replace(next);
        for e in &events {
            tracing::info!(event = %e.kind, detail = %e.detail, "key state changed");
        }
        Ok(true)
    }

    fn is_due(&self, now: i64) -> bool {
        let set = self.current();
        due(&set.jwt, now) || due(&set.ca, now)
    }
}

/// Move keys through their states by `clock`, forever; `on_change` after every change.
pub async fn run(
    keys: Arc<Keys>,
    store: Arc<dyn Storage>,
    master: Arc<MasterKey>,
    clock: Clock,
    timing: Timing,
    on_change: impl Fn() + Send + 'static,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match keys.advance(&*store, &master, clock.now(), timing).await {
            Ok(true) => on_change(),
            Ok(false) => {}
            // Another control plane on this store changed the keys meanwhile: the next
            // tick reads its change.
            Err(KeyError::Store(crate::store::StoreError::Conflict(_))) => {
                tracing::debug!("key records changed by another control plane; reading them again")
            }
            Err(e) => tracing::warn!(error = %e, "key rotation step failed; retrying"),
        }
    }
}
