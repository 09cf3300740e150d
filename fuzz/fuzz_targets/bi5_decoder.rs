//! Any bytes given to the `.bi5` decoder yield records or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(recs) = ingest::dukascopy::decode_bi5("fuzz.bi5", data) {
        let mut o = tick_core::KeyOrdinals::default();
        let _ = ingest::dukascopy::to_ticks("EURUSD", 0, &recs, 0, &mut o);
    }
});
