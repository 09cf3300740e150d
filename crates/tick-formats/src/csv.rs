//! Tick files in CSV: MetaTrader 5's tick export (tab-separated `<DATE> <TIME> <BID> <ASK>
//! <LAST> <VOLUME> <FLAGS>`, broker server time, an empty bid or ask meaning "unchanged") and a
//! plain `timestamp,bid,ask[,bid_size,ask_size]` format (RFC 3339 or epoch s/ms/µs/ns). A bad
//! line is a reject with its line number and reason; the rest of the file still flows.

use anyhow::Context;
use std::path::PathBuf;
use tick_core::{KeyOrdinals, Price, Tick, clock, idempotency_key};

/// Which CSV dialect a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CsvFormat {
    /// MetaTrader 5 "Export ticks" (tab-separated, with a `<DATE>` header).
    Mt5,
    /// `timestamp,bid,ask[,bid_size,ask_size]`.
    Plain,
}

/// The longest CSV line read, in bytes (a tick line is under 200): a longer one is a rejected
/// line (by the CSV source and `replayer import`).
pub const MAX_CSV_LINE: usize = 64 * 1024;

/// Parses one file's lines into ticks of `symbol`, carrying MT5's "unchanged" bid/ask.
pub struct CsvParser {
    format: CsvFormat,
    symbol: String,
    source: String,
    utc_offset_ns: i64,
    last_bid: Option<Price>,
    last_ask: Option<Price>,
    ordinals: KeyOrdinals,
}

fn epoch_ns(text: &str) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let v: i64 = text
            .parse()
            .map_err(|_| format!("timestamp {text:?} out of range"))?;
        let factor = match text.len() {
            1..=10 => 1_000_000_000,
            11..=13 => 1_000_000,
            14..=16 => 1_000,
            _ => 1,
        };
        return v
            .checked_mul(factor)
            .ok_or_else(|| format!("timestamp {text:?} out of range"));
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| format!("timestamp {text:?}: {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .map_err(|_| format!("timestamp {text:?} before 1970"))
}

/// `2024.01.02` + `10:00:00.123` -> ns, as if UTC.
fn mt5_time_ns(date: &str, time: &str) -> Result<i64, String> {
    let iso = format!("{}T{}Z", date.replace('.', "-"), time);
    epoch_ns(&iso)
}

fn price(text: &str, what: &str) -> Result<Price, String> {
    text.trim()
        .parse::<Price>()
        .map_err(|e| format!("{what}: {e}"))
}

impl CsvParser {
    /// Returns a parser for ticks of `symbol`; `utc_offset_ns` is what to subtract from the
    /// file's times to get UTC (MT5 exports the broker's server time).
    pub fn new(format: CsvFormat, symbol: &str, source: &str, utc_offset_ns: i64) -> Self {
        Self {
            format,
            symbol: symbol.to_string(),
            source: source.to_string(),
            utc_offset_ns,
            last_bid: None,
            last_ask: None,
            ordinals: KeyOrdinals::default(),
        }
    }

    /// Returns the symbol of the ticks this parser makes.
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    /// Returns what this parser subtracts from the file's times to get UTC, in ns.
    pub fn utc_offset_ns(&self) -> i64 {
        self.utc_offset_ns
    }

    /// Parses one line; `Ok(None)` for headers and blank lines.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<Tick>, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() || line.starts_with('<') || line.starts_with("timestamp") {
            return Ok(None);
        }
        let (ts, bid, ask, bid_size, ask_size, last, volume, flags) = match self.format {
            CsvFormat::Mt5 => {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 4 {
                    return Err(format!(
                        "expected at least 4 tab-separated fields, got {}",
                        f.len()
                    ));
                }
                let ts = mt5_time_ns(f[0].trim(), f[1].trim())?;
                let bid = match f[2].trim() {
                    "" => self
                        .last_bid
                        .ok_or("bid is empty and no earlier bid to carry")?,
                    b => price(b, "bid")?,
                };
                let ask = match f[3].trim() {
                    "" => self
                        .last_ask
                        .ok_or("ask is empty and no earlier ask to carry")?,
                    a => price(a, "ask")?,
                };
                let last = match f.get(4).map(|s| s.trim()) {
                    None | Some("") => None,
                    Some(l) => Some(price(l, "last")?),
                };
                let volume = match f.get(5).map(|s| s.trim()) {
                    None | Some("") => 0.0,
                    Some(v) => v
                        .parse::<f64>()
                        .map_err(|_| format!("volume {v:?} is not a number"))?,
                };
                let flags = match f.get(6).map(|s| s.trim()) {
                    None | Some("") => 0,
                    Some(v) => v
                        .parse::<u32>()
                        .map_err(|_| format!("flags {v:?} is not a whole number"))?,
                };
                (ts, bid, ask, 0.0, 0.0, last, volume, flags)
            }
            CsvFormat::Plain => {
                let f: Vec<&str> = line.split(',').map(str::trim).collect();
                if !(f.len() == 3 || f.len() == 5) {
                    return Err(format!(
                        "expected timestamp,bid,ask[,bid_size,ask_size], got {} fields",
                        f.len()
                    ));
                }
                let size = |i: usize| -> Result<f64, String> {
                    f.get(i).map_or(Ok(0.0), |s| {
                        s.parse::<f64>()
                            .map_err(|_| format!("size {s:?} is not a number"))
                    })
                };
                (
                    epoch_ns(f[0])?,
                    price(f[1], "bid")?,
                    price(f[2], "ask")?,
                    size(3)?,
                    size(4)?,
                    None,
                    0.0,
                    0,
                )
            }
        };
        self.last_bid = Some(bid);
        self.last_ask = Some(ask);
        // One scale for the whole quote: the finer of the two, rescaled without loss.
        let scale = bid.scale.max(ask.scale).max(last.map_or(0, |l| l.scale));
        let fit = |p: Price| {
            p.rescale(scale)
                .map(|p| p.mantissa)
                .ok_or("price out of range")
        };
        let ts_event = ts
            .checked_sub(self.utc_offset_ns)
            .ok_or("timestamp out of range")?;
        let ordinal = self.ordinals.next(&self.symbol, ts_event);
        Ok(Some(Tick {
            symbol: self.symbol.clone(),
            source: self.source.clone(),
            ts_event_ns: ts_event,
            ts_recv_ns: clock::now_ns(),
            scale,
            bid: fit(bid)?,
            ask: fit(ask)?,
            last: last.map(fit).transpose()?,
            bid_size,
            ask_size,
            volume,
            flags,
            key: idempotency_key(&self.source, &self.symbol, ts_event, ordinal),
            route: Default::default(),
            // A file is history, not a live quote: exempt from the router's staleness check.
            replay: true,
        }))
    }
}

/// Options of a CSV tick file (`--source csv`, and `replayer import csv`).
#[derive(Debug, Clone, clap::Args)]
pub struct CsvArgs {
    /// CSV: the file.
    #[arg(long, env = "TICKFLOW_CSV_FILE")]
    pub csv_file: Option<PathBuf>,
    /// CSV: its dialect.
    #[arg(long, env = "TICKFLOW_CSV_FORMAT", value_enum, default_value = "plain")]
    pub csv_format: CsvFormat,
    /// CSV: the symbol of its ticks (canonicalised: `eur/usd` -> EURUSD).
    #[arg(long, env = "TICKFLOW_CSV_SYMBOL")]
    pub csv_symbol: Option<String>,
    /// CSV: hours to subtract from the file's times to get UTC (MT5 exports server time).
    #[arg(
        long,
        env = "TICKFLOW_CSV_UTC_OFFSET_HOURS",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub csv_utc_offset_hours: f64,
}

impl CsvArgs {
    /// Returns the file and a parser for it, `source` naming the ticks' origin.
    pub fn parser(&self, source: &str) -> anyhow::Result<(PathBuf, CsvParser)> {
        let file = self.csv_file.clone().context("--csv-file is required")?;
        let symbol = self
            .csv_symbol
            .as_deref()
            .map(tick_core::instrument::canonical)
            .filter(|s| !s.is_empty())
            .context("--csv-symbol is required")?;
        let parser = CsvParser::new(
            self.csv_format,
            &symbol,
            source,
            (self.csv_utc_offset_hours * 3.6e12) as i64,
        );
        Ok((file, parser))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mt5_exports_with_unchanged_sides_and_server_time() {
        let mut p = CsvParser::new(CsvFormat::Mt5, "EURUSD", "mt5-csv", 2 * 3_600_000_000_000);
        let lines = [
            "<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>",
            "2024.01.02\t00:00:00.123\t1.10412\t1.10420\t\t\t6",
            "2024.01.02\t00:00:00.456\t\t1.10421\t\t\t4",
            "2024.01.02\t00:00:00.456\t1.10413\t\t\t\t2",
        ];
        let ticks: Vec<Tick> = lines
            .iter()
            .filter_map(|l| p.parse_line(l).unwrap())
            .collect();
        assert_eq!(ticks.len(), 3);
        // 2024-01-02T00:00:00.123 server time at UTC+2 is 2024-01-01T22:00:00.123Z.
        assert_eq!(ticks[0].ts_event_ns, 1_704_146_400_123_000_000);
        assert_eq!(
            (ticks[1].bid, ticks[1].ask),
            (110412, 110421),
            "bid carried"
        );
        assert_eq!(
            (ticks[2].bid, ticks[2].ask),
            (110413, 110421),
            "ask carried"
        );
        assert_eq!(ticks[0].flags, 6);
        assert_ne!(
            ticks[1].key, ticks[2].key,
            "same millisecond, distinct keys"
        );
    }

    #[test]
    fn parses_plain_csv_and_unifies_scales() {
        let mut p = CsvParser::new(CsvFormat::Plain, "USDJPY", "file", 0);
        let t = p
            .parse_line("2024-01-02T10:00:00.5Z,149.5,149.512,1.5,2")
            .unwrap()
            .unwrap();
        assert_eq!((t.bid, t.ask, t.scale), (149500, 149512, 3));
        assert_eq!(t.ts_event_ns, 1_704_189_600_500_000_000);
        assert_eq!((t.bid_size, t.ask_size), (1.5, 2.0));
        let ms = p.parse_line("1704189600500,149.5,149.51").unwrap().unwrap();
        assert_eq!(ms.ts_event_ns, t.ts_event_ns);
        assert!(p.parse_line("timestamp,bid,ask").unwrap().is_none());
    }

    #[test]
    fn malformed_lines_say_why() {
        let mut p = CsvParser::new(CsvFormat::Plain, "X", "file", 0);
        for (line, why) in [
            ("2024-01-02T10:00:00Z,abc,1", "bid"),
            ("2024-01-02T10:00:00Z,1", "fields"),
            ("yesterday,1,2", "timestamp"),
            ("2024-01-02T10:00:00Z,1,2,x,1", "size"),
        ] {
            let e = p.parse_line(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
        let mut m = CsvParser::new(CsvFormat::Mt5, "X", "mt5", 0);
        assert!(
            m.parse_line("2024.01.02\t00:00:00\t\t1.1")
                .unwrap_err()
                .contains("no earlier bid")
        );
    }
}
