//! The memory allocator every tickflow binary (and the benchmarks that stand for them) runs on.
//!
//! A tick is allocated on one thread and freed on another all along the pipeline (decoded by
//! the stage that reads it, dropped after the gRPC write or the store's commit). glibc's
//! allocator takes the owning arena's lock for such a free; mimalloc hands it to the owning
//! thread through a lock-free list. Each binary declares it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;
//! ```

/// mimalloc, as the global allocator of every tickflow binary.
pub use mimalloc::MiMalloc as Allocator;
