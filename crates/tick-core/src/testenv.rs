//! Addresses of the real services integration tests run against, as `scripts/test.sh` sets
//! them (`KAFKA_BROKERS`, `DATABASE_URL`, `REDIS_URL`).

pub mod tls;

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

/// Returns a free TCP port on loopback (bound and released: a test binds it again at once).
///
/// It is drawn below Linux's ephemeral range (32768 and up), from which the kernel hands out
/// the ports of `:0` listeners and of outgoing connections: another test's server on port 0
/// (or a client) can then never take it between its release and its reuse, and answer the
/// test in its place.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u32..1000 {
        // Seeded by the OS per call: concurrent tests draw different ports.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Returns a valid tick for integration tests and benchmarks: `symbol` from `source` at
/// `ts_event_ns` (also its receipt time), scale 5, `bid` and a 2-point spread, its idempotency
/// key derived as the pipeline derives it (ordinal 0).
pub fn tick(source: &str, symbol: &str, ts_event_ns: i64, bid: i64) -> crate::Tick {
    crate::Tick {
        symbol: symbol.into(),
        source: source.into(),
        ts_event_ns,
        ts_recv_ns: ts_event_ns,
        scale: 5,
        bid,
        ask: bid + 2,
        last: None,
        bid_size: 1.0,
        ask_size: 1.0,
        volume: 0.0,
        flags: 0,
        key: crate::idempotency_key(source, symbol, ts_event_ns, 0),
        route: Default::default(),
        replay: false,
    }
}
