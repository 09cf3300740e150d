//! Distributed mode of the persister (the `kafka` feature): its binary's options and the `run`
//! that stores Kafka's `ticks.clean`, `ticks.dlq` and `bars` topics.

use super::*;
use tick_core::backoff::Backoff;
use tick_core::health::Health;
use tick_kafka::KafkaArgs;

/// Configuration of the `persister` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct PersisterArgs {
    /// The store (`--store postgres://...` in production, `sqlite:PATH` works too).
    #[command(flatten)]
    pub store: stores::StoreArgs,
    /// Batching.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Circuit breaker.
    #[command(flatten)]
    pub breaker: BreakerArgs,
    /// Consumer group of `ticks.clean`; `-dlq` and `-bars` are appended for the other streams.
    #[arg(long, env = "TICKFLOW_GROUP", default_value = "persister")]
    pub group: String,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the persister on Kafka (groups `persister` for `ticks.clean` and `persister-dlq` for
/// `ticks.dlq`) and PostgreSQL until `shutdown` fires, then flushes and commits.
pub async fn run(
    cfg: PersisterArgs,
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let store = cfg.store.url()?.connect(&cfg.store.options())?.writer;
    // Wait for the database at start as the breaker would later: data waits in Kafka.
    with_retry("database migration", &shutdown, || store.migrate())
        .await
        .context("failed to migrate the database")?;
    cfg.kafka.provision().await?;
    let clean = cfg
        .kafka
        .consumer(&cfg.group, topics::CLEAN, shutdown.clone())?;
    let dlq = cfg
        .kafka
        .consumer(&format!("{}-dlq", cfg.group), topics::DLQ, shutdown.clone())?;
    let bars = cfg.kafka.consumer(
        &format!("{}-bars", cfg.group),
        topics::BARS,
        shutdown.clone(),
    )?;
    health.set_ready(true);
    let stats = Arc::new(PersisterStats::default());
    let batch = cfg.batch.to_config();
    // Shutdown stops intake at once; retries against a dead database get 20 s more, then give
    // up (the unacknowledged data stays in Kafka for the next start).
    let abort = CancellationToken::new();
    let a = abort.clone();
    let s = shutdown.clone();
    tokio::spawn(async move {
        s.cancelled().await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        a.cancel();
    });
    // If one branch fails the process must fail (and be restarted), not limp on half-working.
    // Rows the database refuses go to ticks.dlq like every other reject.
    let dead_letters = DeadLetters::Topic(Arc::new(cfg.kafka.producer(false)?));
    tokio::try_join!(
        run_persister(
            Box::new(clean),
            store.clone(),
            batch,
            cfg.breaker,
            dead_letters,
            stats.clone(),
            abort.clone()
        ),
        run_dead_letters(
            Box::new(dlq),
            store.clone(),
            batch,
            cfg.breaker,
            stats.clone(),
            abort.clone()
        ),
        run_bars(
            Box::new(bars),
            store,
            batch,
            cfg.breaker,
            stats.clone(),
            abort
        ),
    )?;
    Ok(())
}

/// Retries a store operation while the database is unavailable (at start, before there is any
/// intake to pause); gives up only when `abort` fires.
async fn with_retry<T, F, Fut>(
    what: &str,
    abort: &CancellationToken,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %tick_core::error::chain(&e), retry_in = ?delay, "{what} failed, retrying");
                tokio::select! {
                    _ = abort.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other,
        }
    }
}
