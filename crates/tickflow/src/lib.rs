//! The all-in-one tickflow binary's library: embedded mode, the gRPC client commands and the
//! benchmark harness.

pub mod bench;
pub mod embedded;
pub mod subscribe;
