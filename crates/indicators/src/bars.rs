//! Bars built from ticks: time bars (`1s`, `1m`, `5m`, `15m`, `1h`, `1d`, any `N` of a unit),
//! closed at their boundary either by a later tick or by the clock when no tick arrives, and
//! tick bars (`100t`: every 100 ticks), closed by their last tick. Periods without ticks produce
//! no bar.
//!
//! Every bar carries quality flags ([`FLAG_PARTIAL_FIRST`], [`FLAG_GAP`], [`FLAG_LATE`]), also
//! documented on `Bar.flags` in `proto/tickflow/v1/events.proto`.
//!
//! Late ticks: a closed bar is immutable (it was published, stored, and fed to the bar
//! indicators). A tick for an interval that is already closed (or earlier than the open bar) is
//! left out of every bar and counted ([`BarBuilder::late_ticks`]); the next bar this builder
//! emits (the open one, or the next to open when none is) carries [`FLAG_LATE`]. So the output
//! depends only on the order of the ticks, never on when they were processed.

use std::fmt;
use std::str::FromStr;
use tick_core::tick::ROUTE_AFTER_SILENCE;
use tick_core::{Price, Tick, pb};

/// Bar flag, bit 0: the stream started inside this bar, so it may miss ticks (the first time
/// bar of each symbol and timeframe; tick bars start with the stream and never carry it).
pub const FLAG_PARTIAL_FIRST: u32 = 1;
/// Bar flag, bit 1: the bar follows a gap in the feed: the previous time bar of this symbol and
/// timeframe is more than one interval earlier (at least one interval had no tick), or one of
/// its ticks carries the router's gap marker (`ROUTE_AFTER_SILENCE`: the symbol was silent
/// longer than the router's silence threshold before it).
pub const FLAG_GAP: u32 = 2;
/// Bar flag, bit 2: a late tick (one for an interval already closed) arrived while this bar was
/// open, or since the previous bar was emitted; it is in no bar (a closed bar never changes),
/// so an earlier bar may miss it. Time bars only: tick bars take ticks in arrival order.
pub const FLAG_LATE: u32 = 4;

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

/// How long a bar lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Length {
    /// A time bar of this many nanoseconds, aligned on multiples of it since the Unix epoch.
    Nanos(i64),
    /// A tick bar of this many ticks.
    Ticks(u64),
}

/// A bar length such as `1s`, `5m`, `1h` (time bars) or `100t` (tick bars: every 100 ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeframe {
    /// The name as written.
    pub name: String,
    /// Its length.
    pub length: Length,
}

impl Timeframe {
    /// Length in nanoseconds of a time bar; `None` for tick bars.
    pub fn nanos(&self) -> Option<i64> {
        match self.length {
            Length::Nanos(n) => Some(n),
            Length::Ticks(_) => None,
        }
    }

    /// Whether `other` describes the same bars, whatever its name (`60s` and `1m`).
    pub fn same_bars(&self, other: &Timeframe) -> bool {
        self.length == other.length
    }
}

impl FromStr for Timeframe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("timeframe {s:?} has no unit (s, m, h, d, t)"))?;
        let (n, unit) = s.split_at(split);
        let n: i64 = n
            .parse()
            .map_err(|_| format!("timeframe {s:?} has no length"))?;
        if n <= 0 {
            return Err(format!("timeframe {s:?} must be positive"));
        }
        let unit_ns: i64 = match unit {
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "t" => {
                return Ok(Timeframe {
                    name: s.to_string(),
                    length: Length::Ticks(n as u64),
                });
            }
            _ => {
                return Err(format!(
                    "timeframe {s:?} has unknown unit (s, m, h, d; t for tick bars)"
                ));
            }
        };
        let nanos = n
            .checked_mul(unit_ns)
            .ok_or_else(|| format!("timeframe {s:?} is too long"))?;
        Ok(Timeframe {
            name: s.to_string(),
            length: Length::Nanos(nanos),
        })
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Builds consecutive bars of one symbol and timeframe.
///
/// Time bars: `[open_time_ns, close_time_ns)` is the interval. Tick bars: `open_time_ns` is the
/// event time of the first tick (raised to 1 ns after the previous tick bar's when equal or
/// earlier, so that symbol, timeframe, side and open time stay a key) and `close_time_ns` 1 ns
/// after the event time of the last, so the interval holds every tick in arrival order.
#[derive(Debug, Clone)]
pub struct BarBuilder {
    tf: Timeframe,
    side: PriceSide,
    current: Option<pb::Bar>,
    live: bool,
    first: bool,
    /// Open time of the latest bar opened (open or emitted).
    last_open: Option<i64>,
    /// A late tick arrived while no bar was open: flag the next one.
    late_pending: bool,
    late_ticks: u64,
    /// `ts_recv_ns` and ask − bid (mantissa, scale) of the latest tick added to a bar.
    last: (i64, (i64, u8)),
    /// The same for the last tick of the bar closed last.
    closed: (i64, (i64, u8)),
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
            last_open: None,
            late_pending: false,
            late_ticks: 0,
            last: (0, (0, 0)),
            closed: (0, (0, 0)),
        }
    }

    /// The timeframe.
    pub fn timeframe(&self) -> &Timeframe {
        &self.tf
    }

    /// How many late ticks were left out of every bar (see [`FLAG_LATE`]).
    pub fn late_ticks(&self) -> u64 {
        self.late_ticks
    }

    /// The `ts_recv_ns` and the spread (ask − bid) of the last tick of the bar this builder
    /// closed last (the bar's own `ts_recv_ns` is that of what closed it).
    pub fn closed_last_tick(&self) -> (i64, f64) {
        let (recv, (spread, scale)) = self.closed;
        (recv, Price::new(spread, scale).to_f64())
    }

    fn close(&mut self) -> Option<pb::Bar> {
        self.closed = self.last;
        self.current.take()
    }

    /// Adds a tick; returns the bar it closed: for a time bar the previous bar, if this tick
    /// starts a later one; for a tick bar the bar this tick completes. A tick older than the
    /// open time bar, or of an interval already closed, is late: left out and counted.
    pub fn on_tick(&mut self, t: &Tick) -> Option<pb::Bar> {
        // A mid that does not fit the fixed-point range cannot be a bar price: skip the tick.
        let (price, scale) = self.side.price(t)?;
        let gap = if t.route.flags & ROUTE_AFTER_SILENCE != 0 {
            FLAG_GAP
        } else {
            0
        };
        match self.tf.length {
            Length::Nanos(nanos) => self.time_tick(t, price, scale, nanos, gap),
            Length::Ticks(n) => self.count_tick(t, price, scale, n, gap),
        }
    }

    fn time_tick(
        &mut self,
        t: &Tick,
        price: i64,
        scale: u8,
        nanos: i64,
        gap: u32,
    ) -> Option<pb::Bar> {
        // The common case, a tick of the open bar, without the division below.
        if let Some(bar) = &mut self.current
            && t.ts_event_ns >= bar.open_time_ns
            && t.ts_event_ns < bar.close_time_ns
        {
            Self::add(bar, t, price, gap);
            self.note(t);
            return None;
        }
        let open_time = t.ts_event_ns - t.ts_event_ns.rem_euclid(nanos);
        let mut closed = None;
        if let Some(bar) = &mut self.current {
            if open_time == bar.open_time_ns {
                Self::add(bar, t, price, gap);
                self.note(t);
                return None;
            }
            if open_time < bar.open_time_ns {
                self.late_ticks += 1;
                bar.flags |= FLAG_LATE;
                return None;
            }
            closed = self.close().map(|mut b| {
                b.ts_recv_ns = t.ts_recv_ns;
                b
            });
        } else if self.last_open.is_some_and(|p| open_time <= p) {
            // Its bar (or a later one) was already closed by the clock.
            self.late_ticks += 1;
            self.late_pending = true;
            return None;
        }
        let mut flags = gap;
        if std::mem::take(&mut self.first) {
            flags |= FLAG_PARTIAL_FIRST;
        }
        if self
            .last_open
            .is_some_and(|p| open_time.saturating_sub(p) > nanos)
        {
            flags |= FLAG_GAP;
        }
        self.open(
            t,
            price,
            scale,
            open_time,
            open_time.saturating_add(nanos),
            flags,
        );
        closed
    }

    fn count_tick(&mut self, t: &Tick, price: i64, scale: u8, n: u64, gap: u32) -> Option<pb::Bar> {
        match &mut self.current {
            Some(bar) => {
                Self::add(bar, t, price, gap);
                bar.close_time_ns = bar.close_time_ns.max(t.ts_event_ns.saturating_add(1));
                self.note(t);
            }
            None => {
                let open_time = match self.last_open {
                    Some(p) if t.ts_event_ns <= p => p.saturating_add(1),
                    _ => t.ts_event_ns,
                };
                let close = open_time.max(t.ts_event_ns).saturating_add(1);
                self.open(t, price, scale, open_time, close, gap);
            }
        }
        if self.current.as_ref().is_some_and(|b| b.tick_count >= n) {
            return self.close();
        }
        None
    }

    fn add(bar: &mut pb::Bar, t: &Tick, price: i64, gap: u32) {
        bar.high = bar.high.max(price);
        bar.low = bar.low.min(price);
        bar.close = price;
        bar.tick_count += 1;
        bar.volume += t.volume;
        bar.ts_recv_ns = t.ts_recv_ns;
        bar.flags |= gap;
    }

    fn note(&mut self, t: &Tick) {
        self.last = (t.ts_recv_ns, (t.ask.saturating_sub(t.bid), t.scale));
    }

    fn open(&mut self, t: &Tick, price: i64, scale: u8, open: i64, close: i64, mut flags: u32) {
        if std::mem::take(&mut self.late_pending) {
            flags |= FLAG_LATE;
        }
        self.live = !t.replay;
        self.last_open = Some(open);
        self.note(t);
        self.current = Some(pb::Bar {
            symbol: t.symbol.clone(),
            timeframe: self.tf.name.clone(),
            price_side: self.side.as_str().to_string(),
            open_time_ns: open,
            close_time_ns: close,
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
    }

    /// Closes the open time bar if its interval ended at least `grace_ns` before `now_ns`
    /// (its `ts_recv_ns` becomes `now_ns`). Only bars of live ticks close by the clock;
    /// replayed history closes on its next tick, tick bars on their last tick.
    pub fn on_clock(&mut self, now_ns: i64, grace_ns: i64) -> Option<pb::Bar> {
        match &self.current {
            Some(b)
                if self.live
                    && matches!(self.tf.length, Length::Nanos(_))
                    && b.close_time_ns.saturating_add(grace_ns) <= now_ns =>
            {
                self.close().map(|mut b| {
                    b.ts_recv_ns = now_ns;
                    b
                })
            }
            _ => None,
        }
    }

    /// Returns the bar still open, for a final flush.
    pub fn take_open(&mut self) -> Option<pb::Bar> {
        self.close()
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
        // The stream started inside it, and the out-of-order tick was late.
        assert_eq!(bar.flags, FLAG_PARTIAL_FIRST | FLAG_LATE);
        assert_eq!(b.late_ticks(), 1);
        // No bar for the empty second 11: the next follows a gap.
        let next = b.take_open().unwrap();
        assert_eq!(next.open_time_ns, 12 * S);
        assert_eq!(next.flags, FLAG_GAP);
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
            assert_eq!(t.parse::<Timeframe>().unwrap().nanos(), Some(n));
        }
        let t: Timeframe = "100t".parse().unwrap();
        assert_eq!(
            (t.length, t.nanos(), t.name.as_str()),
            (Length::Ticks(100), None, "100t")
        );
        assert!(
            "60s"
                .parse::<Timeframe>()
                .unwrap()
                .same_bars(&"1m".parse().unwrap())
        );
        for bad in ["", "m", "0s", "5x", "1.5m", "0t", "t", "99999999999999d"] {
            assert!(bad.parse::<Timeframe>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tick_bars_close_on_their_last_tick() {
        let mut b = BarBuilder::new("3t".parse().unwrap(), PriceSide::Bid);
        let prices = [100, 105, 98, 101, 101, 90, 95];
        let mut bars = Vec::new();
        for (i, p) in prices.iter().enumerate() {
            // Two ticks share each event time: tick bars still get distinct open times.
            let t = tick(10 * S + (i as i64 / 2), *p);
            bars.extend(b.on_tick(&t));
        }
        assert_eq!(
            bars.len(),
            2,
            "a bar every 3 ticks; the 7th opens the third"
        );
        let ohlc = |b: &pb::Bar| (b.open, b.high, b.low, b.close, b.tick_count);
        assert_eq!(ohlc(&bars[0]), (100, 105, 98, 98, 3));
        assert_eq!(ohlc(&bars[1]), (101, 101, 90, 90, 3));
        assert_eq!(bars[0].timeframe, "3t");
        // Ticks 0-2 at 10s, 10s, 10s+1 ns; ticks 3-5 at 10s+1, 10s+2, 10s+2 ns: each bar runs
        // from its first tick's time to 1 ns after its last's.
        assert_eq!(
            (bars[0].open_time_ns, bars[0].close_time_ns),
            (10 * S, 10 * S + 2)
        );
        assert_eq!(
            (bars[1].open_time_ns, bars[1].close_time_ns),
            (10 * S + 1, 10 * S + 3)
        );
        assert!(
            bars.iter().all(|b| b.flags == 0),
            "tick bars are never partial"
        );
        // The clock never closes a tick bar.
        assert!(b.on_clock(1_000 * S, 0).is_none());
        let open = b.take_open().unwrap();
        assert_eq!((open.tick_count, open.open_time_ns), (1, 10 * S + 3));
    }

    #[test]
    fn tick_bar_open_times_stay_distinct_at_one_event_time() {
        let mut b = BarBuilder::new("2t".parse().unwrap(), PriceSide::Bid);
        let bars: Vec<_> = (0..6)
            .filter_map(|_| b.on_tick(&tick(5 * S, 100)))
            .collect();
        let opens: Vec<i64> = bars.iter().map(|b| b.open_time_ns).collect();
        assert_eq!(opens, [5 * S, 5 * S + 1, 5 * S + 2]);
        assert!(bars.iter().all(|b| b.open_time_ns < b.close_time_ns));
    }

    #[test]
    fn gap_flag_after_an_empty_interval_or_a_router_gap_marker() {
        let mut b = BarBuilder::new("1s".parse().unwrap(), PriceSide::Bid);
        b.on_tick(&tick(10 * S, 100));
        let first = b.on_tick(&tick(11 * S, 100)).unwrap();
        assert_eq!(first.flags, FLAG_PARTIAL_FIRST);
        // 11s is adjacent to 10s: no gap. 13s follows an empty 12s: gap.
        let second = b.on_tick(&tick(13 * S, 100)).unwrap();
        assert_eq!(second.flags, 0);
        let third = b.on_tick(&tick(14 * S, 100)).unwrap();
        assert_eq!(third.flags, FLAG_GAP);
        // A tick the router marked as following a silence flags the bar it goes into, even
        // in the middle of the bar.
        let mut marked = tick(14 * S + 500_000_000, 100);
        marked.route.flags = ROUTE_AFTER_SILENCE;
        marked.route.gap_ns = 90 * S;
        assert!(b.on_tick(&marked).is_none());
        let fourth = b.on_tick(&tick(15 * S, 100)).unwrap();
        assert_eq!((fourth.open_time_ns, fourth.flags), (14 * S, FLAG_GAP));
        // The source-switch marker alone is not a gap.
        let mut switched = tick(16 * S, 100);
        switched.route.flags = tick_core::tick::ROUTE_SOURCE_SWITCH;
        assert_eq!(b.on_tick(&switched).unwrap().flags, 0);
        // Tick bars take the marker too.
        let mut t = BarBuilder::new("2t".parse().unwrap(), PriceSide::Bid);
        t.on_tick(&tick(S, 1));
        assert_eq!(t.on_tick(&marked).unwrap().flags, FLAG_GAP);
    }

    #[test]
    fn late_ticks_are_counted_and_flag_the_next_bar() {
        let mut b = BarBuilder::new("1s".parse().unwrap(), PriceSide::Bid);
        b.on_tick(&tick(10 * S, 100));
        let first = b.on_tick(&tick(11 * S, 101)).unwrap();
        // A tick of second 10 after its bar closed: left out, counted, flags the open bar.
        assert!(b.on_tick(&tick(10 * S + 5, 1)).is_none());
        assert_eq!(b.late_ticks(), 1);
        let second = b.on_tick(&tick(12 * S, 102)).unwrap();
        assert_eq!((second.open, second.low, second.tick_count), (101, 101, 1));
        assert_eq!(second.flags & FLAG_LATE, FLAG_LATE);
        assert_eq!(first.flags & FLAG_LATE, 0);
        // After a clock close, a tick of the closed second is late and flags the next bar.
        let closed = b.on_clock(13 * S, 0).unwrap();
        assert_eq!((closed.open_time_ns, closed.flags & FLAG_LATE), (12 * S, 0));
        assert!(b.on_tick(&tick(12 * S + 9, 7)).is_none());
        assert_eq!(b.late_ticks(), 2);
        assert!(b.on_tick(&tick(13 * S, 103)).is_none());
        let next = b.on_tick(&tick(14 * S, 104)).unwrap();
        assert_eq!((next.open, next.flags), (103, FLAG_LATE));
        // Only that one.
        assert_eq!(b.take_open().unwrap().flags, 0);
    }

    #[test]
    fn clock_close_remembers_the_last_tick() {
        let mut b = BarBuilder::new("1s".parse().unwrap(), PriceSide::Bid);
        let mut t = tick(10 * S, 100);
        t.ts_recv_ns = 10 * S + 77;
        b.on_tick(&t);
        let bar = b.on_clock(12 * S, 0).unwrap();
        assert_eq!(bar.ts_recv_ns, 12 * S, "the clock event");
        let (recv, spread) = b.closed_last_tick();
        assert_eq!(recv, 10 * S + 77);
        assert!((spread - 0.00003).abs() < 1e-12);
    }
}
