//! The cause carried by the library-boundary errors ([`BusError`](crate::bus::BusError),
//! [`StoreError`](crate::store::StoreError)): what failed, and the client library's own error
//! when there is one, reachable through `Error::source` (so `{:#}` prints the chain and a caller
//! can downcast it) instead of flattened into a string.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// What failed and, when there is one, the error that made it fail.
#[derive(Debug, Clone)]
pub struct Cause {
    context: Option<String>,
    error: Option<Arc<dyn Error + Send + Sync>>,
}

impl Cause {
    /// Returns a cause: `context` says what failed, `error` why.
    pub fn new(context: impl Into<String>, error: impl Error + Send + Sync + 'static) -> Self {
        Self {
            context: Some(context.into()),
            error: Some(Arc::new(error)),
        }
    }

    /// Returns a cause that is `error` itself (its message, its source).
    pub fn wrap(error: impl Error + Send + Sync + 'static) -> Self {
        Self {
            context: None,
            error: Some(Arc::new(error)),
        }
    }

    /// Returns a cause with a message and no underlying error.
    pub fn msg(context: impl Into<String>) -> Self {
        Self {
            context: Some(context.into()),
            error: None,
        }
    }

    /// Returns the underlying error, if any.
    pub fn error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.error.as_deref()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.context, &self.error) {
            (Some(c), _) => f.write_str(c),
            (None, Some(e)) => fmt::Display::fmt(e, f),
            (None, None) => f.write_str("unknown error"),
        }
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match (&self.context, &self.error) {
            (Some(_), Some(e)) => Some(e.as_ref()),
            (None, Some(e)) => e.source(),
            _ => None,
        }
    }
}

/// Returns an error and its causes as one line, `outer: cause: root cause`: what a log line
/// shows of a library-boundary error, whose `Display` names only its own layer.
pub fn chain(error: &dyn Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_keeps_its_error_in_the_chain_without_repeating_it() {
        let io = || std::io::Error::other("connection refused");
        let c = Cause::new("failed to connect", io());
        assert_eq!(c.to_string(), "failed to connect");
        assert_eq!(c.source().unwrap().to_string(), "connection refused");
        assert!(
            c.error()
                .unwrap()
                .downcast_ref::<std::io::Error>()
                .is_some()
        );
        let w = Cause::wrap(io());
        assert_eq!(w.to_string(), "connection refused");
        assert!(
            w.source().is_none(),
            "the wrapped error is the message, not repeated"
        );
        assert_eq!(
            format!("{:#}", anyhow::Error::new(c)),
            "failed to connect: connection refused"
        );
        assert_eq!(Cause::msg("poisoned").to_string(), "poisoned");
        let e = crate::store::StoreError::Unavailable(Cause::new("no database connection", io()));
        assert_eq!(e.to_string(), "database unavailable");
        assert_eq!(
            chain(&e),
            "database unavailable: no database connection: connection refused"
        );
    }
}
