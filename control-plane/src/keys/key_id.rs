//! A master key's id: the first 8 bytes of SHA-256 over the key, shown as 16 hex digits.
//! Every sealed record carries the id of the key it was sealed with, so a mismatch
//! between the data and the loaded key is named, not guessed.

/// A master key's id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of the raw key `key`.
    pub fn of(key: &[u8]) -> KeyId {
        let d = ring::digest::digest(&ring::digest::SHA256, key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.as_ref()[..8]);
        KeyId(id)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}
