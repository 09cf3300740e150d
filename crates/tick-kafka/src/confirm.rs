//! Delivery confirmations counted per batch: each message carries its batch and its position in
//! it, packed into the delivery's opaque value, so queuing a batch allocates once (its entry and
//! its receiver), not a future, a channel and a boxed opaque per message.

use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tick_core::bus::{BusError, Refused};
use tick_core::error::Cause;
use tokio::sync::oneshot;

/// What a batch's receiver gets.
pub(crate) type Outcome = Result<(), Refused>;

struct Open {
    /// Messages not yet confirmed or failed, plus one while the batch is still being queued.
    left: usize,
    refused: Option<Refused>,
    tx: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct State {
    next: u32,
    open: HashMap<u32, Open>,
}

/// The open batches of one producer; its delivery callback settles them.
#[derive(Default)]
pub struct Confirmations {
    state: Mutex<State>,
}

impl Confirmations {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a batch of `n` messages, held open until [`Confirmations::release`]; returns its
    /// id and what it resolves to.
    pub(crate) fn open(&self, n: usize) -> (u32, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        let id = loop {
            let id = st.next;
            st.next = st.next.wrapping_add(1);
            if !st.open.contains_key(&id) {
                break id;
            }
        };
        st.open.insert(
            id,
            Open {
                left: n + 1,
                refused: None,
                tx,
            },
        );
        (id, rx)
    }

    /// Records the outcome of `count` messages of batch `id`: accepted, or failed at
    /// `positions` with `error`.
    fn settle(&self, id: u32, count: usize, failed: Option<(std::ops::Range<usize>, BusError)>) {
        let mut st = self.lock();
        let Some(b) = st.open.get_mut(&id) else {
            return;
        };
        if let Some((positions, error)) = failed {
            Refused::add(&mut b.refused, positions, error);
        }
        b.left -= count;
        if b.left == 0 {
            let b = st.open.remove(&id).expect("present");
            drop(st);
            let outcome = match b.refused {
                None => Ok(()),
                Some(mut r) => {
                    // Deliveries to different partitions arrive in any order.
                    r.positions.sort_unstable();
                    Err(r)
                }
            };
            // The receipt may have been dropped: nobody to tell.
            let _ = b.tx.send(outcome);
        }
    }

    /// Marks batch `id` as queued: it resolves once its messages are settled.
    pub(crate) fn release(&self, id: u32) {
        self.settle(id, 1, None);
    }

    /// Marks the messages at `positions` of batch `id` as failed without being queued.
    pub(crate) fn unqueued(&self, id: u32, positions: std::ops::Range<usize>, error: BusError) {
        self.settle(id, positions.len(), Some((positions, error)));
    }

    /// Forgets batch `id`, none of whose messages were queued.
    pub(crate) fn abandon(&self, id: u32) {
        self.lock().open.remove(&id);
    }
}

/// Packs a batch id and a position into a delivery's opaque value.
pub(crate) fn pack(id: u32, position: usize) -> usize {
    const _: () = assert!(usize::BITS == 64, "delivery tokens are packed into 64 bits");
    ((id as usize) << 32) | (position & 0xffff_ffff)
}

/// Counts each delivery in the producer's [`Confirmations`] (shared by its clients).
#[derive(Default, Clone)]
pub struct BatchContext {
    pub(crate) confirmations: std::sync::Arc<Confirmations>,
}

impl ClientContext for BatchContext {}

impl ProducerContext for BatchContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (id, position) = ((opaque >> 32) as u32, opaque & 0xffff_ffff);
        let failed = result.as_ref().err().map(|(e, _)| {
            (
                position..position + 1,
                BusError::Broker(Cause::wrap(e.clone())),
            )
        });
        self.confirmations.settle(id, 1, failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_resolves_once_released_and_settled_and_names_its_failures_in_order() {
        let c = Confirmations::default();
        let (id, mut rx) = c.open(3);
        c.settle(id, 1, None);
        c.settle(id, 1, Some((2..3, BusError::Closed)));
        c.settle(id, 1, Some((0..1, BusError::Closed)));
        assert!(rx.try_recv().is_err(), "still held while queuing");
        c.release(id);
        let refused = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(refused.positions, vec![0, 2]);
        assert!(c.lock().open.is_empty());

        let (id, mut rx) = c.open(4);
        c.settle(id, 1, None);
        c.unqueued(id, 1..4, BusError::Closed);
        c.release(id);
        assert_eq!(rx.try_recv().unwrap().unwrap_err().positions, vec![1, 2, 3]);

        let (id, mut rx) = c.open(0);
        c.release(id);
        assert!(
            rx.try_recv().unwrap().is_ok(),
            "an empty batch is accepted at once"
        );
    }

    #[test]
    fn ids_and_positions_pack_into_the_opaque_and_back() {
        let v = pack(u32::MAX, 123_456);
        assert_eq!(((v >> 32) as u32, v & 0xffff_ffff), (u32::MAX, 123_456));
    }
}
