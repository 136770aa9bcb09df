//! Why a backend did not answer ([`UpstreamError`]), and the kinds those errors are counted
//! under ([`ErrorKind`]).

use std::io;

use crate::h1::WireError;

/// Why a backend did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("could not resolve backend address")]
    Resolve,
    #[error("TLS handshake with the backend failed: {0}")]
    Tls(#[source] io::Error),
    #[error("backend did not answer in time")]
    ResponseTimeout,
    #[error("backend connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("backend closed the connection before answering")]
    Closed,
    #[error("backend sent a bad response: {0}")]
    Wire(#[from] WireError),
    #[error("backend broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("reading the client's request body failed: {0}")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl UpstreamError {
    /// Failures before any byte of the request reached the backend: safe to retry elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_)
                | UpstreamError::ConnectTimeout
                | UpstreamError::Resolve
                | UpstreamError::Tls(_)
        )
    }

    /// The backend failed before answering (reset, closed, broken response), as opposed to
    /// being slow: a request that can be replayed may go to another backend.
    pub fn is_replayable_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Io(_) | UpstreamError::Closed | UpstreamError::Wire(_)
        )
    }

    /// What this error is counted as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            UpstreamError::Connect(_) => ErrorKind::Connect,
            UpstreamError::ConnectTimeout => ErrorKind::ConnectTimeout,
            UpstreamError::Resolve => ErrorKind::Resolve,
            UpstreamError::Tls(_) => ErrorKind::Tls,
            UpstreamError::ResponseTimeout => ErrorKind::ResponseTimeout,
            UpstreamError::Io(_) | UpstreamError::Closed => ErrorKind::Response,
            UpstreamError::Wire(_) | UpstreamError::Protocol(_) => ErrorKind::Protocol,
            UpstreamError::ClientBody(_) => ErrorKind::ClientBody,
        }
    }
}

/// The kinds of upstream error counted per backend (`upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connect was refused or failed.
    Connect,
    /// TCP connect and TLS handshake took longer than `connect_timeout`.
    ConnectTimeout,
    /// The backend's name did not resolve.
    Resolve,
    /// The TLS handshake with an HTTPS backend failed.
    Tls,
    /// No response head within `response_timeout`.
    ResponseTimeout,
    /// The connection failed or closed before a response head.
    Response,
    /// The backend sent something that is not valid HTTP/1.1 (or a 101 nobody asked for).
    Protocol,
    /// The client's request body broke off or was malformed while it was being forwarded:
    /// counted on the backend it was going to, so aborted uploads show.
    ClientBody,
}

impl ErrorKind {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::ConnectTimeout,
        ErrorKind::Resolve,
        ErrorKind::Tls,
        ErrorKind::ResponseTimeout,
        ErrorKind::Response,
        ErrorKind::Protocol,
        ErrorKind::ClientBody,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Resolve => "resolve",
            ErrorKind::Tls => "tls",
            ErrorKind::ResponseTimeout => "response_timeout",
            ErrorKind::Response => "response",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ClientBody => "client_body",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_in_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?} out of place in ALL");
        }
        let mut labels: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn a_broken_client_body_is_counted_as_such() {
        let e = UpstreamError::ClientBody("cut off".into());
        assert_eq!(e.kind(), ErrorKind::ClientBody);
        assert!(!e.is_connect() && !e.is_replayable_failure());
    }
}
