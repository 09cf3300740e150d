//! Shared foundation of tickflow: domain types, the generated protobuf schema, the bus and
//! store traits with their in-memory implementation, and process plumbing (logging, shutdown,
//! clock). It holds no stage logic.

pub mod alloc;
pub mod backoff;
pub mod bus;
pub mod clock;
pub mod error;
pub mod health;
pub mod instrument;
pub mod labels;
pub mod latency;
pub mod price;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testenv;
pub mod tick;

/// Protobuf and gRPC types generated from `proto/tickflow/v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("tickflow.v1");

    /// Encoded file descriptor set of the schema, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tickflow_descriptor");
}

pub use price::Price;
pub use tick::{KeyOrdinals, RouteInfo, Tick, idempotency_key};
