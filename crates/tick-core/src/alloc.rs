//! The memory allocator every tickflow binary (and the indicator engine's benchmark) runs on.
//!
//! A tick is allocated on one thread and freed on another all along the pipeline (decoded by
//! the stage that reads it, dropped after the gRPC write or the store's commit). glibc's
//! allocator takes the owning arena's lock for such a free; mimalloc hands it to the owning
//! thread through a lock-free list. In embedded mode at 100,000 ticks/s that was the difference
//! between a backlog that grows (glibc: 75-96 % of the ticks received, p50 0.54-0.96 s) and
//! every tick received (p50 1.3-2.4 ms); see BENCHMARKS.md.
//!
//! It is mimalloc 2 built without transparent huge pages (the crate's `v2` and `no_thp`
//! features): with huge pages the embedded subscriber's p99.9 at 10,000 ticks/s doubled and the
//! process's RSS grew by about 17 MiB; without them both equal glibc's. Each binary declares it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;
//! ```

/// mimalloc, as the global allocator of every tickflow binary.
pub use mimalloc::MiMalloc as Allocator;
