//! Dukascopy history: `.bi5` hour files (an LZMA "alone" stream of 20-byte big-endian records
//! `ms since the hour, ask points, bid points, ask volume, bid volume`), laid out as
//! `SYMBOL/YYYY/MM/DD/HHh_ticks.bi5` with a zero-based month. Points become fixed-point prices
//! with the instrument's decimal places, exactly: no float ever touches a price.

use anyhow::Context;
use std::path::{Path, PathBuf};
use tick_core::{KeyOrdinals, Tick, idempotency_key};

/// One hour in ns.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// Size of one decompressed record.
pub const RECORD_LEN: usize = 20;

/// One record as stored by Dukascopy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawRecord {
    /// Milliseconds since the start of the hour.
    pub ms: u32,
    /// Ask in points (price times the instrument's point factor).
    pub ask: i32,
    /// Bid in points.
    pub bid: i32,
    /// Ask volume, millions of units.
    pub ask_volume: f32,
    /// Bid volume, millions of units.
    pub bid_volume: f32,
}

impl DukascopyError {
    /// Whether the file itself is damaged (its bytes are not a valid hour), as opposed to not
    /// readable or an instrument we do not know: a damaged file is one bad input, the rest of
    /// the range can still be read.
    pub fn is_damaged_file(&self) -> bool {
        matches!(
            self,
            Self::Lzma { .. } | Self::Truncated { .. } | Self::BadOffset { .. }
        )
    }
}

/// Why a Dukascopy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DukascopyError {
    /// The LZMA stream is damaged.
    #[error("{file}: not a valid LZMA stream: {reason}")]
    Lzma {
        /// The file.
        file: String,
        /// The decoder's message.
        reason: String,
    },
    /// The decompressed length is not a whole number of records.
    #[error("{file}: truncated: {len} bytes is not a multiple of {RECORD_LEN}")]
    Truncated {
        /// The file.
        file: String,
        /// Decompressed length.
        len: usize,
    },
    /// A record's offset is outside the hour.
    #[error("{file}: record {index} is {ms} ms into the hour")]
    BadOffset {
        /// The file.
        file: String,
        /// Record number.
        index: usize,
        /// The offending offset.
        ms: u32,
    },
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Io {
        /// The file.
        file: String,
        /// What failed.
        reason: String,
    },
    /// The instrument has no known point factor.
    #[error("no Dukascopy point factor for {0}; add it to the table")]
    UnknownInstrument(String),
}

/// Decimal places of Dukascopy's points per instrument (point factor 10^places). It differs per
/// instrument: FX 5, JPY crosses 3, metals 3, indices 3, crypto 1.
pub const POINT_SCALES: &[(&str, u8)] = &[
    // FX majors and crosses.
    ("EURUSD", 5),
    ("GBPUSD", 5),
    ("AUDUSD", 5),
    ("NZDUSD", 5),
    ("USDCAD", 5),
    ("USDCHF", 5),
    ("EURGBP", 5),
    ("EURCHF", 5),
    ("EURAUD", 5),
    ("EURCAD", 5),
    ("EURNZD", 5),
    ("GBPCHF", 5),
    ("GBPAUD", 5),
    ("GBPCAD", 5),
    ("GBPNZD", 5),
    ("AUDCAD", 5),
    ("AUDCHF", 5),
    ("AUDNZD", 5),
    ("NZDCAD", 5),
    ("NZDCHF", 5),
    ("CADCHF", 5),
    ("USDSEK", 5),
    ("USDNOK", 5),
    ("USDSGD", 5),
    ("USDMXN", 5),
    ("USDZAR", 5),
    ("USDTRY", 5),
    ("USDPLN", 5),
    // JPY pairs.
    ("USDJPY", 3),
    ("EURJPY", 3),
    ("GBPJPY", 3),
    ("AUDJPY", 3),
    ("NZDJPY", 3),
    ("CADJPY", 3),
    ("CHFJPY", 3),
    // Metals.
    ("XAUUSD", 3),
    ("XAGUSD", 3),
    // Indices (Dukascopy names).
    ("USA500IDXUSD", 3),
    ("USATECHIDXUSD", 3),
    ("USA30IDXUSD", 3),
    ("DEUIDXEUR", 3),
    ("GBRIDXGBP", 3),
    ("JPNIDXJPY", 3),
    ("FRAIDXEUR", 3),
    // Crypto.
    ("BTCUSD", 1),
    ("ETHUSD", 1),
];

/// Returns the decimal places of `symbol`'s Dukascopy points.
pub fn point_scale(symbol: &str) -> Option<u8> {
    POINT_SCALES
        .iter()
        .find(|(s, _)| *s == symbol)
        .map(|(_, p)| *p)
}

/// Decodes the contents of a `.bi5` file. An empty file is an empty hour.
pub fn decode_bi5(file: &str, bytes: &[u8]) -> Result<Vec<RawRecord>, DukascopyError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut raw = Vec::with_capacity(bytes.len() * 4);
    lzma_rs::lzma_decompress(&mut std::io::Cursor::new(bytes), &mut raw).map_err(|e| {
        DukascopyError::Lzma {
            file: file.to_string(),
            reason: e.to_string(),
        }
    })?;
    if raw.len() % RECORD_LEN != 0 {
        return Err(DukascopyError::Truncated {
            file: file.to_string(),
            len: raw.len(),
        });
    }
    raw.chunks_exact(RECORD_LEN)
        .enumerate()
        .map(|(index, r)| {
            let word = |i: usize| [r[i], r[i + 1], r[i + 2], r[i + 3]];
            let rec = RawRecord {
                ms: u32::from_be_bytes(word(0)),
                ask: i32::from_be_bytes(word(4)),
                bid: i32::from_be_bytes(word(8)),
                ask_volume: f32::from_be_bytes(word(12)),
                bid_volume: f32::from_be_bytes(word(16)),
            };
            if rec.ms >= 3_600_000 {
                return Err(DukascopyError::BadOffset {
                    file: file.to_string(),
                    index,
                    ms: rec.ms,
                });
            }
            Ok(rec)
        })
        .collect()
}

/// Returns the path of an hour file under `root`: `SYMBOL/YYYY/MM/DD/HHh_ticks.bi5`, with the
/// month counted from 0 as Dukascopy does. `hour_start_ns` is the UTC start of the hour.
pub fn hour_path(root: &Path, symbol: &str, hour_start_ns: i64) -> PathBuf {
    let (y, m, d, h) = civil(hour_start_ns);
    root.join(symbol)
        .join(format!("{y:04}"))
        .join(format!("{:02}", m - 1))
        .join(format!("{d:02}"))
        .join(format!("{h:02}h_ticks.bi5"))
}

/// Returns (year, month 1-12, day, hour) of a UTC time in ns (Howard Hinnant's civil_from_days).
fn civil(ns: i64) -> (i64, i64, i64, i64) {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, hour)
}

/// Turns the records of one hour into canonical ticks (source `dukascopy`), with the given
/// receipt time, keyed deterministically.
pub fn to_ticks(
    symbol: &str,
    hour_start_ns: i64,
    records: &[RawRecord],
    ts_recv_ns: i64,
    ordinals: &mut KeyOrdinals,
) -> Result<Vec<Tick>, DukascopyError> {
    let scale =
        point_scale(symbol).ok_or_else(|| DukascopyError::UnknownInstrument(symbol.to_string()))?;
    Ok(records
        .iter()
        .map(|r| {
            let ts = hour_start_ns + i64::from(r.ms) * 1_000_000;
            let ordinal = ordinals.next(symbol, ts);
            Tick {
                symbol: symbol.to_string(),
                source: "dukascopy".into(),
                ts_event_ns: ts,
                ts_recv_ns,
                scale,
                bid: i64::from(r.bid),
                ask: i64::from(r.ask),
                last: None,
                bid_size: f64::from(r.bid_volume),
                ask_size: f64::from(r.ask_volume),
                volume: 0.0,
                flags: 0,
                key: idempotency_key("dukascopy", symbol, ts, ordinal),
                route: Default::default(),
                // History, not a live quote: exempt from the router's staleness check.
                replay: true,
            }
        })
        .collect())
}

/// Reads the hour files of one symbol from a directory in Dukascopy's layout.
pub fn read_hour(
    root: &Path,
    symbol: &str,
    hour_start_ns: i64,
) -> Result<Vec<RawRecord>, DukascopyError> {
    let path = hour_path(root, symbol, hour_start_ns);
    let name = path.display().to_string();
    match std::fs::read(&path) {
        Ok(bytes) => decode_bi5(&name, &bytes),
        // A missing hour is an empty hour (Dukascopy answers 404 for those).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(DukascopyError::Io {
            file: name,
            reason: e.to_string(),
        }),
    }
}

/// Where hour files come from.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory in Dukascopy's layout.
    Dir(PathBuf),
    /// A base URL serving the same layout (Dukascopy's datafeed, or a mirror); 404 is an empty
    /// hour.
    Url(String),
}

impl Location {
    /// Returns the records of one hour of `symbol` (`hour_start_ns` is its UTC start): read
    /// from the directory or downloaded with `client`; a missing file or a 404 is an empty
    /// hour, a damaged one an error naming it.
    pub async fn hour(
        &self,
        client: &reqwest::Client,
        symbol: &str,
        hour_start_ns: i64,
    ) -> Result<Vec<RawRecord>, DukascopyError> {
        match self {
            Location::Dir(root) => read_hour(root, symbol, hour_start_ns),
            Location::Url(base) => {
                let rel = hour_path(Path::new(""), symbol, hour_start_ns);
                let url = format!("{}/{}", base.trim_end_matches('/'), rel.display());
                let io = |reason: String| DukascopyError::Io {
                    file: url.clone(),
                    reason,
                };
                let resp = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| io(e.to_string()))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(Vec::new());
                }
                if !resp.status().is_success() {
                    return Err(io(format!("HTTP {}", resp.status())));
                }
                let bytes = resp.bytes().await.map_err(|e| io(e.to_string()))?;
                decode_bi5(&url, &bytes)
            }
        }
    }
}

/// Where Dukascopy history is read from (`--source dukascopy`, and `replayer import dukascopy`).
#[derive(Debug, Clone, clap::Args)]
pub struct DukascopyArgs {
    /// Dukascopy: root directory holding SYMBOL/YYYY/MM/DD/HHh_ticks.bi5 (zero-based months).
    #[arg(long, env = "TICKFLOW_DUKASCOPY_DIR")]
    pub dukascopy_dir: Option<PathBuf>,
    /// Dukascopy: base URL of the same layout to download from instead of a directory.
    #[arg(long, env = "TICKFLOW_DUKASCOPY_URL", conflicts_with = "dukascopy_dir")]
    pub dukascopy_url: Option<String>,
}

impl DukascopyArgs {
    /// Returns where the hour files are, or an error when neither flag is given.
    pub fn location(&self) -> anyhow::Result<Location> {
        Ok(match (&self.dukascopy_dir, &self.dukascopy_url) {
            (Some(d), _) => Location::Dir(d.clone()),
            (None, Some(u)) => Location::Url(u.clone()),
            (None, None) => anyhow::bail!("--dukascopy-dir or --dukascopy-url is required"),
        })
    }
}

/// Checks that every symbol has a known Dukascopy point factor.
pub fn check_symbols(symbols: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(!symbols.is_empty(), "--symbols is required for dukascopy");
    for s in symbols {
        point_scale(s).with_context(|| format!("no Dukascopy point factor for {s}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = "../../../shared/fixtures/dukascopy";

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(FIXTURES)
                .join(rel),
        )
        .unwrap_or_else(|e| panic!("fixture {rel}: {e} (run from a checkout with ../shared)"))
    }

    fn json(rel: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(FIXTURES)
                .join("expected")
                .join(rel),
        )
        .unwrap()
    }

    /// Parses the numbers of a JSON array of arrays without a JSON dependency: the expected
    /// file is `{"rows": [[ms, ask, bid, ask_vol, bid_vol], ...]}`.
    fn rows(text: &str) -> Vec<Vec<f64>> {
        let body = &text[text.find("\"rows\"").unwrap()..];
        body.split('[')
            .skip(2)
            .map(|r| {
                r.split(']')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|n| n.trim().parse::<f64>().unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn decodes_every_eurusd_record_exactly() {
        let recs = decode_bi5("EURUSD 00h", &fixture("EURUSD/2019/01/04/00h_ticks.bi5")).unwrap();
        let want = rows(&json("EURUSD-2019-02-04T00-raw.json"));
        assert_eq!(recs.len(), 3733);
        assert_eq!(want.len(), 3733);
        for (i, (r, w)) in recs.iter().zip(&want).enumerate() {
            let got = [
                f64::from(r.ms),
                f64::from(r.ask),
                f64::from(r.bid),
                f64::from(r.ask_volume),
                f64::from(r.bid_volume),
            ];
            assert_eq!(got.as_slice(), w.as_slice(), "record {i}");
        }
    }

    #[test]
    fn btcusd_prices_match_the_reference_ticks() {
        let hour = 1_676_894_400_000_000_000; // 2023-02-20T12:00:00Z
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
        assert!(hour_path(&root, "BTCUSD", hour).ends_with("BTCUSD/2023/01/20/12h_ticks.bi5"));
        let recs = read_hour(&root, "BTCUSD", hour).unwrap();
        let ticks = to_ticks("BTCUSD", hour, &recs, 0, &mut KeyOrdinals::default()).unwrap();
        let text = json("BTCUSD-2023-02-20T12-ticks.json");
        let want: Vec<(i64, String, String)> = text
            .split('{')
            .skip(1)
            .map(|o| {
                let field = |name: &str| {
                    let s = &o[o.find(name).unwrap() + name.len() + 1..];
                    s.split([',', '}']).next().unwrap().trim().to_string()
                };
                (
                    field("\"timestamp\"").parse().unwrap(),
                    field("\"askPrice\""),
                    field("\"bidPrice\""),
                )
            })
            .collect();
        assert_eq!(ticks.len(), 8523);
        assert_eq!(want.len(), 8523);
        for (t, (ts_ms, ask, bid)) in ticks.iter().zip(&want) {
            assert_eq!(t.ts_event_ns, ts_ms * 1_000_000);
            // The reference prints prices as JSON numbers: compare as decimals.
            assert_eq!(
                t.ask_price().to_f64(),
                ask.parse::<f64>().unwrap(),
                "{}",
                t.key
            );
            assert_eq!(
                t.bid_price().to_f64(),
                bid.parse::<f64>().unwrap(),
                "{}",
                t.key
            );
            let p: tick_core::Price = bid.parse().unwrap();
            assert_eq!(p.rescale(1).unwrap(), t.bid_price(), "exact decimal");
        }
        let keys: std::collections::HashSet<_> = ticks.iter().map(|t| &t.key).collect();
        assert_eq!(keys.len(), ticks.len(), "keys are unique within the hour");
    }

    #[test]
    fn damaged_files_are_errors_that_name_the_file() {
        let good = fixture("EURUSD/2019/01/04/00h_ticks.bi5");
        let e = decode_bi5("x.bi5", &good[..good.len() / 2]).unwrap_err();
        assert!(e.to_string().starts_with("x.bi5:"), "{e}");
        let e = decode_bi5("junk.bi5", b"not lzma at all").unwrap_err();
        assert!(e.to_string().contains("junk.bi5"), "{e}");
        assert!(decode_bi5("empty.bi5", b"").unwrap().is_empty());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
        assert!(
            read_hour(&root, "EURUSD", 0).unwrap().is_empty(),
            "a missing hour is empty"
        );
    }

    #[test]
    fn civil_dates_and_zero_based_months() {
        assert_eq!(civil(0), (1970, 1, 1, 0));
        assert_eq!(civil(1_549_238_400_000_000_000), (2019, 2, 4, 0));
        assert_eq!(civil(1_709_210_000_000_000_000), (2024, 2, 29, 12));
        let p = hour_path(
            Path::new("/d"),
            "EURUSD",
            1_549_238_400_000_000_000 + 13 * HOUR_NS,
        );
        assert_eq!(p, Path::new("/d/EURUSD/2019/01/04/13h_ticks.bi5"));
    }
}
