//! Addresses of the real services integration tests run against, as `scripts/test.sh` sets
//! them (`KAFKA_BROKERS`, `DATABASE_URL`, `REDIS_URL`).

/// Returns the value of `var`, or `None` (the caller skips) when it is unset and the run does
/// not require services. Under `scripts/test.sh` (`TICKFLOW_REQUIRE_SERVICES=1`) a missing
/// variable fails the test instead, so CI can never pass by skipping.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TICKFLOW_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but TICKFLOW_REQUIRE_SERVICES=1: start the services with scripts/services.sh up"
            );
            eprintln!("skipping: {var} is not set (run under scripts/test.sh)");
            None
        }
    }
}
