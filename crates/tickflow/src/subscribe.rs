//! `tickflow subscribe` and `tickflow snapshot`: a gRPC client that prints what a bot receives,
//! one event per line with its end-to-end latency (now minus the causing tick's `ts_recv_ns`).

use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
use tick_core::latency::fmt_ns;
use tick_core::pb::event::Kind;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::{Price, clock, pb};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How the client commands reach a server that requires a token or serves TLS.
#[derive(Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Bearer token the server requires (`--auth-token` of the server).
    #[arg(long, env = "TICKFLOW_GRPC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate of a CA to trust, e.g. a self-signed server's own certificate; implies
    /// TLS (`https://`). Without it an `https://` address is checked against the system's CAs.
    #[arg(long, env = "TICKFLOW_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ConnectArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectArgs")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

impl ConnectArgs {
    /// Returns a channel to `addr`, over TLS when it is `https://` or a CA is given.
    pub async fn connect(&self, addr: &str) -> anyhow::Result<Channel> {
        let addr = match (&self.ca_cert, addr.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => addr.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("invalid server address {addr}"))?;
        if addr.starts_with("https://") {
            let tls = match &self.ca_cert {
                Some(p) => {
                    let pem = std::fs::read(p)
                        .with_context(|| format!("failed to read {}", p.display()))?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .context("invalid TLS configuration")?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("failed to connect to {addr}"))
    }

    /// Returns `message` as a request carrying the bearer token, if any.
    pub fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(message);
        if let Some(t) = self.token.as_deref().filter(|t| !t.is_empty()) {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .context("the token is not valid header text")?,
            );
        }
        Ok(req)
    }
}

/// Options of `tickflow subscribe`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
    /// Symbols to receive, comma-separated (default: all).
    #[arg(long, env = "TICKFLOW_SYMBOLS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Kinds to receive, comma-separated: update, bar, signal (default: all).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Timeframes to receive, comma-separated: tick, 1s, 1m, ... (default: all).
    #[arg(long, value_delimiter = ',')]
    pub timeframes: Vec<String>,
    /// Server address.
    #[arg(long, env = "TICKFLOW_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Start after the event with this resume token (receive what was missed since).
    #[arg(long)]
    pub resume: Option<String>,
    /// Start with the stored history from this time: an RFC 3339 time
    /// (`2026-01-05T10:00:00Z`) or a duration ago (`10m`, `2h`). Per-tick updates of the stored
    /// ticks come first (marked `hist`), then the live stream, without gap or duplicate.
    #[arg(long, value_parser = parse_since, conflicts_with = "resume")]
    pub since: Option<i64>,
    /// When the stream breaks (server disconnect, network), reconnect with backoff and resume
    /// after the last event received.
    #[arg(long)]
    pub reconnect: bool,
    /// Token and TLS.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Parses `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> Result<i64, String> {
    match humantime::parse_duration(s) {
        Ok(d) => Ok(clock::now_ns() - d.as_nanos().min(i64::MAX as u128) as i64),
        Err(_) => clock::parse_rfc3339_ns(s)
            .map_err(|e| format!("{e} (or give a duration ago, like 10m)")),
    }
}

fn values(v: &[pb::IndicatorValue]) -> String {
    v.iter()
        .map(|x| {
            if x.warm {
                format!("{}={:.6}", x.name, x.value)
            } else {
                format!("{}=warming", x.name)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Returns the one-line rendering of an event.
pub fn render(ev: &pb::Event, now_ns: i64) -> String {
    let lat = |ts_recv: i64| fmt_ns((now_ns - ts_recv).max(0) as u64);
    let p = |m: i64, s: u32| Price::new(m, s as u8).to_string();
    let body = match &ev.kind {
        Some(Kind::Update(u)) if u.timeframe == "tick" => format!(
            "update {} {} mid={:.6} {} latency={} symbol_seq={}",
            u.symbol,
            u.timeframe,
            u.price,
            values(&u.values),
            lat(u.ts_recv_ns),
            u.symbol_seq
        ),
        Some(Kind::Update(u)) => format!(
            "update {} {} mid={:.6} {} latency={}",
            u.symbol,
            u.timeframe,
            u.price,
            values(&u.values),
            lat(u.ts_recv_ns)
        ),
        Some(Kind::Bar(b)) => format!(
            "bar    {} {} {} O={} H={} L={} C={} ticks={} latency={}",
            b.symbol,
            b.timeframe,
            b.price_side,
            p(b.open, b.price_scale),
            p(b.high, b.price_scale),
            p(b.low, b.price_scale),
            p(b.close, b.price_scale),
            b.tick_count,
            lat(b.ts_recv_ns)
        ),
        Some(Kind::Signal(s)) => format!(
            "signal {} [{}] direction={} {} latency={}",
            s.symbol,
            s.rule_id,
            s.direction,
            values(&s.values),
            lat(s.ts_recv_ns)
        ),
        Some(Kind::Gap(g)) => format!("gap    {} events dropped ({})", g.dropped, g.reason),
        None => "empty event".to_string(),
    };
    if ev.history {
        format!("hist      {body}")
    } else {
        format!("#{:<8} {body}", ev.seq)
    }
}

fn kind(s: &str) -> anyhow::Result<i32> {
    Ok(match s.trim() {
        "update" | "updates" => pb::EventKind::Update,
        "bar" | "bars" => pb::EventKind::Bar,
        "signal" | "signals" => pb::EventKind::Signal,
        other => anyhow::bail!("unknown kind {other:?} (update, bar, signal)"),
    } as i32)
}

/// Subscribes and prints events until the server ends the stream or `--count` is reached; with
/// `--reconnect`, a broken stream is resumed after the last event received.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let mut request = pb::SubscribeRequest {
        symbols: args
            .symbols
            .iter()
            .map(|s| s.trim().to_uppercase())
            .collect(),
        kinds: args
            .kinds
            .iter()
            .map(|k| kind(k))
            .collect::<Result<_, _>>()?,
        timeframes: args.timeframes.clone(),
        resume_token: args.resume.clone().unwrap_or_default(),
        since_ns: args.since.unwrap_or(0),
    };
    let mut n = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let result: anyhow::Result<()> = async {
            let mut client = SignalServiceClient::new(args.connect.connect(&args.addr).await?);
            let mut stream = client
                .subscribe(args.connect.request(request.clone())?)
                .await
                .context("subscribe failed")?
                .into_inner();
            while let Some(ev) = stream.message().await.context("stream broke")? {
                backoff = Duration::from_millis(100);
                println!("{}", render(&ev, clock::now_ns()));
                if !ev.resume_token.is_empty() {
                    // Live now: a reconnection resumes after this event.
                    request.resume_token = ev.resume_token;
                    request.since_ns = 0;
                } else if let (true, Some(Kind::Update(u))) = (ev.history, &ev.kind) {
                    // History has no resume token: start again from this time.
                    request.since_ns = u.ts_event_ns;
                }
                n += 1;
                if args.count.is_some_and(|c| n >= c) {
                    break;
                }
            }
            Ok(())
        }
        .await;
        match result {
            Err(e) if args.reconnect && args.count.is_none_or(|c| n < c) => {
                eprintln!(
                    "{e:#}; reconnecting in {backoff:?} (resume token {:?})",
                    request.resume_token
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                if !request.resume_token.is_empty() {
                    eprintln!("resume with: --resume {}", request.resume_token);
                }
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// Prints the snapshot of one symbol.
pub async fn snapshot(addr: String, symbol: String, connect: ConnectArgs) -> anyhow::Result<()> {
    let mut client = SignalServiceClient::new(connect.connect(&addr).await?);
    let s = client
        .get_snapshot(connect.request(pb::SnapshotRequest { symbol })?)
        .await
        .context("snapshot failed")?
        .into_inner();
    let now = clock::now_ns();
    if let Some(t) = &s.last_tick {
        println!(
            "tick   {} bid={} ask={} source={}",
            t.symbol,
            Price::new(t.bid, t.price_scale as u8),
            Price::new(t.ask, t.price_scale as u8),
            t.source
        );
    }
    if let Some(u) = s.latest {
        println!(
            "{}",
            render(
                &pb::Event {
                    seq: 0,
                    ts_sent_ns: 0,
                    resume_token: String::new(),
                    kind: Some(Kind::Update(u)),
                    ..Default::default()
                },
                now
            )
        );
    }
    for b in s.bars {
        println!(
            "{}",
            render(
                &pb::Event {
                    seq: 0,
                    ts_sent_ns: 0,
                    resume_token: String::new(),
                    kind: Some(Kind::Bar(b)),
                    ..Default::default()
                },
                now
            )
        );
    }
    Ok(())
}
