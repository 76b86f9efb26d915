//! The hash of the maps keyed by topic name that a message's path looks up (the in-process
//! broker's topics, the Redis pub/sub subscriptions by channel).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by topic names, hashed a word at a time.
pub(crate) type NameMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// Hashes a topic name a word at a time (in the manner of rustc's FxHash), for the maps
/// looked up on every message: names are short and the application's own (SipHash costs
/// several times more on such keys, a byte-at-a-time hash twice as much). Not for keys
/// an outsider chooses: it does not resist crafted collisions.
#[derive(Default)]
pub(crate) struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        // the table takes its bucket from the low bits and its tag from the high ones:
        // fold the well-mixed high half down
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            // fixed-size loads only (a copy of the tail's length is a call to `memcpy`):
            // a long name's last eight bytes, overlapping the word before; a short one's
            // bytes one by one
            let word = match bytes.len().checked_sub(8) {
                Some(start) => {
                    let mut word = [0; 8];
                    word.copy_from_slice(&bytes[start..]);
                    u64::from_le_bytes(word)
                }
                None => tail
                    .iter()
                    .rev()
                    .fold(0, |word, &byte| (word << 8) | u64::from(byte)),
            };
            // the length keeps `ab` and `ab\0` apart
            self.add(word ^ ((tail.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn topic_names_hash_apart() {
        let hasher = BuildHasherDefault::<NameHasher>::default();
        let mut names: Vec<String> = (0..20_000)
            .map(|i| format!("sensor.{i}.readings"))
            .collect();
        // names differing only in trailing zero bytes, in length, or in one late byte
        names.extend(
            [
                "a",
                "a\0",
                "a\0\0",
                "",
                "\0",
                "abcdefgh",
                "abcdefgh\0",
                "abcdefgi",
            ]
            .map(String::from),
        );
        let hashes: std::collections::HashSet<u64> = names
            .iter()
            .map(|name| hasher.hash_one(name.as_str()))
            .collect();
        assert_eq!(hashes.len(), names.len());
        // the table's tag (top 7 bits) and bucket (low bits) both vary
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xff).collect();
        assert_eq!((tags.len(), buckets.len()), (128, 256));
    }
}
