//! The one-time admin login code.
//!
//! A code is `leash-admin.v1.<name>.<secret>.<ca-pin>`, where
//! - `name` is the admin's name (letters, digits, '.', '-', '_'),
//! - `secret` is 32 random bytes, base64url without padding; the control plane keeps
//!   only its SHA-256,
//! - `ca-pin` is `sha256:<hex>` of the control plane CA's SubjectPublicKeyInfo (DER),
//!   which `leashctl login` pins on first contact.
//!
//! Like a join token, the code does not say where the control plane listens: that is
//! given to `leashctl login --server`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const PREFIX: &str = "leash-admin.v1";

/// A parsed admin code. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminCode {
    /// The admin's name.
    pub name: String,
    /// The secret part (base64url). Never log it.
    pub secret: String,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub ca_pin: String,
}

impl std::fmt::Debug for AdminCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCode")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("ca_pin", &self.ca_pin)
            .finish()
    }
}

/// Why a code could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminCodeError {
    /// Not an admin login code at all.
    #[error("not a Leash admin login code (expected it to start with `{PREFIX}.`); ask an admin to run `leashctl admin-cert issue`")]
    Format,
    /// A part is malformed.
    #[error(
        "malformed admin login code: {0}; ask an admin for a new one (`leashctl admin-cert issue`)"
    )]
    Part(&'static str),
}

/// Longest admin name in a code.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name an admin: 1 to 64 letters, digits, '.', '-', '_'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl AdminCode {
    /// Encode. `secret` is raw bytes.
    pub fn encode(name: &str, secret: &[u8], ca_pin: &str) -> String {
        format!(
            "{PREFIX}.{name}.{}.{ca_pin}",
            URL_SAFE_NO_PAD.encode(secret)
        )
    }

    /// Parse the text form (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<AdminCode, AdminCodeError> {
        let text = text.trim();
        if text.len() > 512 {
            return Err(AdminCodeError::Part("too long"));
        }
        let rest = text
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(AdminCodeError::Format)?;
        // The name may hold dots; the secret and the pin do not.
        let mut parts = rest.rsplitn(3, '.');
        let ca_pin = parts.next().ok_or(AdminCodeError::Part("missing CA pin"))?;
        let secret = parts.next().ok_or(AdminCodeError::Part("missing secret"))?;
        let name = parts.next().ok_or(AdminCodeError::Part("missing name"))?;
        if !valid_name(name) {
            return Err(AdminCodeError::Part("bad name"));
        }
        let ca_pin = crate::join_token::check_secret_and_pin(secret, ca_pin)
            .map_err(AdminCodeError::Part)?;
        Ok(AdminCode {
            name: name.to_string(),
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
    fn round_trip_with_a_dotted_name() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let t = AdminCode::encode("alice.ops", &[7u8; 32], &pin);
        let p = AdminCode::parse(&format!(" {t}\n")).expect("parses");
        assert_eq!(
            (p.name.as_str(), p.ca_pin.as_str()),
            ("alice.ops", pin.as_str())
        );
        assert_eq!(p.secret_bytes(), vec![7u8; 32]);
        assert!(!format!("{p:?}").contains(&p.secret));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(AdminCode::parse("hello"), Err(AdminCodeError::Format));
        assert!(AdminCode::parse("leash-admin.v1.a.short.sha256:00").is_err());
        let pin = format!("sha256:{}", "ab".repeat(32));
        assert!(AdminCode::parse(&AdminCode::encode("a/b", &[7u8; 32], &pin)).is_err());
    }
}
