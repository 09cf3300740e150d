//! The source boundary: anything that yields canonical ticks (the simulator, files, broker
//! feeds). Adding a source is one module implementing [`TickSource`].

use async_trait::async_trait;
use tick_core::Tick;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's input could not be read or parsed.
    #[error("{0}")]
    Input(String),
}

/// Input a source could not turn into a tick: it goes to `ticks.dlq` with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Reason code, e.g. `malformed_line`.
    pub reason: String,
    /// What was wrong, with where (file and line, peer).
    pub detail: String,
    /// The input exactly as received.
    pub payload: Vec<u8>,
}

/// A producer of canonical ticks, already stamped with `ts_recv_ns` and keyed.
#[async_trait]
pub trait TickSource: Send {
    /// Returns the source name used in ticks and metrics.
    fn name(&self) -> &str;

    /// Appends the next ticks to `out`, waiting for them if needed. Returns `false` when the
    /// source is exhausted (a file read to its end); a live source never is.
    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError>;

    /// Returns and forgets the inputs rejected since the last call.
    fn take_rejects(&mut self) -> Vec<Rejected> {
        Vec::new()
    }
}
