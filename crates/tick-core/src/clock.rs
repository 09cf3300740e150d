//! Wall-clock time in UTC nanoseconds, the unit of every timestamp in tickflow.

use std::time::{SystemTime, UNIX_EPOCH};

/// Returns the current UTC time in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
