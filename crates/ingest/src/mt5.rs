//! The MetaTrader 5 feed. MQL5 sockets are clients only, so ingest listens and the expert
//! advisor (`clients/mt5/TickflowStreamer.mq5`) connects. The protocol is newline-delimited
//! JSON:
//!
//! - EA -> ingest: `{"type":"hello","token":"...","terminal":"icmarkets-1","utc_offset_s":7200}`
//!   first, then `{"type":"tick","symbol":"EURUSD","time_msc":...,"bid":1.10235,"ask":1.10237,
//!   "last":0,"volume":0,"volume_real":0,"flags":6}` per tick and `{"type":"hb"}` heartbeats.
//! - ingest -> EA: `{"type":"welcome"}` after a good hello (the EA keeps its own resume point,
//!   the last acknowledged millisecond),
//!   `{"type":"ack","time_msc":T}` once every tick the connection sent with a time up to T is
//!   durable (confirmed by Kafka or spooled; in embedded mode committed to SQLite),
//!   `{"type":"hb"}` heartbeats, and `{"type":"error","reason":"..."}` before closing.
//!
//! Lines are at most `--mt5-max-line` bytes (default 4096): a longer one, one that is not UTF-8
//! or not a valid message is a reject (a dead letter with the reason and a bounded prefix) and
//! the connection goes on. With `--mt5-tls-cert`/`--mt5-tls-key` the listener speaks TLS (the
//! EA's `InpTls`, MQL5's `SocketTlsHandshake`). The token is compared in constant time; the
//! terminal name must be 1-64 characters of `A-Z a-z 0-9 . _ -`.
//!
//! After a reconnect the EA resends with `CopyTicksRange` from a few seconds (`InpResendWindowMs`)
//! before the last acknowledged millisecond, or from where it started when nothing was
//! acknowledged yet; the idempotency key (`mt5:<terminal>|symbol|utc ns|ordinal within
//! the ms`) is the same for a resent tick, so the overlap never becomes a duplicate. Prices are
//! taken from the JSON text as decimals, never through a float. Broker server time is
//! converted to UTC with the offset the EA reports.

use tick_core::error::Cause;
use crate::source::{BuildSource, Durability, Rejected, SourceContext, SourceError, TickSource};
use anyhow::Context;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tick_core::shutdown::CancellationToken;
use tick_core::{KeyOrdinals, Price, Tick, clock, idempotency_key};
use tick_formats::lines::{Line, LineSplitter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

/// Options of the MetaTrader 5 listener (`--source mt5`).
#[derive(Debug, Clone, clap::Args)]
pub struct Mt5Args {
    /// MT5: address the expert advisors connect to.
    #[arg(long, env = "TICKFLOW_MT5_LISTEN", default_value = "0.0.0.0:5555")]
    pub mt5_listen: SocketAddr,
    /// MT5: token every EA must present (required with --source mt5).
    #[arg(
        long,
        env = "TICKFLOW_MT5_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub mt5_token: String,
    /// MT5: most simultaneous terminal connections.
    #[arg(long, env = "TICKFLOW_MT5_MAX_CONNECTIONS", default_value_t = 64)]
    pub mt5_max_connections: usize,
    /// MT5: longest accepted line, in bytes; a longer line is a reject, the connection goes on.
    #[arg(long, env = "TICKFLOW_MT5_MAX_LINE", default_value_t = 4096)]
    pub mt5_max_line: usize,
    /// MT5: serve TLS with this certificate chain (PEM); needs --mt5-tls-key. The EA then
    /// connects with `SocketTlsHandshake` (see clients/mt5/README.md).
    #[arg(long, env = "TICKFLOW_MT5_TLS_CERT", requires = "mt5_tls_key")]
    pub mt5_tls_cert: Option<std::path::PathBuf>,
    /// MT5: the TLS certificate's private key (PEM, PKCS#8).
    #[arg(long, env = "TICKFLOW_MT5_TLS_KEY", requires = "mt5_tls_cert")]
    pub mt5_tls_key: Option<std::path::PathBuf>,
}

/// A TLS server identity for the MT5 listener.
#[derive(Clone)]
pub struct Mt5Tls(tokio_native_tls::TlsAcceptor);

impl std::fmt::Debug for Mt5Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mt5Tls")
    }
}

impl Mt5Tls {
    /// Builds the acceptor from a PEM certificate chain and its PEM (PKCS#8) private key.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> anyhow::Result<Self> {
        let identity = native_tls::Identity::from_pkcs8(cert, key)
            .context("the MT5 TLS certificate or key is not valid PEM (PKCS#8 key)")?;
        let acceptor = native_tls::TlsAcceptor::new(identity)
            .context("failed to set up TLS for the MT5 listener")?;
        Ok(Self(acceptor.into()))
    }

    /// Reads the certificate and key files.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("failed to read {}", p.display()))
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }
}

#[async_trait]
impl BuildSource for Mt5Args {
    async fn build(&self, cx: &SourceContext) -> anyhow::Result<Box<dyn TickSource>> {
        anyhow::ensure!(!self.mt5_token.is_empty(), "--mt5-token is required");
        let tls = match (&self.mt5_tls_cert, &self.mt5_tls_key) {
            (Some(cert), Some(key)) => Some(Mt5Tls::from_files(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(self.mt5_listen)
            .await
            .with_context(|| format!("failed to listen on {} for MT5", self.mt5_listen))?;
        let src = Mt5Source::start(
            listener,
            Mt5Config {
                token: self.mt5_token.clone(),
                max_line: self.mt5_max_line,
                max_connections: self.mt5_max_connections,
                tls,
                ..Mt5Config::default()
            },
            cx.durable.clone(),
            cx.shutdown.clone(),
        )?;
        tracing::info!(addr = %src.local_addr, tls = self.mt5_tls_cert.is_some(), "listening for MetaTrader 5 terminals");
        Ok(Box::new(src))
    }
}

/// Settings of the MT5 listener.
#[derive(Debug, Clone)]
pub struct Mt5Config {
    /// Token every EA must present in its hello.
    pub token: String,
    /// Longest accepted line, in bytes.
    pub max_line: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Interval of heartbeats and acknowledgements sent to the EA.
    pub heartbeat: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Serve TLS (the EA connects with `SocketTlsHandshake`); plain TCP when `None`.
    pub tls: Option<Mt5Tls>,
}

impl Default for Mt5Config {
    fn default() -> Self {
        Self {
            token: String::new(),
            max_line: 4096,
            max_connections: 64,
            heartbeat: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(15),
            tls: None,
        }
    }
}

#[derive(Deserialize)]
struct Hello {
    token: String,
    terminal: String,
    #[serde(default)]
    utc_offset_s: i64,
}

#[derive(Deserialize)]
struct TickMsg<'a> {
    symbol: String,
    time_msc: i64,
    #[serde(borrow)]
    bid: &'a RawValue,
    #[serde(borrow)]
    ask: &'a RawValue,
    #[serde(borrow, default)]
    last: Option<&'a RawValue>,
    #[serde(default)]
    volume_real: f64,
    #[serde(default)]
    volume: f64,
    #[serde(default)]
    flags: u32,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

/// Parses one `tick` line of a connection into a canonical tick.
pub fn parse_tick(
    line: &str,
    source: &str,
    utc_offset_s: i64,
    ordinals: &mut KeyOrdinals,
) -> Result<(Tick, i64), String> {
    let m: TickMsg = serde_json::from_str(line).map_err(|e| format!("bad tick message: {e}"))?;
    let dec = |r: &RawValue, what: &str| -> Result<Price, String> {
        r.get()
            .trim_matches('"')
            .parse::<Price>()
            .map_err(|e| format!("{what}: {e}"))
    };
    let (bid, ask) = (dec(m.bid, "bid")?, dec(m.ask, "ask")?);
    let last = match m.last.map(|l| dec(l, "last")).transpose()? {
        Some(p) if p.mantissa != 0 => Some(p),
        _ => None,
    };
    let scale = bid.scale.max(ask.scale).max(last.map_or(0, |l| l.scale));
    let fit = |p: Price| {
        p.rescale(scale)
            .map(|p| p.mantissa)
            .ok_or_else(|| "price out of range".to_string())
    };
    let utc_ms = m
        .time_msc
        .checked_sub(utc_offset_s.saturating_mul(1000))
        .ok_or("time out of range")?;
    let ts = utc_ms.checked_mul(1_000_000).ok_or("time out of range")?;
    let symbol = m.symbol.trim().to_string();
    if symbol.is_empty() {
        return Err("empty symbol".into());
    }
    let ordinal = ordinals.next(&symbol, ts);
    let volume = if m.volume_real != 0.0 {
        m.volume_real
    } else {
        m.volume
    };
    Ok((
        Tick {
            key: idempotency_key(source, &symbol, ts, ordinal),
            symbol,
            source: source.to_string(),
            ts_event_ns: ts,
            ts_recv_ns: clock::now_ns(),
            scale,
            bid: fit(bid)?,
            ask: fit(ask)?,
            last: last.map(fit).transpose()?,
            bid_size: 0.0,
            ask_size: 0.0,
            volume,
            flags: m.flags,
            route: Default::default(),
            replay: false,
        },
        m.time_msc,
    ))
}

struct Inbound {
    conn: u64,
    time_msc: i64,
    tick: Tick,
}

/// Per connection: (position in the source's output, server-time ms) not yet acknowledged.
type AckBook = Arc<Mutex<HashMap<u64, VecDeque<(u64, i64)>>>>;

/// The MT5 listener as a tick source.
pub struct Mt5Source {
    rx: mpsc::Receiver<Inbound>,
    rejects_rx: mpsc::Receiver<Rejected>,
    emitted: u64,
    book: AckBook,
    /// The local address the listener is bound to.
    pub local_addr: SocketAddr,
}

impl Mt5Source {
    /// Starts listening on `listener`. `durable` counts the ticks of this source that are
    /// durable, in emission order (the ingest loop advances it); acknowledgements to the EAs
    /// follow it.
    pub fn start(
        listener: TcpListener,
        cfg: Mt5Config,
        durable: Durability,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(65_536);
        let (rtx, rejects_rx) = mpsc::channel(4096);
        let book: AckBook = Arc::default();
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let b = book.clone();
        tokio::spawn(async move {
            let mut next_conn = 0u64;
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    },
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "connection refused: too many connections");
                    metrics::counter!("tickflow_ingest_mt5_refused_total").increment(1);
                    let mut s = stream;
                    let _ = s
                        .write_all(b"{\"type\":\"error\",\"reason\":\"too many connections\"}\n")
                        .await;
                    continue;
                };
                next_conn += 1;
                let conn = Connection {
                    id: next_conn,
                    cfg: cfg.clone(),
                    tx: tx.clone(),
                    rejects: rtx.clone(),
                    book: b.clone(),
                    durable: durable.clone(),
                    shutdown: shutdown.clone(),
                };
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let served = match conn.cfg.tls.clone() {
                        None => conn.serve(stream).await,
                        Some(tls) => {
                            let handshake = tokio::time::timeout(conn.cfg.idle_timeout, tls.0.accept(stream));
                            match handshake.await {
                                Ok(Ok(stream)) => conn.serve(stream).await,
                                Ok(Err(e)) => {
                                    metrics::counter!("tickflow_ingest_mt5_tls_failed_total").increment(1);
                                    Err(format!("TLS handshake failed: {e}"))
                                }
                                Err(_) => Err("no TLS handshake".to_string()),
                            }
                        }
                    };
                    if let Err(e) = served {
                        tracing::info!(%peer, reason = %e, "mt5 connection closed");
                    }
                    drop(permit);
                });
            }
        });
        Ok(Self {
            rx,
            rejects_rx,
            emitted: 0,
            book,
            local_addr,
        })
    }
}

#[async_trait]
impl TickSource for Mt5Source {
    fn name(&self) -> &str {
        "mt5"
    }

    async fn next_batch(&mut self, out: &mut Vec<Tick>) -> Result<bool, SourceError> {
        let Some(first) = self.rx.recv().await else {
            return Ok(false);
        };
        let mut book = self
            .book
            .lock()
            .map_err(|_| SourceError::Input(Cause::msg("ack book poisoned")))?;
        let mut next = Some(first);
        while let Some(i) = next.take() {
            book.entry(i.conn)
                .or_default()
                .push_back((self.emitted, i.time_msc));
            self.emitted += 1;
            out.push(i.tick);
            if out.len() < 4096 {
                next = self.rx.try_recv().ok();
            }
        }
        Ok(true)
    }

    fn take_rejects(&mut self) -> Vec<Rejected> {
        let mut v = Vec::new();
        while let Ok(r) = self.rejects_rx.try_recv() {
            v.push(r);
        }
        v
    }
}

/// Returns the next line of a connection; `None` when the peer closed (a last line without its
/// newline is dropped: the peer went away in the middle of it). Cancel-safe: a read cancelled by
/// `select!` loses nothing, the bytes already read stay in `lines`.
async fn next_line<R: AsyncRead + Unpin>(
    read: &mut R,
    lines: &mut LineSplitter,
    chunk: &mut [u8],
) -> Result<Option<Line>, String> {
    loop {
        if let Some(line) = lines.next_line() {
            return Ok(Some(line));
        }
        match read.read(chunk).await.map_err(|e| e.to_string())? {
            0 => return Ok(None),
            n => lines.push(&chunk[..n]),
        }
    }
}

/// Whether a terminal name from a hello is acceptable: it becomes part of the ticks' source
/// and keys, so it is short and plain.
fn valid_terminal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

struct Connection {
    id: u64,
    cfg: Mt5Config,
    tx: mpsc::Sender<Inbound>,
    rejects: mpsc::Sender<Rejected>,
    book: AckBook,
    durable: Durability,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve<S>(self, stream: S) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut read, mut write) = tokio::io::split(stream);
        let mut lines = LineSplitter::new(self.cfg.max_line);
        let mut chunk = vec![0u8; 16 * 1024];
        // Hello first, within the idle timeout.
        let first = tokio::time::timeout(
            self.cfg.idle_timeout,
            next_line(&mut read, &mut lines, &mut chunk),
        )
        .await
        .map_err(|_| "no hello".to_string())??;
        let hello: Option<Hello> = match &first {
            None => return Err("closed before hello".into()),
            Some(Line::Text(line)) => serde_json::from_str::<Envelope>(line)
                .ok()
                .filter(|e| e.kind == "hello")
                .and_then(|_| serde_json::from_str(line).ok()),
            Some(Line::Refused(_)) => None,
        };
        let Some(hello) = hello else {
            let _ = write
                .write_all(b"{\"type\":\"error\",\"reason\":\"expected hello\"}\n")
                .await;
            return Err("first line is not a hello".into());
        };
        let token_ok: bool =
            subtle::ConstantTimeEq::ct_eq(hello.token.as_bytes(), self.cfg.token.as_bytes())
                .into();
        if self.cfg.token.is_empty() || !token_ok {
            metrics::counter!("tickflow_ingest_mt5_auth_failed_total").increment(1);
            let _ = write
                .write_all(b"{\"type\":\"error\",\"reason\":\"authentication failed\"}\n")
                .await;
            return Err("authentication failed".into());
        }
        if !valid_terminal(&hello.terminal) {
            let _ = write
                .write_all(b"{\"type\":\"error\",\"reason\":\"terminal must be 1-64 characters of A-Z a-z 0-9 . _ -\"}\n")
                .await;
            return Err("invalid terminal name".into());
        }
        let source = format!("mt5:{}", hello.terminal);
        tracing::info!(%source, utc_offset_s = hello.utc_offset_s, "mt5 terminal connected");
        metrics::counter!("tickflow_ingest_mt5_connections_total").increment(1);
        write
            .write_all(b"{\"type\":\"welcome\"}\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut ordinals = KeyOrdinals::default();
        let mut beat = tokio::time::interval(self.cfg.heartbeat);
        let mut last_heard = tokio::time::Instant::now();
        let mut last_acked = i64::MIN;
        let mut newest_durable = None;
        let result = loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break Ok(()),
                _ = beat.tick() => {
                    if last_heard.elapsed() > self.cfg.idle_timeout {
                        break Err("peer silent".to_string());
                    }
                    let acked = self.durable_upto(&mut newest_durable);
                    let msg = match acked {
                        Some(t) if t != last_acked => {
                            last_acked = t;
                            format!("{{\"type\":\"ack\",\"time_msc\":{t}}}\n")
                        }
                        _ => "{\"type\":\"hb\"}\n".to_string(),
                    };
                    if let Err(e) = write.write_all(msg.as_bytes()).await {
                        break Err(e.to_string());
                    }
                }
                line = next_line(&mut read, &mut lines, &mut chunk) => {
                    let line = match line {
                        Ok(Some(Line::Text(line))) => line,
                        Ok(Some(Line::Refused(refusal))) => {
                            last_heard = tokio::time::Instant::now();
                            self.reject_line(&source, refusal).await;
                            continue;
                        }
                        Ok(None) => break Err("peer closed".into()),
                        Err(e) => break Err(e),
                    };
                    last_heard = tokio::time::Instant::now();
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Envelope>(line).map(|e| e.kind) {
                        Ok(k) if k == "tick" => match parse_tick(line, &source, hello.utc_offset_s, &mut ordinals) {
                            Ok((tick, time_msc)) => {
                                if self.tx.send(Inbound { conn: self.id, time_msc, tick }).await.is_err() {
                                    break Ok(());
                                }
                            }
                            Err(reason) => self.reject(&source, reason, line).await,
                        },
                        Ok(k) if k == "hb" => {}
                        Ok(other) => {
                            let other: String = other.chars().take(64).collect();
                            self.reject(&source, format!("unknown message type {other:?}"), line).await
                        }
                        Err(e) => self.reject(&source, format!("not a JSON message: {e}"), line).await,
                    }
                }
            }
        };
        if let Ok(mut b) = self.book.lock() {
            b.remove(&self.id);
        }
        result
    }

    async fn reject(&self, source: &str, reason: String, line: &str) {
        // Counted once, by the ingest loop that publishes the dead letter.
        let _ = self
            .rejects
            .send(Rejected {
                reason: "malformed_message",
                detail: format!("{source}: {reason}"),
                payload: line.as_bytes().to_vec(),
            })
            .await;
    }

    async fn reject_line(&self, source: &str, refusal: tick_formats::lines::Refusal) {
        let _ = self.rejects.send(Rejected::line(source, refusal)).await;
    }

    /// Returns the server time T such that every tick this connection sent with a time up to
    /// T is durable: the newest durable tick's time, or just before the oldest tick still in
    /// flight when that is earlier (the EA sends several symbols, so send order is not time
    /// order). `newest` carries the newest durable time between calls.
    fn durable_upto(&self, newest: &mut Option<i64>) -> Option<i64> {
        let durable = self.durable.durable();
        let mut book = self.book.lock().ok()?;
        let q = book.get_mut(&self.id)?;
        while let Some(&(pos, t)) = q.front() {
            if pos >= durable {
                break;
            }
            *newest = Some(newest.map_or(t, |n| n.max(t)));
            q.pop_front();
        }
        let newest = (*newest)?;
        let in_flight = q.iter().map(|&(_, t)| t).min();
        Some(in_flight.map_or(newest, |oldest| newest.min(oldest - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ticks_exactly_and_converts_server_time() {
        let mut o = KeyOrdinals::default();
        let line = r#"{"type":"tick","symbol":"EURUSD","time_msc":1700007200123,"bid":1.10235,"ask":1.1024,"last":0,"volume":0,"volume_real":0,"flags":6}"#;
        let (t, msc) = parse_tick(line, "mt5:demo", 7200, &mut o).unwrap();
        assert_eq!(msc, 1_700_007_200_123);
        assert_eq!(t.ts_event_ns, 1_700_000_000_123_000_000);
        assert_eq!((t.bid, t.ask, t.scale, t.last), (110235, 110240, 5, None));
        assert_eq!(t.key, "mt5:demo|EURUSD|1700000000123000000|0");
        let (t2, _) = parse_tick(line, "mt5:demo", 7200, &mut o).unwrap();
        assert_eq!(
            t2.key, "mt5:demo|EURUSD|1700000000123000000|1",
            "same ms, next ordinal"
        );
    }

    #[test]
    fn rejects_bad_ticks_with_a_reason() {
        let mut o = KeyOrdinals::default();
        for (line, why) in [
            (
                r#"{"type":"tick","symbol":"EURUSD","time_msc":1,"bid":"abc","ask":1}"#,
                "bid",
            ),
            (
                r#"{"type":"tick","symbol":"EURUSD","time_msc":1,"bid":1.1}"#,
                "ask",
            ),
            (
                r#"{"type":"tick","symbol":"","time_msc":1,"bid":1,"ask":1}"#,
                "empty symbol",
            ),
            (
                r#"{"type":"tick","symbol":"X","time_msc":9223372036854775807,"bid":1,"ask":1}"#,
                "range",
            ),
            ("not json", "bad tick"),
        ] {
            let e = parse_tick(line, "mt5:x", 0, &mut o).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
