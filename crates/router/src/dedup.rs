//! De-duplication by idempotency key, with memory bounded independently of rate x window.
//!
//! Keys are remembered per *stream*, a (source, symbol) pair: the case this exists for is a
//! source that reconnects and resends its last ticks, and a resend always belongs to the stream
//! of the original. Each stream keeps the keys of the ticks it let through in the order they
//! were let through, and forgets the earliest one when it holds `max_keys` of them or when the
//! earliest is more than `window` of event time older than the newest tick of the stream.
//!
//! **Bound.** At most `max_keys` keys per stream, whatever the rate and the window. A key costs
//! 24 bytes in its stream's queue (whose buffer a power-of-two `max_keys`, such as the default,
//! fills exactly; others round it up to the next power of two) and 17 bytes a slot in the
//! shared hash set (in 64 shards; see [`SHARDS`]). A shard's table has a power of two of
//! slots. While it fills it keeps 1.14 to 2.3 slots a key; under a live feed's churn (each new
//! key forgetting the earliest) the tombstones of removed keys use up its free slots, and a
//! table more than 7/16 full then doubles, so it settles at 2.3 to 4.6 slots a key. That makes
//! at most [`MAX_BYTES_PER_KEY`] (104) bytes a key, plus 16 KiB for nearly empty shards:
//! 8,192 keys (the default) cost at most 832 KiB per stream, and 100 symbols from one source
//! at most 82 MiB (`cargo test -p router --lib memory_stays_within`).
//!
//! **Resend horizon.** Each stream records its *floor*: the newest event time among the keys it
//! forgot. Every key with an event time after the floor that was let through is still held, so
//! for a tick of event time `t`:
//! - `t` after the floor, key held: a duplicate, always caught. A resend of any of the stream's
//!   last `max_keys` ticks, within `window` of its newest event time, is in this case.
//! - `t` after the floor, key not held: never let through, so it passes (a legitimately late
//!   tick within the horizon is not mistaken for a resend).
//! - `t` at or before the floor: beyond the horizon; the key may have been forgotten, so it
//!   cannot be checked. It passes (a history range loaded out of order must not be lost) and is
//!   counted as unchecked, so an operator sees when resends outgrow the horizon.
//!
//! In time, the horizon of a stream is `min(window, the time it took to send max_keys ticks)`:
//! at 100 ticks/s per symbol the default keeps 82 s, at 10 ticks/s the whole 15 minutes.
//!
//! The router rebuilds this state per partition it owns from the same partition of
//! `ticks.clean` when the partition is assigned (see `distributed.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are stored as 128-bit hashes (XXH3-128), so a false match is astronomically unlikely
/// while a key costs 16 bytes. The hashes live only in memory (the set is rebuilt from
/// `ticks.clean`), so the function can change between versions. XXH3-128 replaced two
/// SipHash-1-3 passes: see BENCHMARKS.md, router.
fn hash128(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// Identifies a (source, symbol) stream by a 64-bit hash: two streams sharing a hash would only
/// share an eviction queue (a smaller horizon for both), never a wrong answer.
fn stream_id(source: &str, symbol: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(symbol.as_bytes());
    h.digest()
}

/// The sets hold hashes already: hash them no further.
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
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type Fast = BuildHasherDefault<PassThrough>;

/// Shards of the set of held keys. hashbrown grows a set by rehashing all of it at once, and
/// rehashes it in place when the tombstones of removed keys have used up its room: in one set
/// of the 819,200 keys that 100 streams hold at the default bound, one such pass stalls the
/// router for milliseconds (the largest latency of an embedded run at 100,000 ticks/s was 15-17
/// ms; BENCHMARKS.md). A key's shard is picked by the high half of its hash, which the shard's
/// own table does not use ([`PassThrough`] takes the low half), so each shard holds about a
/// 64th of the keys and a pass over one costs a 64th as much.
const SHARDS: usize = 64;

/// The held keys, split into [`SHARDS`] sets: one set in behaviour, in smaller pieces.
struct Keys(Box<[HashSet<u128, Fast>]>);

impl Default for Keys {
    fn default() -> Self {
        Self((0..SHARDS).map(|_| HashSet::default()).collect())
    }
}

impl Keys {
    /// The shard of key hash `h`: picked by the high half, which the tables do not index by.
    fn shard(h: u128) -> usize {
        (h >> 64) as usize % SHARDS
    }

    fn contains(&self, h: u128) -> bool {
        self.0[Self::shard(h)].contains(&h)
    }

    fn insert(&mut self, h: u128) -> bool {
        self.0[Self::shard(h)].insert(h)
    }

    fn remove(&mut self, h: u128) {
        self.0[Self::shard(h)].remove(&h);
    }

    fn len(&self) -> usize {
        self.0.iter().map(HashSet::len).sum()
    }
}

/// Heap bytes a held key costs at most, once the shards hold more than a few keys each: 24 in
/// its stream's queue and 17 for each of at most 32/7 slots in its shard (see the module docs).
pub const MAX_BYTES_PER_KEY: usize = 104;

/// The default number of keys remembered per (source, symbol) stream.
pub const DEFAULT_MAX_KEYS: usize = 8_192;

/// What the de-duplication state knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Let through before: drop it.
    Duplicate,
    /// Within the horizon and never let through.
    New,
    /// Older than the stream's horizon: it cannot be checked (see the module docs).
    Unchecked,
}

#[derive(Default)]
struct Stream {
    /// Newest event time let through.
    newest_ns: i64,
    /// Newest event time among the forgotten keys (`i64::MIN`: none forgotten).
    floor_ns: i64,
    /// Keys in the order they were let through, with their event time (24 bytes each: a
    /// `(i64, u128)` would take 32 for its alignment).
    order: VecDeque<(i64, [u64; 2])>,
}

/// Keys let through, per (source, symbol) stream, within a horizon bounded by count and time.
pub struct Dedup {
    window_ns: i64,
    max_keys: usize,
    set: Keys,
    streams: HashMap<u64, Stream, Fast>,
    unchecked: u64,
}

impl Dedup {
    /// Returns an empty state remembering, per stream, at most `max_keys` keys (at least 1), none
    /// more than `window_ns` of event time older than the stream's newest.
    pub fn new(window_ns: i64, max_keys: usize) -> Self {
        Self {
            window_ns,
            max_keys: max_keys.max(1),
            set: Keys::default(),
            streams: HashMap::default(),
            unchecked: 0,
        }
    }

    /// Returns what is known of `key`, a tick of `source` and `symbol` with event time `ts_ns`.
    /// An [`Seen::Unchecked`] answer is counted (see [`Dedup::unchecked`]).
    pub fn check(&mut self, source: &str, symbol: &str, key: &str, ts_ns: i64) -> Seen {
        if self.set.contains(hash128(key)) {
            return Seen::Duplicate;
        }
        match self.streams.get(&stream_id(source, symbol)) {
            Some(s) if ts_ns <= s.floor_ns => {
                self.unchecked += 1;
                Seen::Unchecked
            }
            _ => Seen::New,
        }
    }

    /// Returns whether `key` is held (a duplicate if it comes again).
    pub fn contains(&self, key: &str) -> bool {
        self.set.contains(hash128(key))
    }

    /// Remembers `key` of stream (`source`, `symbol`) with its event time, forgetting the
    /// stream's earliest keys beyond the bound.
    pub fn insert(&mut self, source: &str, symbol: &str, key: &str, ts_ns: i64) {
        let h = hash128(key);
        if !self.set.insert(h) {
            return;
        }
        let s = self
            .streams
            .entry(stream_id(source, symbol))
            .or_insert_with(|| Stream {
                newest_ns: i64::MIN,
                floor_ns: i64::MIN,
                order: VecDeque::new(),
            });
        // Make room before pushing, so the queue never outgrows `max_keys` (a power of two
        // such as the default then fills its buffer exactly).
        if s.order.len() >= self.max_keys
            && let Some((ts, [lo, hi])) = s.order.pop_front()
        {
            self.set.remove(u128::from(hi) << 64 | u128::from(lo));
            s.floor_ns = s.floor_ns.max(ts);
        }
        s.order.push_back((ts_ns, [h as u64, (h >> 64) as u64]));
        s.newest_ns = s.newest_ns.max(ts_ns);
        let horizon = s.newest_ns.saturating_sub(self.window_ns);
        while let Some(&(ts, [lo, hi])) = s.order.front() {
            if ts >= horizon {
                break;
            }
            s.order.pop_front();
            self.set.remove(u128::from(hi) << 64 | u128::from(lo));
            s.floor_ns = s.floor_ns.max(ts);
        }
    }

    /// Returns how many keys are remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Returns whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns how many ticks were older than their stream's horizon when checked.
    pub fn unchecked(&self) -> u64 {
        self.unchecked
    }

    /// Returns the number of streams tracked.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "mt5:demo";
    const E: &str = "EURUSD";

    fn key(i: i64) -> String {
        format!("{S}|{E}|{i}|0")
    }

    #[test]
    fn remembers_within_the_window_and_forgets_after() {
        let mut d = Dedup::new(100, DEFAULT_MAX_KEYS);
        d.insert(S, E, "a", 0);
        d.insert(S, E, "b", 50);
        assert!(d.contains("a") && d.contains("b") && !d.contains("c"));
        d.insert(S, E, "a", 60);
        assert_eq!(d.len(), 2, "a second insert of a key is not a new entry");
        d.insert(S, E, "c", 120);
        assert!(!d.contains("a"), "a at 0 is older than 120 - 100");
        assert!(d.contains("b") && d.contains("c"));
        assert_ne!(hash128("a"), hash128("b"));
        assert_eq!(d.check(S, E, "a", 0), Seen::Unchecked, "at the floor");
        assert_eq!(d.check(S, E, "b", 50), Seen::Duplicate);
        assert_eq!(
            d.check(S, E, "z", 1),
            Seen::New,
            "after the floor, never seen"
        );
        assert_eq!(d.unchecked(), 1);
    }

    /// The keys spread evenly over the shards (each shard's table indexes by the other half of
    /// the hash, so it fills its buckets as one set would), and each shard stays within the
    /// slots per key the bound counts.
    #[test]
    fn held_keys_spread_evenly_over_the_shards() {
        let mut d = Dedup::new(i64::MAX, 100_000);
        for i in 0..100_000 {
            d.insert(S, E, &key(i), i);
        }
        assert_eq!(d.len(), 100_000);
        let mean = 100_000 / SHARDS;
        for (i, shard) in d.set.0.iter().enumerate() {
            assert!(
                shard.len() > mean * 8 / 10 && shard.len() < mean * 12 / 10,
                "shard {i} holds {} keys, the mean is {mean}",
                shard.len()
            );
            assert!(shard.capacity() <= shard.len() * 23 / 10, "shard {i}");
            // The bits a shard's table picks buckets with are not those that picked the shard:
            // its keys' low bits take every value, as in one set.
            let low: HashSet<u64> = shard.iter().map(|h| *h as u64 % SHARDS as u64).collect();
            assert_eq!(low.len(), SHARDS, "shard {i}");
        }
        // Every key is found, and only those.
        assert!((0..100_000).all(|i| d.contains(&key(i))));
        assert!(!d.contains(&key(100_000)));
    }

    /// The bound holds whatever the rate and window: a million ticks of one stream within one
    /// millisecond of event time leave `max_keys` keys.
    #[test]
    fn memory_is_bounded_by_count_per_stream_not_by_rate_times_window() {
        let mut d = Dedup::new(15 * 60 * 1_000_000_000, 1_000);
        for i in 0..1_000_000 {
            d.insert(S, E, &key(i), i);
        }
        assert_eq!(d.len(), 1_000);
        for s in ["oanda", "dukascopy"] {
            for i in 0..5_000 {
                d.insert(s, "USDJPY", &format!("{s}{i}"), i);
            }
        }
        assert_eq!((d.len(), d.streams()), (3_000, 3), "1,000 per stream");
        let mut d = Dedup::new(i64::MAX, 1_024);
        for i in 0..100_000 {
            d.insert(S, E, &key(i), i);
        }
        let cap = d
            .streams
            .values()
            .map(|s| s.order.capacity())
            .sum::<usize>();
        assert_eq!(cap, 1_024, "a full queue never grows past the bound");
    }

    /// Heap bytes the state holds, estimated from the capacities: each stream's queue, and each
    /// shard's table (std's `HashSet` is hashbrown's: a power of two of 17-byte slots, a
    /// control byte and a key each, plus 16 control bytes, with room for 7/8 of them or, under
    /// 8 slots, one less than the slots).
    fn heap_bytes(d: &Dedup) -> usize {
        let queues: usize = d.streams.values().map(|s| s.order.capacity() * 24).sum();
        let tables: usize = d
            .set
            .0
            .iter()
            .map(|t| match t.capacity() {
                0 => 0,
                c if c < 8 => (c + 1) * 17 + 16,
                c => c / 7 * 8 * 17 + 16,
            })
            .sum();
        queues + tables
    }

    /// The memory bound the docs state, under the churn of a live feed: every stream full, each
    /// new key forgetting the earliest. A table whose free slots the removed keys' tombstones
    /// have used up doubles when more than 7/16 of its slots are held, and rehashes in place
    /// otherwise, so it ends at 16/7 to 32/7 slots a key (not at the 8/7 to 16/7 of a table
    /// that only grew). The bound: [`MAX_BYTES_PER_KEY`] a key, plus the tables of nearly empty
    /// shards.
    #[test]
    fn memory_stays_within_the_stated_bound_under_churn() {
        for (streams, max_keys) in [(100, DEFAULT_MAX_KEYS), (1, 65_536), (2, 64), (1, 1)] {
            let mut d = Dedup::new(i64::MAX, max_keys);
            let mut filled = 0;
            for round in 0..4 {
                for i in 0..max_keys {
                    for s in 0..streams {
                        let t = (round * max_keys + i) as i64;
                        d.insert(S, &format!("SYM{s}"), &format!("{s}|{t}"), t);
                    }
                }
                if round == 0 {
                    filled = heap_bytes(&d);
                }
            }
            let held = streams * max_keys;
            assert_eq!(d.len(), held);
            let churned = heap_bytes(&d);
            let bound = held * MAX_BYTES_PER_KEY + SHARDS * 256;
            eprintln!(
                "{streams} x {max_keys} keys: {} bytes a key when filled, {} under churn (bound \
                 {MAX_BYTES_PER_KEY} + {} bytes)",
                filled / held,
                churned / held,
                SHARDS * 256
            );
            assert!(
                churned <= bound,
                "{streams} x {max_keys}: {churned} bytes, bound {bound}"
            );
        }
    }

    /// The case the state exists for: a source reconnects and resends its last N ticks; every
    /// one of them is caught, while the stream keeps going, for any N up to `max_keys`.
    #[test]
    fn a_reconnect_resending_the_last_ticks_is_caught_up_to_the_bound() {
        for (resend, max_keys) in [(1, 64), (63, 64), (64, 64), (500, 4_096)] {
            let mut d = Dedup::new(i64::MAX, max_keys);
            // A long history before, far more than the bound.
            let sent = 10 * max_keys as i64;
            for i in 0..sent {
                assert_eq!(d.check(S, E, &key(i), i * 1_000), Seen::New);
                d.insert(S, E, &key(i), i * 1_000);
            }
            // Another stream of the same symbol interleaves; it does not take this one's room.
            for i in 0..(3 * max_keys as i64) {
                d.insert("oanda", E, &format!("o{i}"), i);
            }
            for i in sent - resend..sent {
                assert_eq!(
                    d.check(S, E, &key(i), i * 1_000),
                    Seen::Duplicate,
                    "resend of {i} (last {resend}, bound {max_keys})"
                );
            }
            // One tick further back than the bound is beyond the horizon: unchecked, counted.
            let beyond = sent - max_keys as i64 - 1;
            assert_eq!(d.check(S, E, &key(beyond), beyond * 1_000), Seen::Unchecked);
            assert_eq!(d.unchecked(), 1);
        }
    }

    /// A tick that arrives late (an older event time than ticks already let through) but was
    /// never seen passes, as long as it is within the horizon.
    #[test]
    fn a_late_tick_never_seen_within_the_horizon_passes() {
        let mut d = Dedup::new(1_000_000, 100);
        for i in 0..150 {
            if i != 120 {
                d.insert(S, E, &key(i), i * 10);
            }
        }
        // Keys 50..150 (but 120) are held; the floor is 49 * 10.
        assert_eq!(
            d.check(S, E, &key(120), 1_200),
            Seen::New,
            "late, never seen"
        );
        d.insert(S, E, &key(120), 1_200);
        assert_eq!(d.check(S, E, &key(120), 1_200), Seen::Duplicate);
        // Late but still after the floor, never seen (a different ordinal at the same time).
        assert_eq!(d.check(S, E, "late-ordinal", 495), Seen::New);
        assert_eq!(d.check(S, E, &key(10), 100), Seen::Unchecked);
    }

    /// Eviction goes by insertion order, so the floor is the newest forgotten event time:
    /// nothing newer than it was ever forgotten, even when ticks came out of order.
    #[test]
    fn the_floor_covers_out_of_order_eviction() {
        let mut d = Dedup::new(i64::MAX, 3);
        d.insert(S, E, "t100", 100);
        d.insert(S, E, "t50", 50);
        d.insert(S, E, "t200", 200);
        d.insert(S, E, "t300", 300); // forgets t100
        assert_eq!(d.check(S, E, "t100", 100), Seen::Unchecked);
        assert_eq!(d.check(S, E, "t50", 50), Seen::Duplicate, "still held");
        assert_eq!(d.check(S, E, "t150", 150), Seen::New);
        d.insert(S, E, "t400", 400); // forgets t50: the floor stays at 100
        assert_eq!(d.check(S, E, "t60", 60), Seen::Unchecked);
        assert_eq!(d.check(S, E, "t101", 101), Seen::New);
    }
}
