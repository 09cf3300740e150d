//! Time bars built from ticks, closed at their boundary either by a later tick or by the clock
//! when no tick arrives. Periods without ticks produce no bar.

use std::fmt;
use std::str::FromStr;
use tick_core::{Tick, pb};

/// Bar flag: the stream started inside this bar, so it may miss ticks.
pub const FLAG_PARTIAL_FIRST: u32 = 1;

/// Which price of a tick a bar follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSide {
    /// The bid (MetaTrader's chart convention).
    Bid,
    /// The ask.
    Ask,
    /// The exact mid, with one more decimal place than the quote.
    Mid,
}

impl PriceSide {
    /// Returns the name used in `Bar.price_side`.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSide::Bid => "bid",
            PriceSide::Ask => "ask",
            PriceSide::Mid => "mid",
        }
    }

    fn price(self, t: &Tick) -> Option<(i64, u8)> {
        match self {
            PriceSide::Bid => Some((t.bid, t.scale)),
            PriceSide::Ask => Some((t.ask, t.scale)),
            PriceSide::Mid => t.mid_price().map(|m| (m.mantissa, m.scale)),
        }
    }
}

impl FromStr for PriceSide {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bid" => Ok(PriceSide::Bid),
            "ask" => Ok(PriceSide::Ask),
            "mid" => Ok(PriceSide::Mid),
            _ => Err(format!("unknown price side {s:?} (bid, ask, mid)")),
        }
    }
}

/// A bar length such as `1s`, `5m` or `1h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeframe {
    /// The name as written.
    pub name: String,
    /// Length in nanoseconds.
    pub nanos: i64,
}

impl FromStr for Timeframe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("timeframe {s:?} has no unit (s, m, h, d)"))?;
        let (n, unit) = s.split_at(split);
        let n: i64 = n
            .parse()
            .map_err(|_| format!("timeframe {s:?} has no length"))?;
        let unit_ns = match unit {
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(format!("timeframe {s:?} has unknown unit (s, m, h, d)")),
        };
        if n <= 0 {
            return Err(format!("timeframe {s:?} must be positive"));
        }
        Ok(Timeframe {
            name: s.to_string(),
            nanos: n * unit_ns,
        })
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Builds consecutive bars of one symbol and timeframe.
#[derive(Debug, Clone)]
pub struct BarBuilder {
    tf: Timeframe,
    side: PriceSide,
    current: Option<pb::Bar>,
    live: bool,
    first: bool,
}

impl BarBuilder {
    /// Returns a builder for bars of `tf` from `side` prices.
    pub fn new(tf: Timeframe, side: PriceSide) -> Self {
        Self {
            tf,
            side,
            current: None,
            live: false,
            first: true,
        }
    }

    /// Adds a tick; returns the previous bar if this tick starts a later one. A tick older than
    /// the open bar (out of order) is ignored.
    pub fn on_tick(&mut self, t: &Tick) -> Option<pb::Bar> {
        // A mid that does not fit the fixed-point range cannot be a bar price: skip the tick.
        let (price, scale) = self.side.price(t)?;
        let open_time = t.ts_event_ns - t.ts_event_ns.rem_euclid(self.tf.nanos);
        let mut closed = None;
        if let Some(bar) = &mut self.current {
            if open_time == bar.open_time_ns {
                bar.high = bar.high.max(price);
                bar.low = bar.low.min(price);
                bar.close = price;
                bar.tick_count += 1;
                bar.volume += t.volume;
                bar.ts_recv_ns = t.ts_recv_ns;
                return None;
            }
            if open_time < bar.open_time_ns {
                return None;
            }
            closed = self.current.take().map(|mut b| {
                b.ts_recv_ns = t.ts_recv_ns;
                b
            });
        }
        let flags = if self.first { FLAG_PARTIAL_FIRST } else { 0 };
        self.first = false;
        self.live = !t.replay;
        self.current = Some(pb::Bar {
            symbol: t.symbol.clone(),
            timeframe: self.tf.name.clone(),
            price_side: self.side.as_str().to_string(),
            open_time_ns: open_time,
            close_time_ns: open_time.saturating_add(self.tf.nanos),
            price_scale: u32::from(scale),
            open: price,
            high: price,
            low: price,
            close: price,
            tick_count: 1,
            volume: t.volume,
            ts_recv_ns: t.ts_recv_ns,
            flags,
        });
        closed
    }

    /// Closes the open bar if its interval ended at least `grace_ns` before `now_ns`. Only bars
    /// of live ticks close by the clock; replayed history closes on its next tick.
    pub fn on_clock(&mut self, now_ns: i64, grace_ns: i64) -> Option<pb::Bar> {
        match &self.current {
            Some(b) if self.live && b.close_time_ns.saturating_add(grace_ns) <= now_ns => {
                self.current.take().map(|mut b| {
                    b.ts_recv_ns = now_ns;
                    b
                })
            }
            _ => None,
        }
    }

    /// Returns the bar still open, for a final flush.
    pub fn take_open(&mut self) -> Option<pb::Bar> {
        self.current.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn tick(ts: i64, bid: i64) -> Tick {
        Tick {
            symbol: "EURUSD".into(),
            source: "sim".into(),
            ts_event_ns: ts,
            ts_recv_ns: ts,
            scale: 5,
            bid,
            ask: bid + 3,
            last: None,
            bid_size: 0.0,
            ask_size: 0.0,
            volume: 1.0,
            flags: 0,
            key: String::new(),
            route: Default::default(),
            replay: false,
        }
    }

    #[test]
    fn builds_ohlc_and_closes_on_the_next_interval() {
        let mut b = BarBuilder::new("1s".parse().unwrap(), PriceSide::Bid);
        assert!(b.on_tick(&tick(10 * S + 1, 100)).is_none());
        assert!(b.on_tick(&tick(10 * S + 2, 105)).is_none());
        assert!(b.on_tick(&tick(10 * S + 3, 98)).is_none());
        assert!(b.on_tick(&tick(10 * S + 4, 101)).is_none());
        // Out of order: ignored.
        assert!(b.on_tick(&tick(9 * S, 1)).is_none());
        let bar = b.on_tick(&tick(12 * S + 5, 200)).unwrap();
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.close, bar.tick_count),
            (100, 105, 98, 101, 4)
        );
        assert_eq!((bar.open_time_ns, bar.close_time_ns), (10 * S, 11 * S));
        assert_eq!(bar.flags, FLAG_PARTIAL_FIRST);
        // No bar for the empty second 11.
        let next = b.take_open().unwrap();
        assert_eq!(next.open_time_ns, 12 * S);
        assert_eq!(next.flags, 0);
    }

    #[test]
    fn clock_closes_live_bars_but_not_replays() {
        let mut b = BarBuilder::new("1m".parse().unwrap(), PriceSide::Mid);
        b.on_tick(&tick(60 * S, 100));
        assert!(b.on_clock(120 * S - 1, 0).is_none());
        let bar = b.on_clock(120 * S, 0).unwrap();
        assert_eq!((bar.open, bar.price_scale), (1015, 6));
        assert!(b.on_clock(10_000 * S, 0).is_none());
        let mut r = BarBuilder::new("1m".parse().unwrap(), PriceSide::Bid);
        r.on_tick(&Tick {
            replay: true,
            ..tick(60 * S, 100)
        });
        assert!(r.on_clock(10_000 * S, 0).is_none());
    }

    #[test]
    fn timeframes_parse() {
        let ok = [
            ("1s", S),
            ("5m", 300 * S),
            ("1h", 3600 * S),
            ("1d", 86400 * S),
        ];
        for (t, n) in ok {
            assert_eq!(t.parse::<Timeframe>().unwrap().nanos, n);
        }
        for bad in ["", "m", "0s", "5x", "1.5m"] {
            assert!(bad.parse::<Timeframe>().is_err(), "{bad}");
        }
    }
}
