//! The canonical domain tick, its idempotency key and its lossless conversion to and from the
//! protobuf wire type.

use crate::pb;
use crate::price::{MAX_SCALE, Price};
use std::collections::HashMap;

/// One quote update for one instrument from one source, with fixed-point prices.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Canonical instrument name, such as `EURUSD`.
    pub symbol: String,
    /// Source name, such as `sim`, `oanda` or `mt5:icmarkets`.
    pub source: String,
    /// Source time of the quote, UTC ns.
    pub ts_event_ns: i64,
    /// Time ingest received the quote, UTC ns.
    pub ts_recv_ns: i64,
    /// Decimal places of `bid`, `ask` and `last`.
    pub scale: u8,
    /// Best bid mantissa.
    pub bid: i64,
    /// Best ask mantissa.
    pub ask: i64,
    /// Last trade mantissa, if the source reports trades.
    pub last: Option<i64>,
    /// Size at the best bid (0 when unknown).
    pub bid_size: f64,
    /// Size at the best ask (0 when unknown).
    pub ask_size: f64,
    /// Reported volume (0 when unknown).
    pub volume: f64,
    /// Source-specific flag bits.
    pub flags: u32,
    /// Deterministic idempotency key, see [`idempotency_key`].
    pub key: String,
    /// What the router added (all zero before the router).
    pub route: RouteInfo,
    /// Whether this is a replay of history rather than a live quote.
    pub replay: bool,
}

/// Router marker bit: first tick from a new source after a failover or switch-back.
pub const ROUTE_SOURCE_SWITCH: u32 = 1;
/// Router marker bit: the symbol's feed was silent before this tick for longer than the
/// silence threshold.
pub const ROUTE_AFTER_SILENCE: u32 = 2;

/// What the router adds to a tick it lets through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// Time the router let the tick through, UTC ns.
    pub ts_route_ns: i64,
    /// Contiguous per-symbol sequence number among clean ticks.
    pub symbol_seq: u64,
    /// `ROUTE_*` marker bits.
    pub flags: u32,
    /// With a marker: ns since the previous clean tick of the symbol.
    pub gap_ns: i64,
}

impl Tick {
    /// Returns the bid as a [`Price`].
    pub fn bid_price(&self) -> Price {
        Price::new(self.bid, self.scale)
    }

    /// Returns the ask as a [`Price`].
    pub fn ask_price(&self) -> Price {
        Price::new(self.ask, self.scale)
    }

    /// Returns the mid price as an `f64` (for indicators only).
    pub fn mid_f64(&self) -> f64 {
        (self.bid_price().to_f64() + self.ask_price().to_f64()) / 2.0
    }

    /// Returns the exact mid price, with one more decimal place than the quote, or `None`
    /// when that does not fit (a scale of 18 or an absurd price).
    pub fn mid_price(&self) -> Option<Price> {
        // (bid + ask) / 2 == (bid + ask) * 5 / 10: exact with one more decimal place.
        let m = (i128::from(self.bid) + i128::from(self.ask)) * 5;
        let scale = self
            .scale
            .checked_add(1)
            .filter(|s| *s <= crate::price::MAX_SCALE)?;
        Some(Price::new(i64::try_from(m).ok()?, scale))
    }

    /// Encodes the tick as protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::Tick::from(self))
    }

    /// Appends the tick's protobuf encoding to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        let m = pb::Tick::from(self);
        buf.reserve(prost::Message::encoded_len(&m));
        prost::Message::encode_raw(&m, buf);
    }

    /// Decodes protobuf bytes into a tick.
    pub fn decode(bytes: &[u8]) -> Result<Tick, TickDecodeError> {
        let pb = <pb::Tick as prost::Message>::decode(bytes)?;
        Tick::try_from(pb)
    }
}

/// Returns the idempotency key of a tick: `source|symbol|ts_event_ns|ordinal`.
///
/// `ordinal` counts the earlier ticks with the same source, symbol and event time, so two quotes
/// in the same nanosecond stay distinct while re-reading the same data yields the same keys.
pub fn idempotency_key(source: &str, symbol: &str, ts_event_ns: i64, ordinal: u32) -> String {
    format!("{source}|{symbol}|{ts_event_ns}|{ordinal}")
}

/// Hands out the ordinal part of idempotency keys for one source, in arrival order.
#[derive(Debug, Default)]
pub struct KeyOrdinals {
    last: HashMap<String, (i64, u32)>,
}

impl KeyOrdinals {
    /// Returns the ordinal of the next tick of `symbol` at `ts_event_ns`: 0 unless the previous
    /// tick of that symbol had the same timestamp.
    pub fn next(&mut self, symbol: &str, ts_event_ns: i64) -> u32 {
        match self.last.get_mut(symbol) {
            Some((ts, n)) if *ts == ts_event_ns => {
                *n += 1;
                *n
            }
            Some(entry) => {
                *entry = (ts_event_ns, 0);
                0
            }
            None => {
                self.last.insert(symbol.to_string(), (ts_event_ns, 0));
                0
            }
        }
    }
}

/// Why protobuf bytes could not become a [`Tick`].
#[derive(Debug, thiserror::Error)]
pub enum TickDecodeError {
    /// The bytes are not a protobuf `Tick`.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A required field is empty.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// `price_scale` is larger than 18.
    #[error("price scale {0} out of range (at most {MAX_SCALE})")]
    Scale(u32),
}

impl From<&Tick> for pb::Tick {
    fn from(t: &Tick) -> Self {
        pb::Tick {
            symbol: t.symbol.clone(),
            source: t.source.clone(),
            ts_event_ns: t.ts_event_ns,
            ts_recv_ns: t.ts_recv_ns,
            price_scale: u32::from(t.scale),
            bid: t.bid,
            ask: t.ask,
            last: t.last,
            bid_size: t.bid_size,
            ask_size: t.ask_size,
            volume: t.volume,
            flags: t.flags,
            idempotency_key: t.key.clone(),
            ts_route_ns: t.route.ts_route_ns,
            replay: t.replay,
            symbol_seq: t.route.symbol_seq,
            route_flags: t.route.flags,
            gap_ns: t.route.gap_ns,
        }
    }
}

impl TryFrom<pb::Tick> for Tick {
    type Error = TickDecodeError;

    fn try_from(p: pb::Tick) -> Result<Self, Self::Error> {
        if p.symbol.is_empty() {
            return Err(TickDecodeError::Missing("symbol"));
        }
        if p.source.is_empty() {
            return Err(TickDecodeError::Missing("source"));
        }
        if p.idempotency_key.is_empty() {
            return Err(TickDecodeError::Missing("idempotency_key"));
        }
        if p.price_scale > u32::from(MAX_SCALE) {
            return Err(TickDecodeError::Scale(p.price_scale));
        }
        Ok(Tick {
            symbol: p.symbol,
            source: p.source,
            ts_event_ns: p.ts_event_ns,
            ts_recv_ns: p.ts_recv_ns,
            scale: p.price_scale as u8,
            bid: p.bid,
            ask: p.ask,
            last: p.last,
            bid_size: p.bid_size,
            ask_size: p.ask_size,
            volume: p.volume,
            flags: p.flags,
            key: p.idempotency_key,
            route: RouteInfo {
                ts_route_ns: p.ts_route_ns,
                symbol_seq: p.symbol_seq,
                flags: p.route_flags,
                gap_ns: p.gap_ns,
            },
            replay: p.replay,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Returns a valid tick for tests.
    pub fn sample() -> Tick {
        Tick {
            symbol: "EURUSD".into(),
            source: "sim".into(),
            ts_event_ns: 1_700_000_000_123_456_789,
            ts_recv_ns: 1_700_000_000_123_999_000,
            scale: 5,
            bid: 110235,
            ask: 110237,
            last: None,
            bid_size: 1.5,
            ask_size: 2.25,
            volume: 0.0,
            flags: 6,
            key: idempotency_key("sim", "EURUSD", 1_700_000_000_123_456_789, 0),
            route: Default::default(),
            replay: false,
        }
    }

    #[test]
    fn mid_is_exact() {
        let t = sample();
        assert_eq!(t.mid_price().unwrap().to_string(), "1.102360");
        let odd = Tick {
            ask: 110236,
            ..sample()
        };
        assert_eq!(odd.mid_price().unwrap().to_string(), "1.102355");
        assert_eq!(
            Tick {
                bid: i64::MAX,
                ..sample()
            }
            .mid_price(),
            None
        );
        assert_eq!(
            Tick {
                scale: 18,
                ..sample()
            }
            .mid_price(),
            None
        );
    }

    #[test]
    fn ordinals_count_same_timestamp_ticks() {
        let mut o = KeyOrdinals::default();
        assert_eq!(o.next("EURUSD", 10), 0);
        assert_eq!(o.next("EURUSD", 10), 1);
        assert_eq!(o.next("GBPUSD", 10), 0);
        assert_eq!(o.next("EURUSD", 10), 2);
        assert_eq!(o.next("EURUSD", 11), 0);
    }

    #[test]
    fn decode_rejects_incomplete_ticks() {
        assert!(matches!(
            Tick::decode(&[0xff, 0xff, 0xff]),
            Err(TickDecodeError::Protobuf(_))
        ));
        let mut p = pb::Tick::from(&sample());
        p.symbol.clear();
        assert!(matches!(
            Tick::try_from(p),
            Err(TickDecodeError::Missing("symbol"))
        ));
        let mut p = pb::Tick::from(&sample());
        p.price_scale = 19;
        assert!(matches!(Tick::try_from(p), Err(TickDecodeError::Scale(19))));
    }

    proptest! {
        #[test]
        fn protobuf_round_trip_is_exact(
            ts_event in any::<i64>(), ts_recv in any::<i64>(), scale in 0u8..=MAX_SCALE,
            bid in any::<i64>(), ask in any::<i64>(), last in proptest::option::of(any::<i64>()),
            size in any::<f64>().prop_filter("nan never equals itself", |f| !f.is_nan()),
            flags in any::<u32>(), replay in any::<bool>(), seq in any::<u64>(),
        ) {
            let route = RouteInfo { ts_route_ns: ts_recv, symbol_seq: seq, flags, gap_ns: ts_event };
            let t = Tick { ts_event_ns: ts_event, ts_recv_ns: ts_recv, scale, bid, ask, last,
                bid_size: size, ask_size: size, volume: size, flags, replay, route, ..sample() };
            let back = Tick::decode(&t.encode()).unwrap();
            prop_assert_eq!(back, t);
        }

        #[test]
        fn broker_decimal_survives_the_wire(int in 0u32..100_000, frac in 0u32..100_000) {
            let text = format!("{int}.{frac:05}");
            let p: Price = text.parse().unwrap();
            let t = Tick { bid: p.mantissa, ask: p.mantissa, scale: p.scale, ..sample() };
            let back = Tick::decode(&t.encode()).unwrap();
            prop_assert_eq!(back.bid_price().to_string(), text);
        }
    }
}
