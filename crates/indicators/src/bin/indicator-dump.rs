//! `indicator-dump`: runs tickflow's indicators over a CSV of inputs, or prints the bars the
//! crate's `BarBuilder` builds from Dukascopy history; the TA-Lib reference test
//! (`tests/python/test_indicators_talib.py`) drives it.
//!
//! ```text
//! indicator-dump [--indicators 'sma(20);macd(12,26,9);...'] < inputs.csv > outputs.jsonl
//! indicator-dump bars --dir ../shared/fixtures/dukascopy --symbol EURUSD \
//!     --from 2019-02-04T00:00:00Z --to 2019-02-06T00:00:00Z [--timeframe 1m] [--side bid]
//! ```
//!
//! Inputs: CSV lines `time,open,high,low,close,volume[,spread]` (time in ns since the epoch; a
//! first line that does not start with a digit is a header). Output: one JSON object per input,
//! `{"time":T,"sma(20)":1.1,"macd(12,26,9).signal":null,...}`, a value per indicator output, null
//! during warm-up; floats are printed in Rust's shortest round-trip form.
//!
//! `bars` prints the CSV of the closed bars (the last, still open bar included) in that same
//! input format: prices as `f64` of their decimals, volume = tick count (Dukascopy quotes carry
//! no traded volume), spread = ask − bid of the bar's closing tick.

use anyhow::{Context, bail};
use indicators::bars::{BarBuilder, PriceSide};
use indicators::indicator::{Indicator, IndicatorSpec, Input};
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use tick_core::{KeyOrdinals, Price};

/// Every indicator, with the parameters the reference test uses.
const DEFAULT_SET: &str = "sma(20);ema(12);ema(26);wma(10);rsi(14);macd(12,26,9);bbands(20,2);\
atr(14);stoch(14,3,3);adx(14);cci(20);stddev(20);zscore(50);vwap;vwap(30);spread(20)";

#[global_allocator]
static ALLOCATOR: tick_core::alloc::Allocator = tick_core::alloc::Allocator;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "{}",
            include_str!("indicator-dump.rs")
                .lines()
                .take(17)
                .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
                .collect::<Vec<_>>()
                .join("\n")
        );
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("bars") {
        let need = |name: &str| opt(name).with_context(|| format!("bars needs {name}"));
        let time = |name: &str| -> anyhow::Result<i64> {
            let t = humantime::parse_rfc3339(&need(name)?)
                .with_context(|| format!("{name} is not an RFC 3339 time"))?;
            Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64)
        };
        let side: PriceSide = opt("--side")
            .unwrap_or_else(|| "bid".into())
            .parse()
            .map_err(anyhow::Error::msg)?;
        let tf = opt("--timeframe")
            .unwrap_or_else(|| "1m".into())
            .parse()
            .map_err(anyhow::Error::msg)?;
        return bars(
            PathBuf::from(need("--dir")?),
            &need("--symbol")?,
            time("--from")?,
            time("--to")?,
            BarBuilder::new(tf, side),
        );
    }
    let specs: Vec<IndicatorSpec> = opt("--indicators")
        .unwrap_or_else(|| DEFAULT_SET.into())
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    run(&specs)
}

fn run(specs: &[IndicatorSpec]) -> anyhow::Result<()> {
    let mut inds: Vec<Box<dyn Indicator>> = specs.iter().map(IndicatorSpec::build).collect();
    let names: Vec<Vec<String>> = specs
        .iter()
        .map(|s| {
            (0..s.outputs().len())
                .map(|o| format!("{:?}", s.value_name(o)))
                .collect()
        })
        .collect();
    // Each indicator's outputs after the current input, `None` while warming up.
    let mut vals: Vec<Vec<Option<f64>>> = names.iter().map(|n| vec![None; n.len()]).collect();
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || (n == 0 && !line.starts_with(|c: char| c.is_ascii_digit())) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 6 {
            bail!(
                "line {}: expected time,open,high,low,close,volume[,spread]",
                n + 1
            );
        }
        let num = |i: usize| -> anyhow::Result<f64> {
            f[i].parse()
                .with_context(|| format!("line {}: field {} is not a number", n + 1, i + 1))
        };
        let x = Input {
            time_ns: f[0]
                .parse()
                .with_context(|| format!("line {}: time is not an integer", n + 1))?,
            open: num(1)?,
            high: num(2)?,
            low: num(3)?,
            close: num(4)?,
            volume: num(5)?,
            spread: if f.len() > 6 { num(6)? } else { 0.0 },
        };
        write!(out, "{{\"time\":{}", x.time_ns)?;
        for ((ind, names), vals) in inds.iter_mut().zip(&names).zip(&mut vals) {
            ind.update_into(&x, vals);
            for (v, name) in vals.iter().zip(names) {
                match v {
                    Some(v) if v.is_finite() => write!(out, ",{name}:{v:?}")?,
                    _ => write!(out, ",{name}:null")?,
                }
            }
        }
        writeln!(out, "}}")?;
    }
    out.flush()?;
    Ok(())
}

fn bars(
    dir: PathBuf,
    symbol: &str,
    from: i64,
    to: i64,
    mut builder: BarBuilder,
) -> anyhow::Result<()> {
    const HOUR: i64 = 3_600_000_000_000;
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "time,open,high,low,close,volume,spread")?;
    let mut write_bar = |b: &tick_core::pb::Bar, spread: f64| -> std::io::Result<()> {
        let p = |m: i64| Price::new(m, b.price_scale as u8).to_f64();
        writeln!(
            out,
            "{},{:?},{:?},{:?},{:?},{},{:?}",
            b.open_time_ns,
            p(b.open),
            p(b.high),
            p(b.low),
            p(b.close),
            b.tick_count,
            spread
        )
    };
    let mut ordinals = KeyOrdinals::default();
    let mut last_spread = 0.0;
    let mut hour = from - from.rem_euclid(HOUR);
    while hour < to {
        let recs = tick_formats::dukascopy::read_hour(&dir, symbol, hour)?;
        let ticks = tick_formats::dukascopy::to_ticks(symbol, hour, &recs, 0, &mut ordinals)?;
        for t in ticks.iter().filter(|t| (from..to).contains(&t.ts_event_ns)) {
            if let Some(bar) = builder.on_tick(t) {
                write_bar(&bar, last_spread)?;
            }
            last_spread = t.ask_price().to_f64() - t.bid_price().to_f64();
        }
        hour += HOUR;
    }
    if let Some(bar) = builder.take_open() {
        write_bar(&bar, last_spread)?;
    }
    out.flush()?;
    Ok(())
}
