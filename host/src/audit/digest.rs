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

    /// Add a number that may be absent (`-` then, a part of another
    /// length than any number's).
    pub fn opt(self, n: Option<u64>) -> Digest {
        match n {
            Some(n) => self.num(n),
            None => self.text("-"),
        }
    }

    /// Add a `sampling` record as the guest sent it: its fields in WIT
    /// order, floats by their IEEE-754 bits, absent fields as `-`, then
    /// the stop strings.
    pub fn sampling(self, s: &crate::types::Sampling) -> Digest {
        let bits = |f: Option<f32>| f.map(|f| u64::from(f.to_bits()));
        self.opt(bits(s.temperature))
            .opt(bits(s.top_p))
            .opt(s.top_k.map(u64::from))
            .opt(bits(s.repetition_penalty))
            .opt(s.max_tokens.map(u64::from))
            .opt(s.seed)
            .texts(s.stop.iter().map(String::as_str))
    }

    /// The digest, lowercase hex.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented layout, rebuilt by hand: each part is its length as
    /// 8 little-endian bytes, then its bytes; an absent number is `-`.
    #[test]
    fn the_byte_layout_is_the_documented_one() {
        let mut bytes = Vec::new();
        for part in [&b"label"[..], b"-", &7u64.to_le_bytes(), b"text"] {
            bytes.extend((part.len() as u64).to_le_bytes());
            bytes.extend(part);
        }
        let expected = hex::encode(sha2::Sha256::digest(&bytes));
        let got = Digest::new("label")
            .opt(None)
            .opt(Some(7))
            .text("text")
            .finish();
        assert_eq!(got, expected);
    }

    #[test]
    fn parts_are_delimited_and_labels_separate_kinds() {
        let ab = Digest::new("x").text("ab").text("c").finish();
        assert_ne!(ab, Digest::new("x").text("a").text("bc").finish());
        assert_ne!(ab, Digest::new("y").text("ab").text("c").finish());
        assert_eq!(ab, Digest::new("x").text("ab").text("c").finish());
        assert_eq!(ab.len(), 64);
    }
}
