//! Fixed-capacity ring buffers shared by the rolling indicators.

use std::collections::VecDeque;

/// The last `cap` values, in a ring (O(1) push).
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    buf: Vec<f64>,
    cap: usize,
    /// Index the next value is written to.
    next: usize,
    len: usize,
}

impl Ring {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: vec![0.0; cap.max(1)],
            cap: cap.max(1),
            next: 0,
            len: 0,
        }
    }

    /// Adds `x`; returns the value it replaced once the ring is full.
    pub(crate) fn push(&mut self, x: f64) -> Option<f64> {
        let old = (self.len == self.cap).then(|| self.buf[self.next]);
        self.buf[self.next] = x;
        self.next = (self.next + 1) % self.cap;
        self.len = (self.len + 1).min(self.cap);
        old
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.cap
    }

    /// The values in storage order (not time order), as TA-Lib's circular buffers sum them.
    pub(crate) fn raw(&self) -> &[f64] {
        &self.buf[..self.len]
    }

    /// The values from oldest to newest.
    pub(crate) fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        let start = if self.len == self.cap { self.next } else { 0 };
        (0..self.len).map(move |i| self.buf[(start + i) % self.cap])
    }
}

/// Rolling sums of `x − shift` and `(x − shift)²` over the last `period` values, re-added from
/// the ring once per period with the shift moved to the newest value: the mean and the
/// population variance stay exact to rounding however long the stream, and subtracting a
/// nearby shift avoids the cancellation of `E[x²] − E[x]²` on prices far from zero.
#[derive(Debug, Clone)]
pub(crate) struct RollingMoments {
    ring: Ring,
    period: usize,
    shift: f64,
    s1: f64,
    s2: f64,
    since_resum: usize,
    started: bool,
}

impl RollingMoments {
    pub(crate) fn new(period: usize) -> Self {
        Self {
            ring: Ring::new(period),
            period: period.max(1),
            shift: 0.0,
            s1: 0.0,
            s2: 0.0,
            since_resum: 0,
            started: false,
        }
    }

    /// Adds `x`; returns whether the window is full.
    pub(crate) fn push(&mut self, x: f64) -> bool {
        if !self.started {
            self.shift = x;
            self.started = true;
        }
        let d = x - self.shift;
        self.s1 += d;
        self.s2 += d * d;
        if let Some(old) = self.ring.push(x) {
            let o = old - self.shift;
            self.s1 -= o;
            self.s2 -= o * o;
        }
        self.since_resum += 1;
        if self.since_resum >= self.period {
            self.since_resum = 0;
            self.shift = x;
            let (mut s1, mut s2) = (0.0, 0.0);
            for v in self.ring.iter() {
                let d = v - x;
                s1 += d;
                s2 += d * d;
            }
            self.s1 = s1;
            self.s2 = s2;
        }
        self.ring.is_full()
    }

    /// Mean of the window.
    pub(crate) fn mean(&self) -> f64 {
        self.shift + self.s1 / self.period as f64
    }

    /// Population variance of the window (never negative).
    pub(crate) fn variance(&self) -> f64 {
        let n = self.period as f64;
        let m = self.s1 / n;
        (self.s2 / n - m * m).max(0.0)
    }
}

/// The maximum (or, with `Ordering::Less`, minimum) of the last `period` inputs: a monotonic
/// deque of (index, value), amortised O(1) per input.
#[derive(Debug, Clone)]
pub(crate) struct RollingExtreme {
    period: usize,
    max: bool,
    deque: VecDeque<(u64, f64)>,
    n: u64,
}

impl RollingExtreme {
    pub(crate) fn max(period: usize) -> Self {
        Self::new(period, true)
    }

    pub(crate) fn min(period: usize) -> Self {
        Self::new(period, false)
    }

    fn new(period: usize, max: bool) -> Self {
        Self {
            period: period.max(1),
            max,
            deque: VecDeque::with_capacity(period + 1),
            n: 0,
        }
    }

    /// Adds `x`; returns the extreme of the window (of what there is until it is full).
    pub(crate) fn push(&mut self, x: f64) -> f64 {
        let max = self.max;
        while let Some(&(_, v)) = self.deque.back() {
            if (max && v <= x) || (!max && v >= x) {
                self.deque.pop_back();
            } else {
                break;
            }
        }
        self.deque.push_back((self.n, x));
        self.n += 1;
        while let Some(&(i, _)) = self.deque.front() {
            if i + (self.period as u64) < self.n {
                self.deque.pop_front();
            } else {
                break;
            }
        }
        self.deque.front().map_or(x, |&(_, v)| v)
    }

    /// Whether `period` inputs were seen.
    pub(crate) fn is_full(&self) -> bool {
        self.n >= self.period as u64
    }
}
