//! The persister stores into a PostgreSQL that requires TLS: a throwaway server of the test's
//! own (initdb into a temporary directory, a free loopback port) with `ssl = on`, a
//! certificate for `localhost` signed by a CA made at test time, and a `pg_hba.conf` of
//! `hostssl` lines only. Checked through the store factory and the persister stage:
//! `sslmode=disable` is refused with a clear error, `require` stores, `verify-full` with
//! `sslrootcert` works with the right CA and host name and fails with another CA or host.
//!
//! The PostgreSQL binaries are found as `scripts/services.sh` finds them (the newest
//! `/usr/lib/postgresql/<version>/bin`, from the Debian package it installs). Without them
//! the test skips, unless `TICKFLOW_REQUIRE_SERVICES=1` (scripts/test.sh), where it fails.

use persister::stores::{StoreOptions, StoreUrl, Stores};
use persister::{BatchConfig, DeadLetters, PersisterStats, breaker::BreakerArgs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tick_core::bus::{MemoryBus, topics};
use tick_core::shutdown::CancellationToken;
use tick_core::testenv::free_port;
use tick_core::testenv::tls::Certificates;

#[tokio::test]
async fn the_persister_stores_into_a_postgres_that_requires_tls() {
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("TICKFLOW_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "no PostgreSQL binaries in /usr/lib/postgresql/*/bin but TICKFLOW_REQUIRE_SERVICES=1: \
             install the postgresql package (scripts/services.sh up does)"
        );
        eprintln!(
            "skipping: no PostgreSQL binaries in /usr/lib/postgresql/*/bin \
             (scripts/services.sh up installs them)"
        );
        return;
    };
    let started = Instant::now();
    let pg = TlsPostgres::start(&bin).await;
    eprintln!("TLS-only PostgreSQL up in {:?}", started.elapsed());
    let opts = StoreOptions::pool(2);
    let ca = pg.ca.display().to_string();
    let other_ca = pg.other_ca.display().to_string();

    // (a) Without TLS the server refuses, and the error says what to change.
    let e = pg
        .url("localhost", "sslmode=disable")
        .open(&opts)
        .await
        .err()
        .expect("sslmode=disable must be refused by a hostssl-only server");
    let e = format!("{e:#}");
    eprintln!("sslmode=disable: {e}");
    assert!(
        e.contains("accepts only encrypted connections") && e.contains("sslmode=require"),
        "a clear error: {e}"
    );
    assert!(e.contains("no encryption"), "the server's own reason: {e}");

    // (b) sslmode=require: the persister stage stores ticks, read back through the store.
    let stores = pg
        .url("localhost", "sslmode=require")
        .open(&opts)
        .await
        .expect("sslmode=require opens and migrates the store");
    let ticks: Vec<_> = (0..250)
        .map(|i| tick_core::testenv::tick("tls", "EURUSD", T0 + i * 1_000_000, 108_000 + i))
        .collect();
    let stats = run_persister(&stores, &ticks).await;
    assert_eq!(stats.stored.load(std::sync::atomic::Ordering::Relaxed), 250);
    let back = stores
        .reader()
        .unwrap()
        .ticks_between(&[], T0, T0 + 1_000_000_000, None, 1000)
        .await
        .unwrap();
    assert_eq!(back, ticks, "the stored ticks read back");
    // The session really is encrypted (hostssl allows nothing else, but say so).
    let admin = persister::postgres::connect(pg.url("localhost", "sslmode=require").as_str())
        .await
        .unwrap();
    let ssl: bool = admin
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "pg_stat_ssl says the connection is TLS");
    // libpq's default, prefer, encrypts when the server offers it.
    assert_eq!(store_count(&pg.url("localhost", "")).await.unwrap(), 250);

    // (c) verify-full with the CA that signed the server's certificate, for host localhost.
    let verified = format!("sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(
        store_count(&pg.url("localhost", &verified)).await.unwrap(),
        250
    );
    // ... and not with a CA that did not sign it (nor require with that CA: verify-ca then).
    for (host, params) in [
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other_ca}"),
        ),
        (
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        ),
        (
            "localhost",
            format!("sslmode=require&sslrootcert={other_ca}"),
        ),
    ] {
        let e = store_count(&pg.url(host, &params)).await.unwrap_err();
        eprintln!("{params}: {e}");
        assert!(
            e.contains("certificate verify failed") && e.contains("unable to get local issuer"),
            "{params}: a certificate error: {e}"
        );
    }
    // The certificate names localhost, not 127.0.0.1: verify-full checks the host name,
    // verify-ca does not.
    let e = store_count(&pg.url("127.0.0.1", &verified))
        .await
        .unwrap_err();
    eprintln!("verify-full to 127.0.0.1: {e}");
    assert!(
        e.contains("certificate verify failed") && e.contains("IP address mismatch"),
        "verify-full to 127.0.0.1: {e}"
    );
    let ca_only = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert_eq!(
        store_count(&pg.url("127.0.0.1", &ca_only)).await.unwrap(),
        250
    );
    eprintln!("done in {:?}", started.elapsed());
}

/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000_000_000;

/// Runs the persister stage over `ticks` (from an in-memory `ticks.clean`) into `stores`.
async fn run_persister(stores: &Stores, ticks: &[tick_core::Tick]) -> Arc<PersisterStats> {
    let bus = MemoryBus::new();
    let consumer = bus.subscribe(topics::CLEAN, ticks.len() + 1);
    let producer = bus.producer();
    tick_core::bus::publish_all(
        &producer,
        topics::CLEAN,
        ticks.iter().map(|t| (t.symbol.clone(), t.encode())),
    )
    .await
    .unwrap();
    bus.close(topics::CLEAN);
    let stats = Arc::new(PersisterStats::default());
    tokio::time::timeout(
        Duration::from_secs(30),
        persister::run_persister(
            Box::new(consumer),
            stores.writer.clone(),
            BatchConfig::default(),
            BreakerArgs::default(),
            DeadLetters::Store,
            stats.clone(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the persister finishes")
    .expect("the persister stores every tick");
    stats
}

/// Opens the store at `url` through the factory and counts its ticks; the error chain as a
/// string on failure.
async fn store_count(url: &StoreUrl) -> Result<u64, String> {
    let stores = url
        .open(&StoreOptions::pool(1))
        .await
        .map_err(|e| format!("{e:#}"))?;
    stores
        .reader()
        .unwrap()
        .count_ticks()
        .await
        .map_err(|e| tick_core::error::chain(&e))
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`, as scripts/services.sh
/// picks it.
fn pg_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: Vec<u64> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// A throwaway PostgreSQL that accepts only TLS; stopped and deleted on drop (also when the
/// test panics).
struct TlsPostgres {
    child: Child,
    port: u16,
    /// The CA that signed the server's certificate (PEM).
    ca: PathBuf,
    /// A CA that did not.
    other_ca: PathBuf,
    log: PathBuf,
    // Last: deleted after the server stopped.
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    async fn start(bin: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // PostgreSQL refuses to run as root: then it runs as the postgres OS user, as in
        // scripts/services.sh (which creates that user the same way).
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(dir.path())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let certs = Certificates::new();
        let ca = dir.path().join("ca.pem");
        let other_ca = dir.path().join("other-ca.pem");
        std::fs::write(&ca, certs.ca.to_pem().unwrap()).unwrap();
        std::fs::write(&other_ca, certs.other_ca.to_pem().unwrap()).unwrap();
        for (name, pem) in [
            ("server.crt", certs.server.to_pem().unwrap()),
            (
                "server.key",
                certs.server_key.private_key_to_pem_pkcs8().unwrap(),
            ),
        ] {
            let path = data.join(name);
            std::fs::write(&path, pem).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }

        let port = free_port();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            format!(
                "\n# tickflow TLS test\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
                 unix_socket_directories = ''\nssl = on\nssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\nfsync = off\nsynchronous_commit = off\n\
                 full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 20\n"
            )
            .as_bytes(),
        )
        .unwrap();
        // TLS only: `hostssl` lines, no `host` (nor `local`) line.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();

        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = as_owner(Command::new(bin.join("postgres")), owner)
            .arg("-D")
            .arg(&data)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start postgres");
        let mut pg = Self {
            child,
            port,
            ca,
            other_ca,
            log,
            _dir: dir,
        };
        pg.wait_ready().await;
        pg
    }

    /// Waits until the server takes a TLS connection; panics with its log if it does not.
    async fn wait_ready(&mut self) {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            self.port
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = match persister::postgres::connect(&url).await {
                Ok(c) => match c.batch_execute("CREATE DATABASE tickflow").await {
                    Ok(()) => return,
                    Err(e) => tick_core::error::chain(&e),
                },
                Err(e) => tick_core::error::chain(&e),
            };
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "the TLS PostgreSQL did not start ({exited:?}; last error: {e}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The store URL of the test database on `host` with the query `params`.
    fn url(&self, host: &str, params: &str) -> StoreUrl {
        let q = if params.is_empty() { "" } else { "?" };
        format!(
            "postgres://postgres@{host}:{}/tickflow{q}{params}",
            self.port
        )
        .parse()
        .unwrap()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT) ends the server and its backends; SIGKILL if it hangs.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user and group to run PostgreSQL as: the postgres OS user when the test runs as root
/// (created as scripts/services.sh creates it, if missing), else the test's own.
fn run_as() -> Option<(u32, u32)> {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        return None;
    }
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, "postgres"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u32>().ok())
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/bin/bash",
                "postgres",
            ])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd postgres failed");
    }
    Some((id("-u").unwrap(), id("-g").unwrap()))
}

fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}
