//! Body decoding, the same for client requests and backend responses: Content-Length,
//! chunked (CRLF only, strict sizes and extensions, trailers read and dropped), and
//! until-close.

use bytes::{Bytes, BytesMut};

use super::{Framing, WireError};

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// What a decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete piece; read more.
    NeedMore,
    /// The body is complete.
    Done,
}

/// Reads one body of the framing its head declared, piece by piece, from a buffer the
/// caller fills. Bytes beyond the body stay in the buffer.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
            Framing::Close => State::Close,
        };
        BodyDecoder { state }
    }

    /// The next piece of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        match &mut self.state {
            State::Done => Ok(Decoded::Done),
            _ if buf.is_empty() => Ok(Decoded::NeedMore),
            State::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.state = State::Done;
                }
                Ok(Decoded::Data(buf.split_to(n as usize).freeze()))
            }
            State::Chunked(d) => {
                let r = d.decode(buf);
                if matches!(r, Ok(Decoded::Done)) {
                    self.state = State::Done;
                }
                r
            }
            State::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// The stream ended: fine for an until-close body, a short body otherwise.
    pub fn eof(&mut self) -> Result<(), WireError> {
        match self.state {
            State::Done => Ok(()),
            State::Close => {
                self.state = State::Done;
                Ok(())
            }
            State::Length(_) => Err(WireError::BodyShort),
            State::Chunked(_) => Err(WireError::Chunk),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Bytes still to come, when known.
    pub fn exact_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }
}

/// Decodes a chunked body incrementally (RFC 9112 §7.1); trailers are checked and dropped.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line).ok_or(WireError::Chunk)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        // A wrong first byte is wrong however many follow.
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(WireError::Chunk);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunk);
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else if !trailer_line(&line) {
                        return Err(WireError::Chunk);
                    }
                }
                ChunkState::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// Removes one CRLF-terminated line from the front of `buf`, without the CRLF. A bare LF,
/// or a CR anywhere but before the LF, is an error.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i <= MAX_LINE => {
            if i == 0 || buf[i - 1] != b'\r' || memchr::memchr(b'\r', &buf[..i - 1]).is_some() {
                return Err(WireError::Chunk);
            }
            let mut line = buf.split_to(i + 1).freeze();
            line.truncate(i - 1);
            Ok(Some(line))
        }
        Some(_) => Err(WireError::Chunk),
        None if buf.len() > MAX_LINE => Err(WireError::Chunk),
        // A CR followed by anything but LF can already be refused.
        None => match memchr::memchr(b'\r', buf) {
            Some(i) if i + 1 < buf.len() => Err(WireError::Chunk),
            _ => Ok(None),
        },
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits (leading zeros allowed, the value must fit 64
/// bits), then nothing or `;` extensions of visible characters, spaces and tabs.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let (hex, rest) = line.split_at(digits);
    if !(rest.is_empty() || rest[0] == b';' && rest.iter().all(|&b| field_char(b))) {
        return None;
    }
    let significant = &hex[hex.iter().take_while(|&&b| b == b'0').count()..];
    if significant.len() > 15 {
        return None; // more than any body tether would relay, and overflow-safe
    }
    significant.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    })
}

/// A byte allowed in a field value or chunk extension (no controls but HTAB).
fn field_char(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

/// `name: value` with a token name and no obs-fold.
fn trailer_line(line: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', line) else {
        return false;
    };
    let (name, value) = line.split_at(colon);
    !name.is_empty() && name.iter().all(|&b| tchar(b)) && value.iter().all(|&b| field_char(b))
}

/// RFC 9110 §5.6.2 token characters.
pub fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    pub fn decode_all(mut input: BytesMut) -> Result<Vec<u8>, WireError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        loop {
            match d.decode(&mut input)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Done => return Ok(out),
                Decoded::NeedMore => return Err(WireError::BodyShort),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let mut buf = BytesMut::from(&body[..]);
        assert_eq!(
            decode_all(buf.split_to(body.len() - 4)).unwrap(),
            b"hello world"
        );
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn chunked_decoding_resumes_byte_by_byte() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut done = false;
        for &b in body.iter() {
            buf.put_u8(b);
            loop {
                match d.decode(&mut buf).unwrap() {
                    Decoded::Data(x) => out.extend_from_slice(&x),
                    Decoded::NeedMore => break,
                    Decoded::Done => {
                        done = true;
                        break;
                    }
                }
            }
        }
        assert!(done);
        assert_eq!(out, b"abc0123456789abcdef");
    }

    #[test]
    fn length_and_close_bodies() {
        let mut d = BodyDecoder::new(Framing::Length(3));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("abc"))
        );
        assert!(d.is_done());
        assert_eq!(&buf[..], b"def", "bytes past the length stay");
        let mut d = BodyDecoder::new(Framing::Length(9));
        let _ = d.decode(&mut buf);
        assert_eq!(d.eof(), Err(WireError::BodyShort));
        let mut d = BodyDecoder::new(Framing::Close);
        assert_eq!(d.eof(), Ok(()));
    }
}
