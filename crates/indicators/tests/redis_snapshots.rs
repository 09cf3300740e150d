//! The Redis snapshot store against a real redis-server the test starts itself (on free
//! loopback ports, found as scripts/services.sh finds it: `redis-server` on the PATH, from the
//! Debian package): with `--requirepass`, the password URL (and an ACL user's) works and a
//! URL without it fails at start with a clear error; over TLS (`--tls-port`, a certificate
//! made at test time with the `openssl` tool), `rediss://` works, checks the certificate, and
//! trusts a private CA named by `SSL_CERT_FILE`.
//!
//! Without redis-server the tests skip, unless `TICKFLOW_REQUIRE_SERVICES=1`
//! (scripts/test.sh), where they fail.

use prost::Message;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tick_core::pb;
use tick_core::testenv::free_port;

const PASSWORD: &str = "sn4pshot-s3cret";

#[tokio::test]
async fn the_snapshot_store_authenticates_with_the_password_in_the_url() {
    let Some(bin) = redis_server() else { return };
    let redis = Redis::start(&bin, &[]).await.running();
    let port = redis.port;

    // The password URL: snapshots are written, with their lifetime.
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    write_and_read(&url, &url, "EURUSD").await;

    // Without it, or with a wrong one, the writer does not start, and says why.
    let e = start_error(&format!("redis://127.0.0.1:{port}")).await;
    assert!(
        e.contains("NOAUTH") && e.contains("redis://:PASSWORD@host:port"),
        "no password: {e}"
    );
    let e = start_error(&format!("redis://:wrong-pass@127.0.0.1:{port}")).await;
    assert!(
        e.to_lowercase().contains("authentication failed")
            && !e.contains("wrong-pass")
            && e.contains(":***@"),
        "a wrong password, never shown: {e}"
    );

    // An ACL user: redis://USER:PASSWORD@host:port.
    let mut admin = connect(&url).await;
    let () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "tickflow",
            "on",
            ">acl-pass",
            "~tickflow:*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    write_and_read(
        &format!("redis://tickflow:acl-pass@127.0.0.1:{port}"),
        &url,
        "GBPUSD",
    )
    .await;
    let e = start_error(&format!("redis://tickflow:nope@127.0.0.1:{port}")).await;
    assert!(
        e.to_lowercase().contains("authentication failed") && !e.contains("nope"),
        "an ACL user's wrong password: {e}"
    );
}

#[tokio::test]
async fn rediss_encrypts_and_checks_the_certificate() {
    let Some(bin) = redis_server() else { return };
    let Some(openssl) = openssl_tool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(&openssl, dir.path());
    let tls_port = free_port();
    let redis = Redis::start(
        &bin,
        &[
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&certs.server_cert),
            "--tls-key-file".into(),
            path(&certs.server_key),
            "--tls-ca-cert-file".into(),
            path(&certs.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
    )
    .await;
    let Some(redis) = redis.tls_or_skip() else {
        return;
    };
    let tls = format!("rediss://:{PASSWORD}@localhost:{tls_port}");

    // Encrypted without checking the certificate: `#insecure`.
    let insecure = format!("{tls}/#insecure");
    write_and_read(&insecure, &insecure, "USDJPY").await;
    // Checked by default: the test CA is not among the system's.
    let e = start_error(&tls).await;
    assert!(
        e.contains("certificate verify failed"),
        "rediss:// checks the certificate: {e}"
    );
    // A private CA is trusted through SSL_CERT_FILE (OpenSSL's variable), which must be set
    // before the process starts: the check runs in a child process of this test binary.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rediss_trusts_the_ca_of_ssl_cert_file",
            "--include-ignored",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", &certs.ca)
        .env("TICKFLOW_TEST_REDISS", format!("{PASSWORD} {tls_port}"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success()
            && stdout.contains("1 passed")
            && stderr.contains("IP address mismatch"),
        "the SSL_CERT_FILE check:\n{stdout}\n{stderr}"
    );
    drop(redis);
}

/// Run by `rediss_encrypts_and_checks_the_certificate` with `SSL_CERT_FILE` set.
#[tokio::test]
#[ignore = "run by rediss_encrypts_and_checks_the_certificate, with SSL_CERT_FILE set"]
async fn rediss_trusts_the_ca_of_ssl_cert_file() {
    let Ok(spec) = std::env::var("TICKFLOW_TEST_REDISS") else {
        eprintln!("nothing to do: run by rediss_encrypts_and_checks_the_certificate");
        return;
    };
    let (password, port) = spec.split_once(' ').unwrap();
    let url = format!("rediss://:{password}@localhost:{port}");
    write_and_read(&url, &url, "XAUUSD").await;
    // The certificate names localhost only: the host name is checked too.
    let e = start_error(&format!("rediss://:{password}@127.0.0.1:{port}")).await;
    assert!(
        e.contains("certificate verify failed"),
        "the host name is checked: {e}"
    );
}

/// Starts a snapshot writer on `url`, writes a snapshot of `symbol`, and reads it back
/// through `read_url`.
async fn write_and_read(url: &str, read_url: &str, symbol: &str) {
    let (tx, task) = indicators::snapshots::start_writer(url, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the writer starts on {url}: {e:#}"));
    let snapshot = pb::Snapshot {
        symbol: symbol.into(),
        ..Default::default()
    };
    tx.send(vec![snapshot.clone()]).await.unwrap();
    drop(tx);
    task.await.unwrap();
    let mut conn = connect(read_url).await;
    let key = indicators::snapshots::key(symbol);
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        pb::Snapshot::decode(bytes.as_slice()).unwrap(),
        snapshot,
        "{key} read back"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "the snapshot expires: ttl {ttl}");
}

/// The error of a writer that must not start, with its causes.
async fn start_error(url: &str) -> String {
    match indicators::snapshots::start_writer(url, Duration::from_secs(60)).await {
        Ok(_) => panic!("the writer started on {url}"),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("{}: {e}", indicators::snapshots::redact(url));
            e
        }
    }
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `redis-server` on the PATH (as scripts/services.sh looks for it); `None` skips the test,
/// which fails instead under `TICKFLOW_REQUIRE_SERVICES=1`.
fn redis_server() -> Option<PathBuf> {
    let found = on_path("redis-server");
    if found.is_none() {
        assert!(
            std::env::var("TICKFLOW_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "redis-server is not on the PATH but TICKFLOW_REQUIRE_SERVICES=1: install the \
             redis-server package (scripts/services.sh up does)"
        );
        eprintln!("skipping: redis-server is not on the PATH (scripts/services.sh up installs it)");
    }
    found
}

/// The `openssl` tool (the postgresql package scripts/services.sh installs depends on it).
fn openssl_tool() -> Option<PathBuf> {
    let found = on_path("openssl");
    if found.is_none() {
        assert!(
            std::env::var("TICKFLOW_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "the openssl tool is not on the PATH but TICKFLOW_REQUIRE_SERVICES=1: install the \
             openssl package"
        );
        eprintln!("skipping: no openssl tool to make the test certificates with");
    }
    found
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A redis-server of the test's own, with `--requirepass`; stopped on drop (also when the
/// test panics).
struct Redis {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start(bin: &Path, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("redis.log");
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--logfile"])
            .arg(&log)
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut redis = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            if redis.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                return redis; // tls_or_skip / the first use reports it with the log
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server; panics with its log if it did not start.
    fn running(mut self) -> Self {
        if self.child.try_wait().unwrap().is_some() {
            panic!(
                "redis-server did not start:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self
    }

    /// The server, or `None` (the TLS test skips) when this redis-server was built without
    /// TLS; panics with the log when it failed for another reason.
    fn tls_or_skip(mut self) -> Option<Self> {
        if self.child.try_wait().unwrap().is_none() {
            return Some(self);
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if log.contains("TLS") && log.contains("not") && log.contains("support") {
            eprintln!("skipping: this redis-server was built without TLS:\n{log}");
            return None;
        }
        panic!("redis-server with TLS did not start:\n{log}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
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

struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A CA and a certificate for `localhost` (only: not 127.0.0.1) it signed, made with the
/// `openssl` tool in `dir`.
fn make_certificates(openssl: &Path, dir: &Path) -> Certificates {
    let run = |args: &[&str]| {
        let out = Command::new(openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
        &["-subj", "/CN=tickflow test CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    Certificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    }
}
