//! Per-symbol snapshots in Redis, so a bot or dashboard that joins late sees the current state
//! at once. Written off the hot path by a task of its own; Redis is a cache, so a full queue or
//! an unreachable Redis loses snapshots, never ticks.

use prost::Message;
use std::time::Duration;
use tick_core::pb;
use tokio::sync::mpsc;

/// Returns the Redis key of a symbol's snapshot.
pub fn key(symbol: &str) -> String {
    format!("tickflow:snapshot:{symbol}")
}

/// Connects to Redis and returns the queue that feeds the writer task. `url` is
/// `redis://[[user]:password@]host:port[/db]`, or `rediss://...` for TLS (the server's
/// certificate checked against the system's CAs, which `SSL_CERT_FILE` can replace;
/// `rediss://...#insecure` encrypts without checking it). A server that refuses the
/// credentials, or wants some that the URL lacks, fails here rather than at the first write.
pub async fn start_writer(
    url: &str,
    ttl: Duration,
) -> anyhow::Result<(mpsc::Sender<Vec<pb::Snapshot>>, tokio::task::JoinHandle<()>)> {
    let client = redis::Client::open(url)
        .map_err(|e| anyhow::Error::new(e).context(format!("invalid redis url {}", redact(url))))?;
    // One attempt first: refused credentials or a certificate that does not check out fail
    // at once (the connection manager would retry them for seconds); an unreachable server
    // gets the manager's retries. PING, because a connection authenticates only when the URL
    // has a password: a server that wants one says so now rather than at the first write.
    let probe = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    if let Err(e) = probe.await
        && !e.is_io_error()
    {
        return Err(connect_error(url, e));
    }
    let mut conn = async {
        let mut conn = redis::aio::ConnectionManager::new(client).await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    }
    .await
    .map_err(|e| connect_error(url, e))?;
    let (tx, mut rx) = mpsc::channel::<Vec<pb::Snapshot>>(4);
    let ttl_s = ttl.as_secs().max(1);
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let mut pipe = redis::pipe();
            for s in &batch {
                pipe.set_ex(key(&s.symbol), s.encode_to_vec(), ttl_s)
                    .ignore();
            }
            let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            match r {
                Ok(()) => metrics::counter!("tickflow_indicators_snapshots_written_total")
                    .increment(batch.len() as u64),
                Err(e) => {
                    metrics::counter!("tickflow_indicators_snapshot_errors_total").increment(1);
                    tracing::warn!(error = %e, "failed to write snapshots to redis");
                }
            }
        }
    });
    Ok((tx, task))
}

/// The error of a failed connection: one that is about credentials says how to give them.
fn connect_error(url: &str, e: redis::RedisError) -> anyhow::Error {
    let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"));
    if auth {
        anyhow::anyhow!(
            "redis at {} refused the snapshot writer: {e} (the password, and the user for an \
             ACL user, go in the url: redis://:PASSWORD@host:port or \
             redis://USER:PASSWORD@host:port)",
            redact(url)
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot connect to redis at {}", redact(url)))
    }
}

/// Hides the password of a Redis URL for logs and errors (`redis://user:secret@host` ->
/// `redis://user:***@host`).
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    // The password ends at the last '@' of the authority (it may itself hold an '@').
    let authority = rest.find('/').map_or(rest, |slash| &rest[..slash]);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_password_never_reaches_a_log() {
        assert_eq!(redact("redis://:s3cret@h:6379"), "redis://:***@h:6379");
        assert_eq!(
            redact("rediss://u:s3c@ret@h:6380/2"),
            "rediss://u:***@h:6380/2"
        );
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://user@h"), "redis://user@h");
    }
}
