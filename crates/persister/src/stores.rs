//! The one store choice: `--store sqlite:PATH` or `--store postgres://...` (`TICKFLOW_STORE`) in
//! every binary that stores or reads, built by one factory. A store is one module plus one line
//! in [`STORES`]: the URL scheme it answers to and the function that opens it, returning the
//! roles it plays ([`Stores`]).

use std::sync::Arc;
use tick_core::store::{HistoryReader, ImportCheckpoints, StoreError, TickStore, TickWriter};

/// Options every store is opened with.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Connections in the pool, for a store that pools them.
    pub pool_size: usize,
    /// How a store that runs on threads of its own schedules them against the rest of the
    /// process (the SQLite store; PostgreSQL's queries run on the async runtime and ignore it).
    pub priority: StorePriority,
}

impl StoreOptions {
    /// `pool_size` connections, the default priority.
    pub fn pool(pool_size: usize) -> Self {
        Self {
            pool_size,
            priority: StorePriority::default(),
        }
    }
}

/// How a store's own threads are scheduled (Linux; elsewhere both run at the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorePriority {
    /// A lowered priority (nice 5): the store yields a share of a busy core to the process's
    /// other threads and still keeps up with its own work whatever else runs on the machine.
    /// For a process whose work is storing (the persister, the replayer).
    #[default]
    Lowered,
    /// Background (`SCHED_IDLE`): the store's thread runs only on a core that no other
    /// thread wants, and any thread that wakes takes the core from it at once. For embedded
    /// mode, where the real-time path shares the cores with storage: at nice 5 a commit could
    /// still hold a core for a whole scheduler tick (up to 4 ms) while a gRPC worker waited
    /// behind it (BENCHMARKS.md, "Why: the store's commits held a core"). Storage still gets every
    /// idle moment, and if the cores stay saturated the bus's bounded queues hold ingest back
    /// rather than lose a tick.
    Background,
}

/// Opens a store from its URL (the whole `--store` value).
pub type OpenFn = fn(&str, &StoreOptions) -> Result<Stores, StoreError>;

/// Registers the stores: one line each, `module => ["url-prefix", ...]`. It declares each
/// store's module (`src/<module>.rs`, which has `pub fn open(url, options) -> Result<Stores>`)
/// and generates [`STORES`](crate::STORES), the table the factory looks schemes up in.
#[macro_export]
macro_rules! register_stores {
    ($( $(#[$doc:meta])* $module:ident => [$($prefix:literal),+ $(,)?] ),+ $(,)?) => {
        $( $(#[$doc])* pub mod $module; )+

        /// The registered stores: the URL prefixes each answers to and how to open it.
        pub const STORES: &[(&str, $crate::stores::OpenFn)] = &[
            $( $( ($prefix, $module::open as $crate::stores::OpenFn), )+ )+
        ];
    };
}

use crate::STORES;

/// The roles an opened store plays. A store that only writes leaves the others `None`, and a
/// command that needs a role it lacks says so.
#[derive(Clone)]
pub struct Stores {
    /// Where ticks, bars and dead letters are written.
    pub writer: Arc<dyn TickWriter>,
    /// What reads stored history back.
    pub reader: Option<Arc<dyn HistoryReader>>,
    /// Checkpoints of bulk imports.
    pub checkpoints: Option<Arc<dyn ImportCheckpoints>>,
    /// The store's URL with any password hidden, for logs.
    pub name: String,
    /// The store itself, when it plays every role (what the conformance suite checks).
    pub full: Option<Arc<dyn TickStore>>,
}

impl Stores {
    /// Returns the roles of a store that plays all of them.
    pub fn full(store: Arc<dyn TickStore>, name: String) -> Self {
        Self {
            writer: store.clone(),
            reader: Some(store.clone()),
            checkpoints: Some(store.clone()),
            name,
            full: Some(store),
        }
    }

    /// Returns the history reader, or an error naming the store that has none.
    pub fn reader(&self) -> anyhow::Result<Arc<dyn HistoryReader>> {
        self.reader
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the store {} cannot read history", self.name))
    }

    /// Returns the import checkpoints, or an error naming the store that has none.
    pub fn checkpoints(&self) -> anyhow::Result<Arc<dyn ImportCheckpoints>> {
        self.checkpoints
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the store {} keeps no import checkpoints", self.name))
    }
}

/// A `--store` value whose scheme is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if STORES.iter().any(|(prefix, _)| s.starts_with(prefix)) {
            Ok(Self(s.to_string()))
        } else {
            let schemes: Vec<&str> = STORES.iter().map(|(p, _)| *p).collect();
            Err(format!(
                "{:?} names no known store; use one of: {}",
                redact(s),
                schemes.join(" ")
            ))
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl StoreUrl {
    /// Returns the URL as given (with its password, if any).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the SQLite file at `path`.
    pub fn sqlite(path: &std::path::Path) -> Self {
        Self(format!("sqlite:{}", path.display()))
    }

    /// Opens the store without touching its schema (a database that is down is found out at
    /// the first use).
    pub fn connect(&self, options: &StoreOptions) -> anyhow::Result<Stores> {
        let open = STORES
            .iter()
            .find(|(prefix, _)| self.0.starts_with(prefix))
            .map(|(_, open)| *open)
            .expect("parsing checked the scheme");
        open(&self.0, options)
            .map_err(|e| anyhow::Error::new(e).context(format!("failed to open {self}")))
    }

    /// Opens the store and applies its migrations.
    pub async fn open(&self, options: &StoreOptions) -> anyhow::Result<Stores> {
        let stores = self.connect(options)?;
        stores.writer.migrate().await.map_err(|e| {
            anyhow::Error::new(e).context(format!("failed to migrate {}", stores.name))
        })?;
        Ok(stores)
    }
}

/// Hides the password of a URL (`postgres://user:secret@host` -> `postgres://user:***@host`).
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// The store options of a binary that stores or reads: `--store` and the pool size.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where ticks are stored and read: `sqlite:PATH` or
    /// `postgres://user:password@host:5432/db`.
    #[arg(long, env = "TICKFLOW_STORE", hide_env_values = true)]
    pub store: Option<StoreUrl>,
    /// Database connections in the pool (PostgreSQL).
    #[arg(long, env = "TICKFLOW_DB_POOL_SIZE", default_value_t = 4)]
    pub pool_size: usize,
}

impl StoreArgs {
    /// Returns `--store`, or an error saying it is required.
    pub fn url(&self) -> anyhow::Result<&StoreUrl> {
        self.store.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "--store (or TICKFLOW_STORE) is required: sqlite:PATH or postgres://..."
            )
        })
    }

    /// Opens and migrates the store `--store` names.
    pub async fn open(&self) -> anyhow::Result<Stores> {
        self.url()?.open(&self.options()).await
    }

    /// Returns the options to open a store with.
    pub fn options(&self) -> StoreOptions {
        StoreOptions::pool(self.pool_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_names_a_registered_scheme() {
        for ok in [
            "sqlite:tickflow.db",
            "sqlite:/tmp/x.db",
            "postgres://u:p@h:5432/db",
            "postgresql://h/db",
        ] {
            assert!(ok.parse::<StoreUrl>().is_ok(), "{ok}");
        }
        for bad in ["tickflow.db", "mysql://h/db", "", "SQLITE:x"] {
            let e = bad.parse::<StoreUrl>().unwrap_err();
            assert!(e.contains("sqlite:") && e.contains("postgres://"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_sqlite_url_names_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let ok = StoreUrl::sqlite(&dir.path().join("t.db"));
        let stores = ok.open(&StoreOptions::pool(1)).await.unwrap();
        assert!(stores.reader.is_some() && stores.checkpoints.is_some());
        for bad in ["sqlite:", "sqlite://t.db", "sqlite:///tmp/t.db"] {
            let url: StoreUrl = bad.parse().unwrap();
            let e = url.open(&StoreOptions::pool(1)).await.err().unwrap();
            assert!(format!("{e:#}").contains("sqlite:PATH"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn a_password_never_reaches_a_log() {
        assert_eq!(
            redact("postgres://tick:s3cret@db:5432/tickflow"),
            "postgres://tick:***@db:5432/tickflow"
        );
        assert_eq!(redact("postgres://db/tickflow"), "postgres://db/tickflow");
        assert_eq!(redact("sqlite:/tmp/t.db"), "sqlite:/tmp/t.db");
        let url: StoreUrl = "postgres://a:b@c/d".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://a:***@c/d");
    }
}
