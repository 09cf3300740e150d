//! One-second bid bars built from real Dukascopy BTCUSD ticks equal the independent reference
//! bars of `../shared/fixtures/dukascopy/expected` exactly.

use indicators::bars::{BarBuilder, FLAG_GAP, FLAG_PARTIAL_FIRST, PriceSide};
use std::path::Path;
use tick_core::{KeyOrdinals, Price};
use tick_formats::dukascopy::{read_hour, to_ticks};

#[test]
fn btcusd_one_second_bid_bars_match_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/dukascopy");
    let hour = 1_676_894_400_000_000_000; // 2023-02-20T12:00:00Z
    let recs = read_hour(&root, "BTCUSD", hour).unwrap();
    let ticks = to_ticks("BTCUSD", hour, &recs, 0, &mut KeyOrdinals::default()).unwrap();
    let mut b = BarBuilder::new("1s".parse().unwrap(), PriceSide::Bid);
    let mut bars: Vec<_> = ticks.iter().filter_map(|t| b.on_tick(t)).collect();
    bars.extend(b.take_open());
    // The reference has no flags; check them against the bars themselves: none late (the
    // fixture is in order), the first partial, a gap exactly after an empty second.
    assert_eq!(b.late_ticks(), 0);
    assert_eq!(bars[0].flags, FLAG_PARTIAL_FIRST);
    for w in bars.windows(2) {
        let gap = w[1].open_time_ns - w[0].open_time_ns > 1_000_000_000;
        assert_eq!(w[1].flags, if gap { FLAG_GAP } else { 0 }, "{:?}", w[1]);
    }

    let text = std::fs::read_to_string(root.join("expected/BTCUSD-2023-02-20T12-s1-bid-bars.json"))
        .unwrap();
    let want: Vec<Vec<String>> = text
        .split('{')
        .skip(1)
        .map(|o| {
            [
                "\"timestamp\"",
                "\"open\"",
                "\"high\"",
                "\"low\"",
                "\"close\"",
            ]
            .iter()
            .map(|name| {
                let s = &o[o.find(name).unwrap() + name.len() + 1..];
                s.split([',', '}']).next().unwrap().trim().to_string()
            })
            .collect()
        })
        .collect();
    assert_eq!(bars.len(), want.len());
    for (bar, w) in bars.iter().zip(&want) {
        let p = |m: i64| Price::new(m, bar.price_scale as u8);
        let dec = |s: &str| {
            s.parse::<Price>()
                .unwrap()
                .rescale(bar.price_scale as u8)
                .unwrap()
        };
        assert_eq!(bar.open_time_ns, w[0].parse::<i64>().unwrap() * 1_000_000);
        assert_eq!(
            [p(bar.open), p(bar.high), p(bar.low), p(bar.close)],
            [dec(&w[1]), dec(&w[2]), dec(&w[3]), dec(&w[4])],
            "bar at {}",
            w[0]
        );
    }
}
