//! Head and body encoding. Only [`finish_head`] writes framing headers, and it returns the
//! [`BodyEncoder`] for the framing it declared: the encoder refuses bytes beyond the
//! declared length and reports a short body, so no caller can emit an ambiguous message.

use bytes::{BufMut, BytesMut};
use http::Method;

use super::parse::decimal;
use super::{Framing, WireError};

/// Starts a request head: `METHOD target HTTP/1.1`.
pub fn request_line(method: &Method, target: &str, out: &mut BytesMut) {
    out.reserve(512);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
}

/// One `name: value` line.
pub fn header_line(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Ends a head with the one framing header `framing` needs (`Content-Length` or
/// `Transfer-Encoding: chunked`, none for an empty or until-close body) and returns the
/// encoder that holds the body to it.
pub fn finish_head(framing: Framing, out: &mut BytesMut) -> BodyEncoder {
    match framing {
        Framing::Length(n) => header_line(b"content-length", decimal(n, &mut [0u8; 20]), out),
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    out.put_slice(b"\r\n");
    BodyEncoder::new(framing)
}

/// The size line that goes before one chunk of a chunked body.
pub fn chunk_header(len: usize, out: &mut BytesMut) {
    out.reserve(20);
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// Holds a body to the framing its head declared.
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    framing: Framing,
    /// Bytes still allowed (Length) .
    left: u64,
}

impl BodyEncoder {
    fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyEncoder { framing, left }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Accounts for `len` body bytes about to be written and appends what goes before them
    /// (a chunk size line). An error, writing nothing: more bytes than declared.
    pub fn prefix(&mut self, len: usize, out: &mut BytesMut) -> Result<(), WireError> {
        match self.framing {
            _ if len == 0 => Ok(()),
            Framing::Empty => Err(WireError::BodyTooLong),
            Framing::Length(_) => {
                self.left = self
                    .left
                    .checked_sub(len as u64)
                    .ok_or(WireError::BodyTooLong)?;
                Ok(())
            }
            Framing::Chunked => {
                chunk_header(len, out);
                Ok(())
            }
            Framing::Close => Ok(()),
        }
    }

    /// What goes after `len` body bytes (the CRLF ending a chunk).
    pub fn suffix(&self, len: usize, out: &mut BytesMut) {
        if self.framing == Framing::Chunked && len > 0 {
            out.put_slice(b"\r\n");
        }
    }

    /// The body ended: appends the last chunk, or reports a body shorter than declared.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), WireError> {
        match self.framing {
            Framing::Chunked => {
                out.put_slice(b"0\r\n\r\n");
                self.framing = Framing::Empty;
                Ok(())
            }
            Framing::Length(_) if self.left > 0 => Err(WireError::BodyShort),
            _ => Ok(()),
        }
    }

    /// Appends `data` framed (chunk line, bytes, CRLF): for small pieces.
    pub fn encode(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
        self.prefix(data.len(), out)?;
        out.put_slice(data);
        self.suffix(data.len(), out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_header_is_lowercase_hex() {
        for (n, want) in [(1usize, "1\r\n"), (255, "ff\r\n"), (65536, "10000\r\n")] {
            let mut out = BytesMut::new();
            chunk_header(n, &mut out);
            assert_eq!(&out[..], want.as_bytes());
        }
    }

    #[test]
    fn the_encoder_holds_the_body_to_the_declared_length() {
        let mut out = BytesMut::new();
        let mut e = finish_head(Framing::Length(5), &mut out);
        assert_eq!(&out[..], b"content-length: 5\r\n\r\n");
        e.encode(b"hel", &mut out).unwrap();
        assert_eq!(e.encode(b"lo!", &mut out), Err(WireError::BodyTooLong));
        assert_eq!(
            &out[..],
            b"content-length: 5\r\n\r\nhel",
            "nothing of the refused piece"
        );
        assert_eq!(e.finish(&mut out), Err(WireError::BodyShort));
        e.encode(b"lo", &mut out).unwrap();
        assert_eq!(e.finish(&mut out), Ok(()));

        let mut out = BytesMut::new();
        let mut e = finish_head(Framing::Empty, &mut out);
        assert_eq!(&out[..], b"\r\n");
        assert_eq!(e.encode(b"x", &mut out), Err(WireError::BodyTooLong));

        let mut out = BytesMut::new();
        let mut e = finish_head(Framing::Chunked, &mut out);
        e.encode(b"abc", &mut out).unwrap();
        e.encode(b"", &mut out).unwrap();
        e.finish(&mut out).unwrap();
        assert_eq!(
            &out[..],
            b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
    }
}
