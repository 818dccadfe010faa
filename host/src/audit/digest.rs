//! Digests of what crosses into and out of the host, for traces and
//! receipts: sha256 over a label and length-prefixed parts, so that no two
//! different sequences of parts hash the same.

use sha2::{Digest as _, Sha256};

/// A digest being built.
pub struct Digest(Sha256);

impl Digest {
    /// A digest of something of kind `label` (such as `model.chat.in`).
    pub fn new(label: &str) -> Digest {
        let mut d = Digest(Sha256::new());
        d.put(label.as_bytes());
        d
    }

    fn put(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Add a string.
    pub fn text(mut self, s: &str) -> Digest {
        self.put(s.as_bytes());
        self
    }

    /// Add bytes.
    pub fn bytes(mut self, b: &[u8]) -> Digest {
        self.put(b);
        self
    }

    /// Add a number.
    pub fn num(mut self, n: u64) -> Digest {
        self.put(&n.to_le_bytes());
        self
    }

    /// Add each string of `parts`, then their count.
    pub fn texts<'a>(mut self, parts: impl IntoIterator<Item = &'a str>) -> Digest {
        let mut n = 0u64;
        for part in parts {
            self.put(part.as_bytes());
            n += 1;
        }
        self.num(n)
    }

    /// The digest, lowercase hex.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_delimited_and_labels_separate_kinds() {
        let ab = Digest::new("x").text("ab").text("c").finish();
        assert_ne!(ab, Digest::new("x").text("a").text("bc").finish());
        assert_ne!(ab, Digest::new("y").text("ab").text("c").finish());
        assert_eq!(ab, Digest::new("x").text("ab").text("c").finish());
        assert_eq!(ab.len(), 64);
    }
}
