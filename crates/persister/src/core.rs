//! The persister's pure core: a batch of rows read from the bus, when it is due, and what
//! acknowledging it means (the highest position read in each partition, so a crash before the
//! commit re-reads the whole batch and never skips a row). No I/O and no clock of its own: the
//! adapter in `lib.rs` passes the time in, writes the rows and sends the acknowledgements.

use crate::BatchConfig;
use std::collections::HashMap;
use tick_core::bus::{BusError, Consumer, DeliveryId};
use tokio::time::Instant;

/// Rows waiting to be written, with the positions they were read from.
#[derive(Debug)]
pub struct Batch<T> {
    /// The rows, in the order read.
    pub rows: Vec<T>,
    last: HashMap<i32, DeliveryId>,
    started: Option<Instant>,
}

impl<T> Batch<T> {
    /// Returns an empty batch with room for `cap` rows.
    pub fn new(cap: usize) -> Self {
        Self {
            rows: Vec::with_capacity(cap),
            last: HashMap::new(),
            started: None,
        }
    }

    /// Records that a message at `id` belongs to the batch (a row, or a payload that became a
    /// dead letter); the first one, read at `now`, starts the batch's clock.
    pub fn note(&mut self, id: DeliveryId, now: Instant) {
        self.started.get_or_insert(now);
        let e = self.last.entry(id.partition).or_insert(id);
        if id.offset > e.offset {
            *e = id;
        }
    }

    /// Returns when the batch must be written: `max_delay` after its first message (`now`
    /// for an empty batch, which has nothing to write).
    pub fn deadline(&self, cfg: &BatchConfig, now: Instant) -> Instant {
        self.started.map_or(now, |s| s + cfg.max_delay)
    }

    /// Returns whether the batch holds any message (possibly only dead letters).
    pub fn is_pending(&self) -> bool {
        self.started.is_some()
    }

    /// Returns the acknowledgements that cover the batch: the highest position read in each
    /// partition, by partition.
    pub fn acks(&self) -> Vec<DeliveryId> {
        let mut v: Vec<DeliveryId> = self.last.values().copied().collect();
        v.sort_by_key(|id| id.partition);
        v
    }

    /// Acknowledges everything the batch read (its rows are stored) and empties it.
    pub fn acknowledge(&mut self, consumer: &mut dyn Consumer) -> Result<(), BusError> {
        for id in self.acks() {
            consumer.ack(id)?;
        }
        self.rows.clear();
        self.last.clear();
        self.started = None;
        Ok(())
    }
}

/// Splits a batch's outcome into rows newly stored and rows already stored: `new` is what the
/// store reported (never more than the rows written).
pub fn tally(rows: usize, new: u64) -> (u64, u64) {
    let new = new.min(rows as u64);
    (new, rows as u64 - new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(partition: i32, offset: i64) -> DeliveryId {
        DeliveryId { partition, offset }
    }

    #[test]
    fn acknowledgements_cover_the_highest_position_of_each_partition() {
        let t0 = Instant::now();
        // (positions read, acknowledgements expected)
        type Positions = &'static [(i32, i64)];
        let cases: &[(Positions, Positions)] = &[
            (&[], &[]),
            (&[(0, 5)], &[(0, 5)]),
            (&[(0, 5), (0, 6), (0, 7)], &[(0, 7)]),
            // Out of order within a partition (a held message re-read): the highest wins.
            (&[(0, 9), (0, 3)], &[(0, 9)]),
            (&[(2, 1), (0, 4), (2, 8), (1, 0)], &[(0, 4), (1, 0), (2, 8)]),
        ];
        for (read, want) in cases {
            let mut b: Batch<()> = Batch::new(4);
            for &(p, o) in *read {
                b.note(id(p, o), t0);
            }
            let want: Vec<DeliveryId> = want.iter().map(|&(p, o)| id(p, o)).collect();
            assert_eq!(b.acks(), want, "read {read:?}");
            assert_eq!(b.is_pending(), !read.is_empty());
        }
    }

    #[test]
    fn a_batch_is_due_max_delay_after_its_first_message() {
        let cfg = BatchConfig {
            max_delay: Duration::from_millis(50),
            ..BatchConfig::default()
        };
        let t0 = Instant::now();
        let mut b: Batch<u32> = Batch::new(4);
        assert_eq!(b.deadline(&cfg, t0), t0, "empty: nothing to wait for");
        b.note(id(0, 1), t0);
        b.note(id(0, 2), t0 + Duration::from_millis(30));
        assert_eq!(
            b.deadline(&cfg, t0 + Duration::from_millis(40)),
            t0 + Duration::from_millis(50),
            "the first message starts the clock"
        );
    }

    #[test]
    fn acknowledging_empties_the_batch_and_acks_in_partition_order() {
        use tick_core::bus::{MemoryBus, topics};
        let bus = MemoryBus::new();
        let mut c = bus.subscribe(topics::CLEAN, 4);
        let mut b: Batch<u32> = Batch::new(4);
        let t0 = Instant::now();
        b.rows.extend([1, 2, 3]);
        for o in [4, 7, 5] {
            b.note(id(0, o), t0);
        }
        b.acknowledge(&mut c).unwrap();
        assert_eq!(c.acked(), 7);
        assert!(b.rows.is_empty() && !b.is_pending() && b.acks().is_empty());
    }

    #[test]
    fn a_tally_splits_new_rows_from_duplicates() {
        // (rows written, new rows reported, (stored, duplicates))
        for (rows, new, want) in [
            (0, 0, (0, 0)),
            (10, 10, (10, 0)),
            (10, 0, (0, 10)),
            (10, 7, (7, 3)),
            // A store that over-reports never makes the duplicate count negative.
            (3, 5, (3, 0)),
        ] {
            assert_eq!(tally(rows, new), want, "{rows} rows, {new} new");
        }
    }
}
