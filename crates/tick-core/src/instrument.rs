//! Reference data for instruments: the canonical symbols tickflow knows, with the number of
//! decimal places their quotes carry and a typical price (used by the simulator).

/// Static facts about one instrument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instrument {
    /// Canonical symbol.
    pub symbol: &'static str,
    /// Decimal places of a quote (EURUSD 5, USDJPY 3, XAUUSD 3, ...).
    pub scale: u8,
    /// A typical price level.
    pub typical_price: f64,
    /// A typical spread in points (units of the last decimal place).
    pub typical_spread: i64,
}

const fn i(symbol: &'static str, scale: u8, typical_price: f64, spread: i64) -> Instrument {
    Instrument {
        symbol,
        scale,
        typical_price,
        typical_spread: spread,
    }
}

/// Instruments known out of the box, most traded first. The scale is the finest any common
/// source quotes (Dukascopy quotes gold to 3 places, many brokers BTC to 2), so every source's
/// quotes rescale to it without loss.
pub const INSTRUMENTS: &[Instrument] = &[
    i("EURUSD", 5, 1.08500, 8),
    i("GBPUSD", 5, 1.27000, 12),
    i("USDJPY", 3, 149.500, 10),
    i("AUDUSD", 5, 0.65500, 10),
    i("USDCAD", 5, 1.36000, 14),
    i("USDCHF", 5, 0.88000, 12),
    i("NZDUSD", 5, 0.60000, 14),
    i("EURGBP", 5, 0.85500, 12),
    i("EURJPY", 3, 162.000, 16),
    i("XAUUSD", 3, 2000.000, 300),
    i("GBPJPY", 3, 189.000, 25),
    i("EURCHF", 5, 0.95500, 16),
    i("AUDJPY", 3, 98.000, 18),
    i("XAGUSD", 3, 23.000, 25),
    i("BTCUSD", 2, 42000.00, 3000),
    i("ETHUSD", 2, 2200.00, 150),
];

/// Returns the canonical spelling of what a broker sent: broker suffixes (`.m`, `.pro`) and
/// separators (`/`, `_`, `-`, spaces) go, letters are upper-cased: `eur_usd.m` -> `EURUSD`.
/// Ingest keys `ticks.raw` by it, so every spelling of a symbol lands in one partition.
pub fn canonical(raw: &str) -> String {
    let base = raw.split('.').next().unwrap_or(raw);
    base.chars()
        .filter(|c| !matches!(c, '/' | '_' | '-' | ' '))
        .flat_map(char::to_uppercase)
        .collect()
}

/// Returns the instrument with this canonical symbol, if known.
pub fn lookup(symbol: &str) -> Option<&'static Instrument> {
    INSTRUMENTS.iter().find(|i| i.symbol == symbol)
}
