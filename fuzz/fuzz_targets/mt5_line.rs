//! Any line from an MT5 terminal yields a tick or a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let mut o = tick_core::KeyOrdinals::default();
        let _ = ingest::mt5::parse_tick(line, "mt5:fuzz", 7200, &mut o);
        let _ = ingest::mt5::parse_tick(line, "mt5:fuzz", i64::MIN, &mut o);
    }
});
