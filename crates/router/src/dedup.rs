//! De-duplication by idempotency key over a window of event time. The router rebuilds it from
//! the tail of `ticks.clean` on start, so a restart or a rebalance does not forget what was
//! already let through.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are stored as 128-bit hashes (XXH3-128), so a false match is astronomically unlikely
/// while a key costs 16 bytes. The hashes live only in memory (the set is rebuilt from
/// `ticks.clean` on start), so the function can change between versions. XXH3-128 replaced two
/// SipHash-1-3 passes: see BENCHMARKS.md, router.
fn hash128(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// The set holds hashes already: hash them no further.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// Keys seen within the window.
pub struct Dedup {
    window_ns: i64,
    newest_ns: i64,
    set: HashSet<u128, BuildHasherDefault<PassThrough>>,
    order: VecDeque<(i64, u128)>,
}

impl Dedup {
    /// Returns an empty set remembering keys for `window_ns` of event time.
    pub fn new(window_ns: i64) -> Self {
        Self {
            window_ns,
            newest_ns: i64::MIN,
            set: HashSet::default(),
            order: VecDeque::new(),
        }
    }

    /// Returns whether `key` was seen within the window.
    pub fn contains(&self, key: &str) -> bool {
        self.set.contains(&hash128(key))
    }

    /// Remembers `key` with its event time.
    pub fn insert(&mut self, key: &str, ts_event_ns: i64) {
        let h = hash128(key);
        if self.set.insert(h) {
            self.order.push_back((ts_event_ns, h));
        }
        if ts_event_ns > self.newest_ns {
            self.newest_ns = ts_event_ns;
            let horizon = self.newest_ns.saturating_sub(self.window_ns);
            while let Some(&(ts, old)) = self.order.front() {
                if ts >= horizon {
                    break;
                }
                self.order.pop_front();
                self.set.remove(&old);
            }
        }
    }

    /// Returns how many keys are remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Returns whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_and_forgets_after() {
        let mut d = Dedup::new(100);
        d.insert("a", 0);
        d.insert("b", 50);
        assert!(d.contains("a") && d.contains("b") && !d.contains("c"));
        d.insert("a", 60);
        assert_eq!(d.len(), 2, "a second insert of a key is not a new entry");
        d.insert("c", 120);
        assert!(!d.contains("a"), "a at 0 is older than 120 - 100");
        assert!(d.contains("b") && d.contains("c"));
        assert_ne!(hash128("a"), hash128("b"));
    }
}
