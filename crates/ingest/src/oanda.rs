//! The OANDA v20 pricing stream: `GET {base}/v3/accounts/{account}/pricing/stream` with a
//! Bearer token, answered by newline-delimited JSON `PRICE` and `HEARTBEAT` messages. Prices are
//! decimal strings and become fixed-point prices exactly; times are RFC 3339 with nanoseconds.
//! The connection is re-established with exponential backoff and jitter when it drops, when
//! nothing at all arrives for `silence`, or when heartbeats keep coming but prices stopped for
//! `price_stall` (a stream the broker stopped feeding). On reconnect OANDA repeats the current
//! price: prices not newer than the last one seen for an instrument are skipped (counted as
//! `not_newer`), so each price is delivered once. A line longer than `--oanda-max-line`, one that
//! is not UTF-8 or not an OANDA message is a reject (a dead letter with a bounded prefix of it);
//! the stream goes on.

use tick_core::error::Cause;
use tick_formats::lines::{Line, LineSplitter};
use crate::source::{BuildSource, Rejected, Skipped, SourceContext, SourceError, TickSource};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use tick_core::{KeyOrdinals, Price, Tick, clock, idempotency_key};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Options of the OANDA v20 pricing stream (`--source oanda`).
#[derive(Debug, Clone, clap::Args)]
pub struct OandaArgs {
    /// OANDA: streaming API base URL.
    #[arg(
        long,
        env = "TICKFLOW_OANDA_URL",
        default_value = "https://stream-fxpractice.oanda.com"
    )]
    pub oanda_url: String,
    /// OANDA: account id.
    #[arg(long, env = "TICKFLOW_OANDA_ACCOUNT", default_value = "")]
    pub oanda_account: String,
    /// OANDA: API token.
    #[arg(
        long,
        env = "TICKFLOW_OANDA_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub oanda_token: String,
    /// OANDA: instruments in OANDA's spelling, comma-separated (EUR_USD,USD_JPY).
    #[arg(
        long,
        env = "TICKFLOW_OANDA_INSTRUMENTS",
        value_delimiter = ',',
        default_value = "EUR_USD"
    )]
    pub oanda_instruments: Vec<String>,
    /// OANDA: reconnect when heartbeats continue but no price came for this long.
    #[arg(long, env = "TICKFLOW_OANDA_PRICE_STALL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub oanda_price_stall: Duration,
    /// OANDA: longest accepted line of the stream, in bytes (a price line is under 1 KiB).
    #[arg(long, env = "TICKFLOW_OANDA_MAX_LINE", default_value_t = 64 * 1024)]
    pub oanda_max_line: usize,
}

#[async_trait]
impl BuildSource for OandaArgs {
    async fn build(&self, _cx: &SourceContext) -> anyhow::Result<Box<dyn TickSource>> {
        anyhow::ensure!(
            !self.oanda_token.is_empty() && !self.oanda_account.is_empty(),
            "--oanda-token and --oanda-account are required"
        );
        Ok(Box::new(OandaSource::start(OandaConfig {
            base_url: self.oanda_url.clone(),
            account: self.oanda_account.clone(),
            token: self.oanda_token.clone(),
            instruments: self.oanda_instruments.clone(),
            silence: Duration::from_secs(10),
            price_stall: self.oanda_price_stall,
            max_backoff: Duration::from_secs(30),
            max_line: self.oanda_max_line,
        })?))
    }
}

/// Settings of the OANDA source.
#[derive(Debug, Clone)]
pub struct OandaConfig {
    /// API base, e.g. `https://stream-fxpractice.oanda.com` (a local server in tests).
    pub base_url: String,
    /// Account id.
    pub account: String,
    /// API token (sent as `Authorization: Bearer`).
    pub token: String,
    /// OANDA instrument names, e.g. `EUR_USD`.
    pub instruments: Vec<String>,
    /// Nothing received (not even a heartbeat) for this long: reconnect.
    pub silence: Duration,
    /// Heartbeats but no price for this long: reconnect.
    pub price_stall: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Longest accepted line, in bytes.
    pub max_line: usize,
}

#[derive(Deserialize)]
struct Bucket {
    price: String,
    #[serde(default)]
    liquidity: f64,
}

#[derive(Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    time: String,
    #[serde(default)]
    instrument: String,
    #[serde(default)]
    bids: Vec<Bucket>,
    #[serde(default)]
    asks: Vec<Bucket>,
}

/// Returns tickflow's symbol for an OANDA instrument: `EUR_USD` -> `EURUSD`.
pub fn symbol_of(instrument: &str) -> String {
    instrument.replace('_', "")
}

/// Parses one line of the stream: `Ok(Some(tick))` for a price, `Ok(None)` for a heartbeat.
pub fn parse_line(line: &str, ordinals: &mut KeyOrdinals) -> Result<Option<Tick>, String> {
    let m: Message =
        serde_json::from_str(line).map_err(|e| format!("not an OANDA message: {e}"))?;
    match m.kind.as_str() {
        "HEARTBEAT" => return Ok(None),
        "PRICE" => {}
        other => return Err(format!("unknown message type {other:?}")),
    }
    let t = humantime::parse_rfc3339(&m.time).map_err(|e| format!("time {:?}: {e}", m.time))?;
    let ts = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "time before 1970".to_string())?
        .as_nanos();
    let ts = i64::try_from(ts).map_err(|_| "time out of range".to_string())?;
    let (Some(bid), Some(ask)) = (m.bids.first(), m.asks.first()) else {
        return Err("price without a bid or an ask bucket".into());
    };
    let (b, a): (Price, Price) = (
        bid.price.parse().map_err(|e| format!("bid: {e}"))?,
        ask.price.parse().map_err(|e| format!("ask: {e}"))?,
    );
    let scale = b.scale.max(a.scale);
    let fit = |p: Price| {
        p.rescale(scale)
            .map(|p| p.mantissa)
            .ok_or("price out of range")
    };
    let symbol = symbol_of(&m.instrument);
    if symbol.is_empty() {
        return Err("price without an instrument".into());
    }
    let ordinal = ordinals.next(&symbol, ts);
    Ok(Some(Tick {
        key: idempotency_key("oanda", &symbol, ts, ordinal),
        symbol,
        source: "oanda".into(),
        ts_event_ns: ts,
        ts_recv_ns: clock::now_ns(),
        scale,
        bid: fit(b)?,
        ask: fit(a)?,
        last: None,
        bid_size: bid.liquidity,
        ask_size: ask.liquidity,
        volume: 0.0,
        flags: 0,
        route: Default::default(),
        replay: false,
    }))
}

enum Event {
    Tick(Tick),
    Reject(Rejected),
    Skip(Skipped),
}

/// The OANDA stream as a tick source; a background task keeps the connection alive.
pub struct OandaSource {
    rx: mpsc::Receiver<Event>,
    rejects: Vec<Rejected>,
    skipped: Vec<Skipped>,
}

impl OandaSource {
    /// Starts streaming; the task ends when the source is dropped.
    pub fn start(cfg: OandaConfig) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| SourceError::Input(Cause::new("http client", e)))?;
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(run(client, cfg, tx));
        Ok(Self {
            rx,
            rejects: Vec::new(),
            skipped: Vec::new(),
        })
    }
}

async fn run(client: reqwest::Client, cfg: OandaConfig, tx: mpsc::Sender<Event>) {
    let url = format!(
        "{}/v3/accounts/{}/pricing/stream?instruments={}",
        cfg.base_url.trim_end_matches('/'),
        cfg.account,
        cfg.instruments.join(",")
    );
    let mut last_ts: HashMap<String, i64> = HashMap::new();
    let mut backoff = tick_core::backoff::Backoff::new(Duration::from_millis(100), cfg.max_backoff);
    loop {
        let outcome = stream_once(&client, &url, &cfg, &tx, &mut last_ts).await;
        if tx.is_closed() {
            return;
        }
        metrics::counter!("tickflow_ingest_reconnects_total", "source" => "oanda").increment(1);
        match outcome {
            // The stream was up: start the backoff again from the bottom.
            Ok(reason) => {
                tracing::warn!(%reason, "oanda stream ended; reconnecting");
                backoff.reset();
            }
            Err(e) => tracing::warn!(error = %e, "oanda stream failed"),
        }
        let delay = backoff.next_delay();
        tracing::debug!(retry_in = ?delay, "oanda reconnect backoff");
        tokio::time::sleep(delay).await;
    }
}

/// Streams until the connection ends or a watchdog trips; `Ok` carries why it ended after
/// having been established.
async fn stream_once(
    client: &reqwest::Client,
    url: &str,
    cfg: &OandaConfig,
    tx: &mpsc::Sender<Event>,
    last_ts: &mut HashMap<String, i64>,
) -> Result<String, String> {
    let resp = client
        .get(url)
        .bearer_auth(&cfg.token)
        .send()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = resp.bytes_stream();
    let mut lines = LineSplitter::new(cfg.max_line);
    let mut ordinals = KeyOrdinals::default();
    let mut last_any = Instant::now();
    let mut last_price = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), body.next()).await;
        match next {
            Ok(Some(Ok(chunk))) => {
                last_any = Instant::now();
                lines.push(&chunk);
            }
            Ok(Some(Err(e))) => return Ok(format!("stream broke: {e}")),
            Ok(None) => return Ok("server closed the stream".into()),
            Err(_) => {}
        }
        while let Some(line) = lines.next_line() {
            let event = match line {
                Line::Refused(refusal) => Event::Reject(Rejected::line("oanda", refusal)),
                Line::Text(line) if line.trim().is_empty() => continue,
                Line::Text(line) => match parse_line(line.trim(), &mut ordinals) {
                    Ok(Some(t)) => {
                        last_price = Instant::now();
                        match last_ts.get(&t.symbol) {
                            Some(last) if t.ts_event_ns <= *last => Event::Skip(Skipped {
                                reason: "not_newer",
                                detail: format!(
                                    "oanda: {} price at {} ns repeats or precedes the last one ({last} ns)",
                                    t.symbol, t.ts_event_ns
                                ),
                            }),
                            _ => {
                                last_ts.insert(t.symbol.clone(), t.ts_event_ns);
                                Event::Tick(t)
                            }
                        }
                    }
                    Ok(None) => continue,
                    Err(reason) => Event::Reject(Rejected {
                        reason: "malformed_message",
                        detail: format!("oanda: {reason}"),
                        payload: line.into_bytes(),
                    }),
                },
            };
            if tx.send(event).await.is_err() {
                return Ok("source dropped".into());
            }
        }
        if last_any.elapsed() > cfg.silence {
            return Ok(format!("nothing received for {:?}", cfg.silence));
        }
        if last_price.elapsed() > cfg.price_stall {
            return Ok(format!(
                "heartbeats only, no price for {:?}",
                cfg.price_stall
            ));
        }
    }
}

#[async_trait]
impl TickSource for OandaSource {
    fn name(&self) -> &str {
        "oanda"
    }

    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError> {
        let Some(first) = self.rx.recv().await else {
            return Ok(false);
        };
        let mut next = Some(first);
        while let Some(e) = next.take() {
            match e {
                Event::Tick(t) => out.push(t),
                Event::Reject(r) => self.rejects.push(r),
                Event::Skip(s) => self.skipped.push(s),
            }
            if out.len() < 4096 {
                next = self.rx.try_recv().ok();
            }
        }
        Ok(true)
    }

    fn take_rejects(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejects)
    }

    fn take_skipped(&mut self) -> Vec<Skipped> {
        std::mem::take(&mut self.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_messages() {
        let mut o = KeyOrdinals::default();
        let price = r#"{"type":"PRICE","time":"2016-09-20T15:05:47.960449532Z","bids":[{"price":"1.11590","liquidity":10000000}],"asks":[{"price":"1.11601","liquidity":10000000}],"closeoutBid":"1.11574","closeoutAsk":"1.11617","status":"tradeable","tradeable":true,"instrument":"EUR_USD"}"#;
        let t = parse_line(price, &mut o).unwrap().unwrap();
        assert_eq!(t.symbol, "EURUSD");
        assert_eq!((t.bid, t.ask, t.scale), (111590, 111601, 5));
        assert_eq!(t.ts_event_ns, 1_474_383_947_960_449_532);
        assert_eq!(t.bid_size, 1e7);
        assert!(
            parse_line(
                r#"{"type":"HEARTBEAT","time":"2016-09-20T15:05:50.163791738Z"}"#,
                &mut o
            )
            .unwrap()
            .is_none()
        );
        for (bad, why) in [
            ("{", "not an OANDA"),
            (
                r#"{"type":"PRICE","time":"yesterday","instrument":"EUR_USD"}"#,
                "time",
            ),
            (
                r#"{"type":"PRICE","time":"2016-09-20T15:05:47Z","instrument":"EUR_USD","bids":[],"asks":[]}"#,
                "bucket",
            ),
            (
                r#"{"type":"PRICE","time":"2016-09-20T15:05:47Z","instrument":"EUR_USD","bids":[{"price":"x"}],"asks":[{"price":"1"}]}"#,
                "bid",
            ),
            (r#"{"type":"NEWS"}"#, "unknown"),
        ] {
            assert!(parse_line(bad, &mut o).unwrap_err().contains(why), "{bad}");
        }
    }
}
