//! Wall-clock time in UTC nanoseconds, the unit of every timestamp in tickflow.

use std::time::{SystemTime, UNIX_EPOCH};

/// Returns the current UTC time in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 time (`2019-02-04T00:00:00Z`, or without the zone, read as UTC) into UTC
/// nanoseconds: the one parser of every `--from`/`--to` flag.
pub fn parse_rfc3339_ns(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(d.as_nanos() as i64)
}
