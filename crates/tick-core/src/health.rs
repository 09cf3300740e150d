//! Liveness and readiness of a process, which its stage code sets and the ops endpoint (the
//! `tick-ops` crate) reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Liveness and readiness of a process, set by its stage code.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Returns a shared, not yet ready, health state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the process ready (or not) to receive traffic.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Returns whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
