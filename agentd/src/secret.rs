//! The one type that holds credential material on a host: [`Secret`].
//!
//! It owns how a secret lives in the agent's memory and how little of it escapes:
//! - the bytes sit in their own page-aligned allocation ([`crate::sys::SecretBuf`]), locked
//!   in RAM and excluded from core dumps where the kernel allows it;
//! - they are wiped (volatile writes) when the `Secret` is dropped, which is how the cache
//!   "wipes" a credential: it drops it;
//! - `Debug` prints only the length; there is no `Display` and no `Serialize`, so a secret
//!   cannot reach a log line or an audit event by accident;
//! - [`Secret::expose`] is the only way to read it, so `grep -rn '\.expose()'` lists every
//!   place a secret leaves this type;
//! - [`Secret::fingerprint`] is what logs and events may show instead.
//!
//! What it cannot protect: copies made before the bytes got here, and copies made after
//! `expose` (prost, h2 and rustls buffers briefly hold the token on its way to the caller).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroize;

use crate::sys::SecretBuf;

/// How many secrets could not be locked in RAM since the process started. Locking fails
/// when `RLIMIT_MEMLOCK` is exhausted; the secret is still usable, so this is surfaced as a
/// number (for status output) and a single warning rather than as an error.
static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Errors from building a [`Secret`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The bytes offered as a secret are not UTF-8. Leash secrets are tokens (text); the
    /// rejected bytes have already been wiped.
    #[error(
        "credential material is not valid UTF-8 ({len} bytes) and was discarded; \
         Leash credentials must be text — check what the credential source returns"
    )]
    NotUtf8 {
        /// Length of the rejected input.
        len: usize,
    },
}

/// Secret text (a token) held in locked, wiped-on-drop memory.
///
/// `Clone` is deliberate: it makes an independent copy in a new locked allocation (the
/// cache keeps its copy while a response carries another), and each copy is wiped when it
/// is dropped. There is no `Display`, no `Serialize` and no `PartialEq`: comparing secrets
/// is a timing side channel, and compare [`Secret::fingerprint`]s instead.
pub struct Secret {
    buf: SecretBuf,
}

impl Secret {
    /// Takes ownership of `text`, copies it into protected memory and wipes the original
    /// `String`'s whole capacity.
    pub fn new(mut text: String) -> Secret {
        let secret = Secret::copy(text.as_bytes());
        text.zeroize();
        secret
    }

    /// Builds a secret from raw bytes (as they arrive in a protobuf `bytes` field). The
    /// vector is wiped whether or not it is accepted.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Result<Secret, SecretError> {
        let result = match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Secret::copy(&bytes)),
            Err(_) => Err(SecretError::NotUtf8 { len: bytes.len() }),
        };
        bytes.zeroize();
        result
    }

    fn copy(bytes: &[u8]) -> Secret {
        let buf = SecretBuf::copy_from(bytes);
        if !buf.locked() && LOCK_FAILURES.fetch_add(1, Ordering::Relaxed) == 0 {
            // Once per process: a warning per secret would flood the log exactly when the
            // agent is busiest.
            tracing::warn!(
                "could not lock secret memory (mlock); secrets may be written to swap — \
                 raise RLIMIT_MEMLOCK (e.g. LimitMEMLOCK= in the systemd unit) or disable swap"
            );
        }
        Secret { buf }
    }

    /// The secret text. This is the one place a secret is read: keep every call grep-able
    /// and keep the returned `&str` short-lived.
    pub fn expose(&self) -> &str {
        std::str::from_utf8(self.buf.as_bytes())
            .expect("Secret only holds bytes that were checked to be UTF-8")
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.as_bytes().len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the memory is locked in RAM (it is still usable when not).
    pub fn locked(&self) -> bool {
        self.buf.locked()
    }

    /// The first 12 hex characters (48 bits) of the SHA-256 of the secret: enough to tell
    /// credentials apart in logs and audit events, too short to help guess a token.
    ///
    /// Only safe to log for high-entropy secrets (tokens, API keys): for a guessable
    /// secret such as a password, any hash lets an attacker confirm guesses offline.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.buf.as_bytes());
        hex::encode(&digest.as_ref()[..6])
    }
}

/// How many secrets could not be locked in RAM since the process started.
pub fn lock_failures() -> u64 {
    LOCK_FAILURES.load(Ordering::Relaxed)
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret::new(text)
    }
}

/// Copies from a borrowed `&str`. The caller still owns (and must wipe) the original; prefer
/// `From<String>` where the string can be handed over.
impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret::copy(text.as_bytes())
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret::copy(self.buf.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn is_send_and_sync() {
        assert_send_sync::<Secret>();
    }

    #[test]
    fn debug_does_not_reveal() {
        let secret = Secret::from("eyJhbGciOiJFUzI1NiJ9.payload.sig");
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(!shown.contains("payload"), "{shown}");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted, 32 bytes>)");
        // Nested in a derived Debug, it stays redacted.
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Entry {
            token: Secret,
        }
        let entry = format!("{:?}", Entry { token: secret });
        assert!(!entry.contains("payload"), "{entry}");
    }

    #[test]
    fn expose_round_trips() {
        for text in ["", "a", "tök€n with unicode", &"x".repeat(10_000)] {
            let secret = Secret::new(text.to_owned());
            assert_eq!(secret.expose(), text);
            assert_eq!(secret.len(), text.len());
            assert_eq!(secret.is_empty(), text.is_empty());
        }
    }

    #[test]
    fn from_bytes_checks_utf8() {
        let secret = Secret::from_bytes(b"token".to_vec()).unwrap();
        assert_eq!(secret.expose(), "token");
        let err = Secret::from_bytes(vec![0xff, 0xfe]).unwrap_err();
        assert!(matches!(err, SecretError::NotUtf8 { len: 2 }));
        assert!(err.to_string().contains("not valid UTF-8"));
    }

    #[test]
    fn clone_is_an_independent_copy() {
        let a = Secret::from("token-a");
        let b = a.clone();
        assert_eq!(b.expose(), "token-a");
        assert_ne!(a.expose().as_ptr(), b.expose().as_ptr());
        drop(a);
        assert_eq!(b.expose(), "token-a");
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let a = Secret::from("token");
        let b = Secret::new("token".to_owned());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 12);
        // sha256("token") = 3c469e9d6c5875d37a43f353d4f88e61fcf812c66eee3457465a40b0da4153e0
        assert_eq!(a.fingerprint(), "3c469e9d6c58");
        assert_ne!(a.fingerprint(), Secret::from("token2").fingerprint());
    }

    #[test]
    fn many_secrets_can_be_created_and_dropped() {
        let secrets: Vec<Secret> = (0..1000)
            .map(|i| Secret::new(format!("token-{i:04}")))
            .collect();
        for (i, secret) in secrets.iter().enumerate() {
            assert_eq!(secret.expose(), format!("token-{i:04}"));
        }
        drop(secrets);
        // And again, so freed pages that kept flags are reused without trouble.
        for i in 0..1000 {
            let secret = Secret::new(format!("again-{i}"));
            assert_eq!(secret.expose(), format!("again-{i}"));
        }
    }
}
