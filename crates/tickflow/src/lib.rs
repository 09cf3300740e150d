//! The all-in-one tickflow binary's library: embedded mode and the gRPC client commands.

pub mod embedded;
pub mod subscribe;
