//! Introspection client secrets: made from 256 random bits, shown once, kept only as
//! their SHA-256, and compared in constant time. A secret this long needs no slow hash:
//! nobody can guess one, so its digest reveals nothing a dictionary could find.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

/// Prefix of every secret, so secret scanners and people can tell what one is.
pub const SECRET_PREFIX: &str = "leash-ic.";

/// The system has no randomness.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available to make a client secret")]
pub struct NoRandomness;

/// A fresh secret and the hex SHA-256 to store.
pub fn new_secret() -> Result<(String, String), NoRandomness> {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| NoRandomness)?;
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(b));
    let hash = hash(&secret);
    Ok((secret, hash))
}

/// Hex SHA-256 of a secret.
pub fn hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// Whether `presented` is the secret whose hash is `stored_hex`, in time that does not
/// depend on where they differ.
pub fn matches(stored_hex: &str, presented: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    let got = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    stored.len() == got.as_ref().len() && bool::from(stored.as_slice().ct_eq(got.as_ref()))
}

/// A client id: a plain name (letters, digits, '.', '-', '_'), at most 64 bytes, so it
/// travels unchanged in HTTP Basic authentication and in forms.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_only_their_own_hash_matches() {
        let (s1, h1) = new_secret().expect("secret");
        let (s2, h2) = new_secret().expect("secret");
        assert_ne!(s1, s2);
        assert!(s1.starts_with(SECRET_PREFIX) && s1.len() == SECRET_PREFIX.len() + 43);
        assert!(matches(&h1, &s1));
        assert!(matches(&h2, &s2));
        assert!(!matches(&h1, &s2));
        assert!(!matches(&h1, ""));
        assert!(!matches("not hex", &s1));
        assert!(!matches(&h1[..10], &s1));
        assert!(!h1.contains(&s1[SECRET_PREFIX.len()..]));
    }

    #[test]
    fn client_ids_are_plain_names() {
        assert!(valid_client_id("aws-sts"));
        assert!(valid_client_id("ci.example_1"));
        for bad in ["", "a:b", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_client_id(bad), "{bad:?}");
        }
    }
}
