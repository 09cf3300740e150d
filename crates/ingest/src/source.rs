//! The source boundary: anything that yields canonical ticks (the simulator, files, broker
//! feeds). A source is one module that implements [`TickSource`], owns its command-line options
//! and builds itself from them with [`BuildSource`]; one line of [`register_sources!`] in
//! `lib.rs` makes it selectable with `--source` in `ingest`, `tickflow run` and everywhere else
//! that flattens [`SourceArgs`](crate::SourceArgs).

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tick_core::Tick;
use tick_core::shutdown::CancellationToken;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's input could not be read or parsed; the cause says where and why.
    #[error("source input failed")]
    Input(#[source] tick_core::error::Cause),
}

/// Input a source could not turn into a tick: it goes to `ticks.dlq` with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Reason code, e.g. `malformed_line`: one of a fixed set (it is a metric label).
    pub reason: &'static str,
    /// What was wrong, with where (file and line, peer).
    pub detail: String,
    /// The input exactly as received (the dead letter keeps a bounded prefix of it).
    pub payload: Vec<u8>,
}

impl Rejected {
    /// Returns the reject of a line the framing refused; `at` says where it was (file and
    /// line, peer).
    pub fn line(at: impl std::fmt::Display, refusal: tick_formats::lines::Refusal) -> Self {
        Self {
            reason: refusal.reason,
            detail: format!("{at}: {}", refusal.why),
            payload: refusal.bytes,
        }
    }
}

/// Input a source read and deliberately left out, e.g. a price an OANDA reconnect repeats:
/// counted by reason and logged, never published.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Reason code, e.g. `not_newer`: one of a fixed set (it is a metric label).
    pub reason: &'static str,
    /// What was skipped and why.
    pub detail: String,
}

/// A producer of canonical ticks, already stamped with `ts_recv_ns` and keyed.
#[async_trait]
pub trait TickSource: Send {
    /// Returns the source name used in ticks and metrics.
    fn name(&self) -> &str;

    /// Appends the next ticks to `out`, waiting for them if needed. Returns `false` when the
    /// source is exhausted (a file read to its end); a live source never is.
    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError>;

    /// Returns and forgets the inputs rejected since the last call.
    fn take_rejects(&mut self) -> Vec<Rejected> {
        Vec::new()
    }

    /// Returns and forgets the inputs skipped since the last call.
    fn take_skipped(&mut self) -> Vec<Skipped> {
        Vec::new()
    }
}

/// How a source learns which of its ticks are durable: the number of its ticks, counted in the
/// order [`TickSource::next_batch`] produced them, that are safe without a gap. In distributed
/// mode that is "confirmed by Kafka or written to the local spool"; in embedded mode "committed
/// to SQLite". A source that can acknowledge to its peer (MT5) acknowledges only up to it.
#[derive(Debug, Clone, Default)]
pub struct Durability(Arc<AtomicU64>);

impl Durability {
    /// Returns how many of the source's ticks are durable.
    pub fn durable(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Records that the first `n` ticks are durable (the ingest loop calls it).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Release);
    }
}

/// Options every source shares.
#[derive(Debug, Clone, clap::Args)]
pub struct IntakeArgs {
    /// Symbols, comma-separated: those to simulate (default: the first --symbol-count known
    /// symbols), or those to read from Dukascopy history.
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Stop intake after this long (e.g. `10s`, `5m`); default: until shutdown or the end of
    /// the input. The simulator then sends exactly rate x duration ticks on its schedule.
    #[arg(long, env = "TICKFLOW_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// History sources (Dukascopy, CSV): start of the range (RFC 3339).
    #[arg(long, env = "TICKFLOW_FROM", value_parser = tick_core::clock::parse_rfc3339_ns)]
    pub from: Option<i64>,
    /// History sources: end of the range (RFC 3339, exclusive).
    #[arg(long, env = "TICKFLOW_TO", value_parser = tick_core::clock::parse_rfc3339_ns)]
    pub to: Option<i64>,
    /// History sources: playback speed as a multiple of real time (default: as fast as the
    /// pipeline takes it).
    #[arg(long, env = "TICKFLOW_SPEED", value_parser = positive_speed)]
    pub speed: Option<f64>,
}

/// Parses `--speed`: a positive multiple of real time.
fn positive_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a positive multiple of real time (e.g. 1, 60, 0.5)"
        )),
    }
}

impl IntakeArgs {
    /// Returns `--symbols` in canonical spelling (trimmed, upper case).
    pub fn symbols(&self) -> Vec<String> {
        self.symbols
            .iter()
            .map(|s| s.trim().to_uppercase())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// What a source is built with: the shared options, the process's shutdown and the durability
/// handle its acknowledgements follow.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Options every source shares.
    pub intake: IntakeArgs,
    /// Fires when the process stops: a source's background tasks end with it.
    pub shutdown: CancellationToken,
    /// Which of the source's ticks are durable.
    pub durable: Durability,
}

/// The options of one source, which build it.
#[async_trait]
pub trait BuildSource {
    /// Returns the source these options describe, or a clear error naming the missing or
    /// invalid option.
    async fn build(&self, cx: &SourceContext) -> anyhow::Result<Box<dyn TickSource>>;

    /// Returns how long after the start intake stops by itself for `--duration`: the duration
    /// itself, unless the source ends on its own schedule (the simulator) and only needs a
    /// backstop.
    fn intake_deadline(&self, duration: Duration) -> Duration {
        duration
    }
}

/// Registers the sources: one line each, `module: Variant => OptionsType`, with a doc comment
/// that becomes the `--source` value's help. It declares each source's module (`src/<module>.rs`)
/// and generates [`SourceKind`](crate::SourceKind) and [`SourceArgs`](crate::SourceArgs), the
/// options every binary that reads a source flattens.
#[macro_export]
macro_rules! register_sources {
    ($( $(#[$doc:meta])* $field:ident : $variant:ident => $args:ident ),+ $(,)?) => {
        $( pub mod $field; )+

        /// Which source to read (`--source`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum SourceKind {
            $( $(#[$doc])* $variant, )+
        }

        /// The source options every binary that reads a source takes: `--source`, the shared
        /// options and each registered source's own.
        #[derive(Debug, Clone, clap::Args)]
        pub struct SourceArgs {
            /// The source to read.
            #[arg(long, env = "TICKFLOW_SOURCE", value_enum, default_value = "sim")]
            pub source: SourceKind,
            /// Options every source shares.
            #[command(flatten)]
            pub intake: $crate::source::IntakeArgs,
            $(
                #[allow(missing_docs)]
                #[command(flatten)]
                pub $field: $field::$args,
            )+
        }

        impl SourceArgs {
            fn chosen(&self) -> &(dyn $crate::source::BuildSource + Sync) {
                match self.source {
                    $( SourceKind::$variant => &self.$field, )+
                }
            }

            /// Builds the chosen source. `durable` is the handle its acknowledgements follow.
            pub async fn build(
                &self,
                shutdown: &tick_core::shutdown::CancellationToken,
                durable: $crate::source::Durability,
            ) -> anyhow::Result<Box<dyn $crate::source::TickSource>> {
                let cx = $crate::source::SourceContext {
                    intake: self.intake.clone(),
                    shutdown: shutdown.clone(),
                    durable,
                };
                self.chosen().build(&cx).await
            }

            /// Returns a token that trips when `parent` does or when `--duration` has passed
            /// (for the simulator, a backstop: it ends by itself after rate x duration ticks).
            pub fn intake_token(
                &self,
                parent: &tick_core::shutdown::CancellationToken,
            ) -> tick_core::shutdown::CancellationToken {
                let intake = parent.child_token();
                if let Some(d) = self.intake.duration {
                    let deadline = self.chosen().intake_deadline(d);
                    let t = intake.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(deadline).await;
                        t.cancel();
                    });
                }
                intake
            }
        }
    };
}

/// Plays a history source (one whose ticks carry past event times) at `speed` times real time:
/// each tick is released when as much time, divided by `speed`, has passed since the first
/// tick as separates their event times, and stamped with its release time as `ts_recv_ns`.
pub struct Paced<S> {
    inner: S,
    speed: f64,
    started: Option<(tokio::time::Instant, i64)>,
    pending: std::collections::VecDeque<Tick>,
    exhausted: bool,
}

impl<S: TickSource> Paced<S> {
    /// Wraps `inner`; `speed` is a multiple of real time (`1.0` plays as recorded).
    pub fn new(inner: S, speed: f64) -> Self {
        Self {
            inner,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            started: None,
            pending: Default::default(),
            exhausted: false,
        }
    }
}

#[async_trait]
impl<S: TickSource> TickSource for Paced<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError> {
        if self.pending.is_empty() {
            if self.exhausted {
                return Ok(false);
            }
            let mut read = Vec::new();
            self.exhausted = !self.inner.next_batch(&mut read).await?;
            self.pending.extend(read);
            if self.pending.is_empty() {
                return Ok(!self.exhausted);
            }
        }
        let first = self.pending.front().map_or(0, |t| t.ts_event_ns);
        let (start, origin) = *self
            .started
            .get_or_insert((tokio::time::Instant::now(), first));
        let speed = self.speed;
        let due = |t: &Tick| {
            start + Duration::from_nanos(((t.ts_event_ns - origin).max(0) as f64 / speed) as u64)
        };
        if let Some(t) = self.pending.front() {
            tokio::time::sleep_until(due(t)).await;
        }
        let now = tokio::time::Instant::now();
        let wall = tick_core::clock::now_ns();
        while let Some(t) = self.pending.front() {
            if due(t) > now {
                break;
            }
            let mut t = self.pending.pop_front().expect("front exists");
            t.ts_recv_ns = wall;
            out.push(t);
        }
        Ok(true)
    }

    fn take_rejects(&mut self) -> Vec<Rejected> {
        self.inner.take_rejects()
    }

    fn take_skipped(&mut self) -> Vec<Skipped> {
        self.inner.take_skipped()
    }
}
