//! `tickflow subscribe` and `tickflow snapshot`: a gRPC client that prints what a bot receives,
//! one event per line with its end-to-end latency (now minus the causing tick's `ts_recv_ns`).

use anyhow::Context;
use tick_core::latency::fmt_ns;
use tick_core::pb::event::Kind;
use tick_core::pb::signal_service_client::SignalServiceClient;
use tick_core::{Price, clock, pb};

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
    format!("#{:<8} {body}", ev.seq)
}

fn kind(s: &str) -> anyhow::Result<i32> {
    Ok(match s.trim() {
        "update" | "updates" => pb::EventKind::Update,
        "bar" | "bars" => pb::EventKind::Bar,
        "signal" | "signals" => pb::EventKind::Signal,
        other => anyhow::bail!("unknown kind {other:?} (update, bar, signal)"),
    } as i32)
}

/// Subscribes and prints events until the server ends the stream or `--count` is reached.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let mut client = SignalServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("failed to connect to {}", args.addr))?;
    let request = pb::SubscribeRequest {
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
    };
    let mut stream = client
        .subscribe(request)
        .await
        .context("subscribe failed")?
        .into_inner();
    let mut n = 0;
    while let Some(ev) = stream.message().await.context("stream broke")? {
        println!("{}", render(&ev, clock::now_ns()));
        n += 1;
        if args.count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(())
}

/// Prints the snapshot of one symbol.
pub async fn snapshot(addr: String, symbol: String) -> anyhow::Result<()> {
    let mut client = SignalServiceClient::connect(addr.clone())
        .await
        .with_context(|| format!("failed to connect to {addr}"))?;
    let s = client
        .get_snapshot(pb::SnapshotRequest { symbol })
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
                    kind: Some(Kind::Update(u))
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
                    kind: Some(Kind::Bar(b))
                },
                now
            )
        );
    }
    Ok(())
}
