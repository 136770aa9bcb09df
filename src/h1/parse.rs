//! What both head parsers share: header spans in the read buffer, header maps, lengths, versions.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::WireError;

/// RFC 9112 §2.3: `HTTP/1.x` with any minor version is read as HTTP/1.1. httparse knows
/// only 1.0 and 1.1, so a higher minor digit in the first line is rewritten to 1 in place.
pub(super) fn accept_any_minor(line: &mut [u8], request: bool) {
    let line = match line.last() {
        Some(b'\r') if request => {
            let n = line.len() - 1;
            &mut line[..n]
        }
        _ => line,
    };
    let at = if request {
        line.len().checked_sub(8)
    } else {
        Some(0)
    };
    let Some(v) = at.and_then(|a| line.get_mut(a..a + 8)) else {
        return;
    };
    if v.starts_with(b"HTTP/1.") && (b'2'..=b'9').contains(&v[7]) {
        v[7] = b'1';
    }
}

/// Plain decimal digits (no sign, no spaces), at most 19 of them.
pub(super) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// The message's length from its `Content-Length` headers: `Ok(None)` without any, an error
/// for a malformed value or differing ones.
pub fn content_length(h: &HeaderMap) -> Result<Option<u64>, WireError> {
    let mut length: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or(WireError::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Length);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A decimal number, as text, without the formatting machinery.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Where one header's name and value sit in the buffer httparse read (start, end, start,
/// end), kept so the parser's borrow can end before the head is split off and frozen.
pub(super) type Span = (u32, u32, u32, u32);
pub(super) const NO_SPAN: Span = (0, 0, 0, 0);

/// Records where `headers` (which point into `buf`) are; returns how many.
pub(super) fn record_spans(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    out: &mut [Span],
) -> usize {
    for (span, h) in out.iter_mut().zip(headers) {
        let n = offset(buf, h.name.as_bytes());
        let v = offset(buf, h.value);
        *span = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
    }
    headers.len().min(out.len())
}

/// Which framing-related headers a head carries, noted while its map is built so the
/// usual absent case costs no lookups.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    pub(super) connection: bool,
    pub(super) content_length: bool,
    pub(super) transfer_encoding: bool,
    pub(super) upgrade: bool,
    pub(super) expect: bool,
    /// How many `Host` fields (at most 2 counted), and where the last one's value is.
    pub(super) hosts: u8,
    pub(super) host: (u32, u32),
}

/// The header map, its values sharing `head` (the split-off head) without copies.
pub(super) fn header_map(head: &Bytes, spans: &[Span]) -> Option<(HeaderMap, Seen)> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut seen = Seen::default();
    for &(ns, ne, vs, ve) in spans {
        let name = HeaderName::from_bytes(head.get(ns as usize..ne as usize)?).ok()?;
        let value = head.get(vs as usize..ve as usize)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(value)).ok()?;
        if name == header::CONNECTION {
            seen.connection = true;
        } else if name == header::CONTENT_LENGTH {
            seen.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            seen.transfer_encoding = true;
        } else if name == header::UPGRADE {
            seen.upgrade = true;
        } else if name == header::EXPECT {
            seen.expect = true;
        } else if name == header::HOST {
            seen.hosts = seen.hosts.saturating_add(1).min(2);
            seen.host = (vs, ve);
        }
        headers.append(name, value);
    }
    Some((headers, seen))
}

/// Where `part` (a slice of `buf`) starts in `buf`.
pub(super) fn offset(buf: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize) as u32
}
