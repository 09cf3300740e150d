//! Any line of an OANDA stream yields a tick, a heartbeat or a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let mut o = tick_core::KeyOrdinals::default();
        if let Ok(Some(t)) = ingest::oanda::parse_line(line, &mut o) {
            let _ = t.mid_price();
            let _ = t.encode();
        }
    }
});
