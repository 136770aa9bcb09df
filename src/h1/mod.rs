//! HTTP/1.1 on the wire, both directions, in one place: head parsing (`request`, `response`,
//! and `parse` for what both share), body decoding (`decode`), head and body encoding
//! (`encode`), and the few shared pieces — the body-kind type, the error type, the hop-by-hop
//! list and the token splitter.

mod decode;
mod encode;
mod parse;
mod request;
mod response;

pub use decode::{BodyDecoder, ChunkedDecoder, Decoded};
pub use encode::{chunk_header, finish_head, header_line, request_line, BodyEncoder};
pub use parse::{content_length, decimal};
pub use request::{parse_request, RequestHead};
pub use response::{parse_response, ResponseHead};

/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 128;

/// A message tether refuses to read or to write. From a client it is answered with
/// [`WireError::status`]; from a backend it is a 502 (or, mid-body, a cut connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed head")]
    Head,
    /// The first line does not end in `HTTP/1.x`: the peer does not speak HTTP/1 (an
    /// HTTP/2 client with a bad preface, TLS on a plain port), so it gets no HTTP/1 answer.
    #[error("not HTTP/1.x")]
    Version,
    #[error("head too large")]
    TooLarge,
    #[error("request line too long")]
    LineTooLong,
    #[error("conflicting or invalid Content-Length")]
    Length,
    #[error("Transfer-Encoding that is not exactly chunked, or beside Content-Length")]
    TransferEncoding,
    #[error("missing, repeated or invalid Host")]
    Host,
    #[error("request target not allowed")]
    Target,
    #[error("CONNECT is not served (a reverse proxy, not a tunnel)")]
    Connect,
    #[error("malformed chunked body")]
    Chunk,
    #[error("body longer than its head declared")]
    BodyTooLong,
    #[error("body shorter than its head declared")]
    BodyShort,
}

impl WireError {
    /// The status a client gets for a request refused with this error.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            WireError::TooLarge => S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            WireError::LineTooLong => S::URI_TOO_LONG,
            WireError::Connect => S::METHOD_NOT_ALLOWED,
            WireError::Version => S::HTTP_VERSION_NOT_SUPPORTED,
            _ => S::BAD_REQUEST,
        }
    }
}

/// How a message body is delimited (RFC 9112 §6.3), for requests and responses alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no length, `Content-Length: 0`, HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Headers that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1), plus the
/// framing header `Transfer-Encoding`: none is ever copied from one side to the other.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether `name` is in [`HOP_BY_HOP`] (any case).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // eq_ignore_ascii_case compares lengths first: most names fail at once.
    HOP_BY_HOP
        .iter()
        .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// The non-empty items of a comma-separated header value (Connection, Transfer-Encoding,
/// Content-Length).
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a comma-separated header (e.g. `Connection`) lists `token`.
pub fn has_token(h: &http::HeaderMap, name: http::header::HeaderName, token: &[u8]) -> bool {
    h.get_all(name)
        .iter()
        .any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(token)))
}
