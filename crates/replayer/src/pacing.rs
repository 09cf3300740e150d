//! Replay pacing, pure: when, relative to the start of a replay, each tick is due so that the
//! original spacing is kept, scaled by the replay speed.

use std::str::FromStr;
use std::time::Duration;

/// How fast history is played back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the pipeline takes it.
    Max,
    /// Original spacing divided by this factor (1.0 = real time).
    Factor(f64),
}

impl FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let f: f64 = s
            .trim_end_matches(['x', 'X'])
            .parse()
            .map_err(|_| format!("speed {s:?} is neither `max` nor a factor like `10x`"))?;
        if !(f.is_finite() && f > 0.0) {
            return Err(format!("speed {s:?} must be positive"));
        }
        Ok(Speed::Factor(f))
    }
}

/// Maps event times to delays from the start of the replay.
#[derive(Debug, Clone)]
pub struct Pacer {
    speed: Speed,
    first_event_ns: Option<i64>,
}

impl Pacer {
    /// Returns a pacer for `speed`.
    pub fn new(speed: Speed) -> Self {
        Self {
            speed,
            first_event_ns: None,
        }
    }

    /// Returns how long after the replay's start a tick with this event time is due; `None`
    /// means at once.
    pub fn due(&mut self, ts_event_ns: i64) -> Option<Duration> {
        let first = *self.first_event_ns.get_or_insert(ts_event_ns);
        match self.speed {
            Speed::Max => None,
            Speed::Factor(f) => {
                let gap = (ts_event_ns - first).max(0) as f64 / f;
                Some(Duration::from_nanos(gap as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse() {
        assert_eq!("max".parse::<Speed>().unwrap(), Speed::Max);
        assert_eq!("10x".parse::<Speed>().unwrap(), Speed::Factor(10.0));
        assert_eq!("1".parse::<Speed>().unwrap(), Speed::Factor(1.0));
        for bad in ["0x", "-2x", "fast", "nanx"] {
            assert!(bad.parse::<Speed>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_spacing_scaled_by_speed() {
        let mut p = Pacer::new(Speed::Factor(10.0));
        assert_eq!(p.due(5_000_000_000), Some(Duration::ZERO));
        assert_eq!(p.due(6_000_000_000), Some(Duration::from_millis(100)));
        assert_eq!(p.due(15_000_000_000), Some(Duration::from_secs(1)));
        let mut m = Pacer::new(Speed::Max);
        assert_eq!(m.due(1), None);
    }
}
