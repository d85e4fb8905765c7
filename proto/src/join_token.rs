//! The join-token format.
//!
//! A join token is `leash-join.v1.<id>.<secret>.<ca-pin>`, exactly four parts after the
//! prefix, where
//! - `id` is the token's public id (what `join-token list` and `revoke` show): letters,
//!   digits and `-`,
//! - `secret` is 32 random bytes, base64url without padding; the control plane stores
//!   only its SHA-256,
//! - `ca-pin` is `sha256:<hex>` of the control plane CA's SubjectPublicKeyInfo (DER),
//!   which the agent pins on first contact.
//!
//! The token does not say where the control plane listens: the agent is given that
//! separately (`leash-agentd --control-plane`).
//!
//! The host name and labels a token binds stay on the control plane, bound to the id;
//! they are not trusted from the token text.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const PREFIX: &str = "leash-join.v1";

/// A parsed join token. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id.
    pub id: String,
    /// The secret part (base64url). Never log it.
    pub secret: String,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub ca_pin: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_pin", &self.ca_pin)
            .finish()
    }
}

/// Why a token could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinTokenError {
    /// Not a Leash join token at all.
    #[error("not a Leash join token (expected it to start with `{PREFIX}.`); create one with `leashctl join-token create`")]
    Format,
    /// A part is malformed.
    #[error("malformed join token: {0}; create a new one with `leashctl join-token create`")]
    Part(&'static str),
}

/// The two parts every Leash code ends with (join tokens, admin login codes): a secret of
/// 32 random bytes in URL-safe base64 without padding, and the CA pin `sha256:<64 hex>`.
/// Returns the pin in lower case, or which part is malformed.
pub(crate) fn check_secret_and_pin(secret: &str, ca_pin: &str) -> Result<String, &'static str> {
    match URL_SAFE_NO_PAD.decode(secret) {
        Ok(b) if b.len() == 32 => {}
        _ => return Err("bad secret"),
    }
    let hex = ca_pin.strip_prefix("sha256:").ok_or("bad CA pin")?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("bad CA pin");
    }
    Ok(ca_pin.to_ascii_lowercase())
}

impl JoinToken {
    /// Encode. `secret` is raw bytes.
    pub fn encode(id: &str, secret: &[u8], ca_pin: &str) -> String {
        format!("{PREFIX}.{id}.{}.{ca_pin}", URL_SAFE_NO_PAD.encode(secret))
    }

    /// Parse the text form (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<JoinToken, JoinTokenError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(JoinTokenError::Format)?;
        let mut parts = rest.splitn(3, '.');
        let id = parts.next().ok_or(JoinTokenError::Part("missing id"))?;
        let secret = parts.next().ok_or(JoinTokenError::Part("missing secret"))?;
        let ca_pin = parts.next().ok_or(JoinTokenError::Part("missing CA pin"))?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(JoinTokenError::Part("bad id"));
        }
        let ca_pin = check_secret_and_pin(secret, ca_pin).map_err(JoinTokenError::Part)?;
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_pin,
        })
    }

    /// The raw secret bytes.
    pub fn secret_bytes(&self) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(&self.secret).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let t = JoinToken::encode("jt-1a2b", &[7u8; 32], &pin);
        let p = JoinToken::parse(&format!("  {t}\n")).expect("parses");
        assert_eq!(p.id, "jt-1a2b");
        assert_eq!(p.ca_pin, pin);
        assert_eq!(p.secret_bytes(), vec![7u8; 32]);
        assert!(!format!("{p:?}").contains(&p.secret));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(JoinToken::parse("hello"), Err(JoinTokenError::Format));
        assert!(JoinToken::parse("leash-join.v1.id.short.sha256:00").is_err());
    }

    #[test]
    fn encode_writes_four_parts_and_nothing_after_the_pin() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let t = JoinToken::encode("jt-1a2b", &[7u8; 32], &pin);
        assert!(t.starts_with("leash-join.v1.jt-1a2b."), "{t}");
        assert!(t.ends_with(&pin), "{t}");
        // A trailing part is not read as an address: it spoils the pin.
        assert_eq!(
            JoinToken::parse(&format!("{t}.127.0.0.1:7443")),
            Err(JoinTokenError::Part("bad CA pin"))
        );
    }
}
