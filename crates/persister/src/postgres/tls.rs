//! TLS for every PostgreSQL connection the workspace makes: the store's pool, the admin
//! connections of tests and benchmarks, all built here from the URL.
//!
//! The URL's `sslmode` and `sslrootcert` follow libpq:
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default) | if the server offers it | no |
//! | `require` | always | no; as `verify-ca` when `sslrootcert` names a file |
//! | `verify-ca` | always | chain to a trusted CA |
//! | `verify-full` | always | chain to a trusted CA, and the host name |
//!
//! `sslrootcert=PATH` names a PEM file of CA certificates, then the only ones trusted;
//! without it (or with `sslrootcert=system`) the system's CAs are trusted. tokio-postgres's
//! own parser knows neither `verify-ca`, `verify-full` nor `sslrootcert`, so both are taken
//! off the URL here ([`split_tls_params`]) before it parses the rest.

use postgres_native_tls::MakeTlsConnector;
use std::path::PathBuf;
use std::str::FromStr;
use tick_core::error::Cause;
use tick_core::store::StoreError;

/// libpq's `sslmode` values that tickflow supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt if the server offers it; the certificate is not checked.
    Prefer,
    /// Always encrypt; the certificate is not checked unless a root certificate file is named.
    Require,
    /// Always encrypt; the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// Which CA certificates are trusted when the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The system's (`sslrootcert` absent or `system`).
    System,
    /// Only those in this PEM file.
    File(PathBuf),
}

/// The TLS parameters of a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode` (libpq's default, `prefer`, when absent).
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: RootCert,
}

/// How the server's certificate is checked, from the mode and the root certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndHost,
}

impl TlsParams {
    fn verify(&self) -> Verify {
        match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer, _) => Verify::Nothing,
            // libpq: "if a root CA file exists, sslmode=require behaves as verify-ca".
            (SslMode::Require, RootCert::File(_)) => Verify::Chain,
            (SslMode::Require, RootCert::System) => Verify::Nothing,
            (SslMode::VerifyCa, _) => Verify::Chain,
            (SslMode::VerifyFull, _) => Verify::ChainAndHost,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` off the query of a `postgres://` URL: returns the URL
/// without them (for tokio-postgres to parse) and what they say. Other parameters stay, in
/// their order. A string that is not a URL (libpq's `key=value` form) is returned as it is,
/// with the defaults: tokio-postgres then reads its `sslmode` (`disable`, `prefer` or
/// `require`, never checking the certificate).
pub fn split_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams {
        mode: SslMode::Prefer,
        root_cert: RootCert::System,
    };
    let mut root_cert_named = false;
    let Some(scheme_end) = url.find("://") else {
        return Ok((url.to_string(), params));
    };
    // As tokio-postgres reads a URL: the user and password end at the first '@'.
    let authority = url[scheme_end + 3..]
        .find('@')
        .map_or(scheme_end + 3, |at| scheme_end + 3 + at + 1);
    let Some(q) = url[authority..].find('?').map(|i| authority + i) else {
        return Ok((url.to_string(), params));
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => params.mode = percent_decode(value)?.parse()?,
            "sslrootcert" => {
                let value = percent_decode(value)?;
                params.root_cert = match value.as_str() {
                    "" => return Err("sslrootcert is empty".into()),
                    "system" => RootCert::System,
                    path => RootCert::File(PathBuf::from(path)),
                };
                root_cert_named = true;
            }
            _ if pair.is_empty() => {}
            _ => kept.push(pair),
        }
    }
    // libpq 16 refuses to trust the system's many CAs without checking the host name.
    if root_cert_named
        && params.root_cert == RootCert::System
        && !matches!(params.mode, SslMode::VerifyFull | SslMode::Disable)
    {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full (not {:?}): any public CA would do",
            params.mode
        ));
    }
    let mut rest = url[..q].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, params))
}

/// Decodes `%XX` escapes (a URL's `sslrootcert` path may carry them).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// A PostgreSQL URL parsed for connecting: tokio-postgres's configuration (with the `sslmode`
/// it understands) and the TLS connector its `sslmode` and `sslrootcert` call for. This is
/// the one place a PostgreSQL connection's TLS is decided.
pub fn config(url: &str) -> Result<(tokio_postgres::Config, MakeTlsConnector), StoreError> {
    let invalid =
        |e: String| StoreError::Unavailable(Cause::msg(format!("invalid database url: {e}")));
    let (rest, params) = split_tls_params(url).map_err(invalid)?;
    let mut cfg = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| StoreError::Unavailable(Cause::new("invalid database url", e)))?;
    if url.contains("://") {
        cfg.ssl_mode(match params.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    }
    let tls = connector(&params).map_err(|e| StoreError::Unavailable(Cause::msg(e)))?;
    Ok((cfg, tls))
}

/// Builds the TLS connector for `params`.
fn connector(params: &TlsParams) -> Result<MakeTlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    match params.verify() {
        Verify::Nothing => {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        Verify::Chain => {
            builder.danger_accept_invalid_hostnames(true);
        }
        Verify::ChainAndHost => {}
    }
    if let RootCert::File(path) = &params.root_cert {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
        let certs = native_tls::Certificate::stack_from_pem(&pem)
            .map_err(|e| format!("sslrootcert {} is not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "sslrootcert {} holds no certificate",
                path.display()
            ));
        }
        builder.disable_built_in_roots(true);
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    postgres_native_tls::set_postgresql_alpn(&mut builder);
    let tls = builder
        .build()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    Ok(MakeTlsConnector::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsParams) {
        split_tls_params(url).unwrap()
    }

    #[test]
    fn tls_parameters_come_off_the_url() {
        let (rest, p) = split("postgres://u:p@db:5432/tickflow");
        assert_eq!(rest, "postgres://u:p@db:5432/tickflow");
        assert_eq!((p.mode, p.root_cert), (SslMode::Prefer, RootCert::System));

        let (rest, p) = split(
            "postgres://u@db/t?application_name=x&sslmode=verify-full&sslrootcert=/etc/ca%20dir/ca.pem&connect_timeout=5",
        );
        assert_eq!(
            rest,
            "postgres://u@db/t?application_name=x&connect_timeout=5"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert, RootCert::File("/etc/ca dir/ca.pem".into()));
        assert_eq!(p.verify(), Verify::ChainAndHost);

        let (rest, p) = split("postgresql://db/t?sslmode=require");
        assert_eq!(rest, "postgresql://db/t");
        assert_eq!(p.verify(), Verify::Nothing);
        let (_, p) = split("postgresql://db/t?sslmode=require&sslrootcert=ca.pem");
        assert_eq!(
            p.verify(),
            Verify::Chain,
            "require with a CA file is verify-ca"
        );
        let (_, p) = split("postgresql://db/t?sslrootcert=ca.pem&sslmode=verify-ca");
        assert_eq!(p.verify(), Verify::Chain);
        let (_, p) = split("postgresql://db/t?sslmode=verify-full&sslrootcert=system");
        assert_eq!(
            (p.verify(), p.root_cert),
            (Verify::ChainAndHost, RootCert::System)
        );
        let (_, p) = split("postgresql://db/t?sslmode=disable&sslrootcert=ca.pem");
        assert_eq!(p.verify(), Verify::Nothing);
        // The last of a repeated parameter wins, as in libpq.
        let (_, p) = split("postgres://db/t?sslmode=disable&sslmode=verify-ca");
        assert_eq!(p.mode, SslMode::VerifyCa);
        // A '?' in the password is not the query.
        let (rest, p) = split("postgres://u:a?b@db/t?sslmode=require");
        assert_eq!(
            (rest.as_str(), p.mode),
            ("postgres://u:a?b@db/t", SslMode::Require)
        );
    }

    #[test]
    fn a_key_value_string_is_left_to_tokio_postgres() {
        let (rest, p) = split("host=db user=u sslmode=require");
        assert_eq!(rest, "host=db user=u sslmode=require");
        assert_eq!(p.verify(), Verify::Nothing);
    }

    #[test]
    fn bad_tls_parameters_are_refused_with_the_reason() {
        for (url, says) in [
            ("postgres://db/t?sslmode=allow", "verify-full"),
            ("postgres://db/t?sslmode=VERIFY-FULL", "not supported"),
            ("postgres://db/t?sslmode=require&sslrootcert=", "empty"),
            (
                "postgres://db/t?sslmode=require&sslrootcert=system",
                "verify-full",
            ),
            (
                "postgres://db/t?sslmode=verify-ca&sslrootcert=%zz",
                "percent",
            ),
        ] {
            let e = split_tls_params(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn the_config_carries_the_mode_tokio_postgres_knows() {
        use tokio_postgres::config::SslMode as Pg;
        for (mode, pg) in [
            ("disable", Pg::Disable),
            ("prefer", Pg::Prefer),
            ("require", Pg::Require),
            ("verify-ca", Pg::Require),
            ("verify-full", Pg::Require),
        ] {
            let (cfg, _) = config(&format!("postgres://u@db:5432/t?sslmode={mode}")).unwrap();
            assert_eq!(cfg.get_ssl_mode(), pg, "{mode}");
            assert_eq!(cfg.get_dbname(), Some("t"));
        }
        let (cfg, _) = config("postgres://u@db/t").unwrap();
        assert_eq!(cfg.get_ssl_mode(), Pg::Prefer, "libpq's default");
        let e = config("postgres://db/t?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(
            tick_core::error::chain(&e).contains("/nonexistent/ca.pem"),
            "{}",
            tick_core::error::chain(&e)
        );
    }
}
