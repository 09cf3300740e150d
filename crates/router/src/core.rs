//! The router's pure core: decides, for each tick, whether it is fit for the bots and storage,
//! and why not when it is not. No I/O, no clock of its own: the caller passes the time.

use tick_core::Tick;

/// Why a tick was rejected; the code is stable and used in dead letters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The payload could not be decoded as a tick.
    MalformedPayload,
    /// Bid or ask is zero or negative.
    NonPositivePrice,
    /// A size or volume is NaN or infinite.
    NonFiniteValue,
    /// Ask below bid.
    CrossedQuote,
    /// Event time missing, or too far from now for a live source.
    BadTimestamp,
}

impl RejectReason {
    /// Every reason, for metrics and tests.
    pub const ALL: [RejectReason; 5] = [
        RejectReason::MalformedPayload,
        RejectReason::NonPositivePrice,
        RejectReason::NonFiniteValue,
        RejectReason::CrossedQuote,
        RejectReason::BadTimestamp,
    ];

    /// Returns the stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::MalformedPayload => "malformed_payload",
            RejectReason::NonPositivePrice => "non_positive_price",
            RejectReason::NonFiniteValue => "non_finite_value",
            RejectReason::CrossedQuote => "crossed_quote",
            RejectReason::BadTimestamp => "bad_timestamp",
        }
    }
}

/// A rejected tick with its reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The reason code.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

/// What the router decided for one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Fit to pass, stamped with the routing time.
    Clean(Tick),
    /// Refused.
    Reject(Tick, Reject),
}

/// Rules of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How far in the future a live tick's event time may be, in ns (clock skew allowance).
    pub max_future_ns: i64,
    /// How far in the past a live tick's event time may be, in ns.
    pub max_past_ns: i64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_future_ns: 5_000_000_000,
            max_past_ns: 24 * 3600 * 1_000_000_000,
        }
    }
}

/// The router's decision logic.
#[derive(Debug, Default)]
pub struct Router {
    cfg: RouterConfig,
}

impl Router {
    /// Returns a router with these rules.
    pub fn new(cfg: RouterConfig) -> Self {
        Self { cfg }
    }

    /// Decides the fate of `tick` at time `now_ns`.
    pub fn on_tick(&mut self, mut tick: Tick, now_ns: i64) -> Routed {
        match self.check(&tick, now_ns) {
            Some(reject) => Routed::Reject(tick, reject),
            None => {
                tick.ts_route_ns = now_ns;
                Routed::Clean(tick)
            }
        }
    }

    fn check(&self, t: &Tick, now_ns: i64) -> Option<Reject> {
        let reject = |reason, detail: String| Some(Reject { reason, detail });
        if t.bid <= 0 || t.ask <= 0 {
            return reject(
                RejectReason::NonPositivePrice,
                format!("bid {} ask {}", t.bid_price(), t.ask_price()),
            );
        }
        if !(t.bid_size.is_finite() && t.ask_size.is_finite() && t.volume.is_finite()) {
            return reject(
                RejectReason::NonFiniteValue,
                format!(
                    "bid_size {} ask_size {} volume {}",
                    t.bid_size, t.ask_size, t.volume
                ),
            );
        }
        if t.ask < t.bid {
            return reject(
                RejectReason::CrossedQuote,
                format!("ask {} below bid {}", t.ask_price(), t.bid_price()),
            );
        }
        if t.ts_event_ns <= 0 {
            return reject(
                RejectReason::BadTimestamp,
                format!("event time {} is not set", t.ts_event_ns),
            );
        }
        if !t.replay {
            let ahead = t.ts_event_ns.saturating_sub(now_ns);
            let behind = now_ns.saturating_sub(t.ts_event_ns);
            if ahead > self.cfg.max_future_ns {
                return reject(
                    RejectReason::BadTimestamp,
                    format!("event time {} ms in the future", ahead / 1_000_000),
                );
            }
            if behind > self.cfg.max_past_ns {
                return reject(
                    RejectReason::BadTimestamp,
                    format!("event time {} s in the past", behind / 1_000_000_000),
                );
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn tick() -> Tick {
        Tick {
            symbol: "EURUSD".into(),
            source: "sim".into(),
            ts_event_ns: NOW - 1_000_000,
            ts_recv_ns: NOW - 500_000,
            scale: 5,
            bid: 110235,
            ask: 110237,
            last: None,
            bid_size: 1.0,
            ask_size: 1.0,
            volume: 0.0,
            flags: 0,
            key: "sim|EURUSD|1|0".into(),
            ts_route_ns: 0,
            replay: false,
        }
    }

    #[test]
    fn rules_table() {
        let hour = 3600 * 1_000_000_000i64;
        let cases: Vec<(&str, Tick, Option<RejectReason>)> = vec![
            ("valid quote", tick(), None),
            (
                "locked quote (ask == bid) passes",
                Tick {
                    ask: 110235,
                    ..tick()
                },
                None,
            ),
            (
                "zero bid",
                Tick { bid: 0, ..tick() },
                Some(RejectReason::NonPositivePrice),
            ),
            (
                "negative ask",
                Tick { ask: -1, ..tick() },
                Some(RejectReason::NonPositivePrice),
            ),
            (
                "crossed",
                Tick {
                    ask: 110234,
                    ..tick()
                },
                Some(RejectReason::CrossedQuote),
            ),
            (
                "nan size",
                Tick {
                    bid_size: f64::NAN,
                    ..tick()
                },
                Some(RejectReason::NonFiniteValue),
            ),
            (
                "inf volume",
                Tick {
                    volume: f64::INFINITY,
                    ..tick()
                },
                Some(RejectReason::NonFiniteValue),
            ),
            (
                "no event time",
                Tick {
                    ts_event_ns: 0,
                    ..tick()
                },
                Some(RejectReason::BadTimestamp),
            ),
            (
                "6 s in the future",
                Tick {
                    ts_event_ns: NOW + 6_000_000_000,
                    ..tick()
                },
                Some(RejectReason::BadTimestamp),
            ),
            (
                "4 s in the future passes",
                Tick {
                    ts_event_ns: NOW + 4_000_000_000,
                    ..tick()
                },
                None,
            ),
            (
                "2 days old live",
                Tick {
                    ts_event_ns: NOW - 48 * hour,
                    ..tick()
                },
                Some(RejectReason::BadTimestamp),
            ),
            (
                "2 days old replay passes",
                Tick {
                    ts_event_ns: NOW - 48 * hour,
                    replay: true,
                    ..tick()
                },
                None,
            ),
            (
                "replay still needs a time",
                Tick {
                    ts_event_ns: 0,
                    replay: true,
                    ..tick()
                },
                Some(RejectReason::BadTimestamp),
            ),
        ];
        let mut r = Router::default();
        for (name, t, want) in cases {
            match (r.on_tick(t, NOW), want) {
                (Routed::Clean(t), None) => assert_eq!(t.ts_route_ns, NOW, "{name}"),
                (Routed::Reject(_, rej), Some(w)) => {
                    assert_eq!(rej.reason, w, "{name}");
                    assert!(!rej.detail.is_empty(), "{name}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn reason_codes_are_distinct_snake_case() {
        let codes: std::collections::HashSet<_> =
            RejectReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), RejectReason::ALL.len());
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        );
    }
}
