//! Message bodies: the chunked coding and the one decoder for every framing, used for
//! request bodies from clients and response bodies from upstreams alike.

use bytes::{Buf, Bytes, BytesMut};

/// The longest chunk-size line (with extensions) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted after the last chunk (they are read and dropped).
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Where a body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many body bytes are still to come.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of the current chunk are still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data is next.
    ChunkEnd,
    /// Trailer lines after the last chunk, this many bytes of them read so far.
    Trailers(usize),
    /// Everything until the connection closes.
    UntilClose,
    /// The body is complete.
    Done,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes, taken from the front of the buffer.
    Data(Bytes),
    /// More bytes must be read before anything more can be decoded.
    Need,
    /// The body is complete; what follows in the buffer is the next message.
    End,
}

/// The one body decoder: reads a body of any framing from the front of a connection's
/// buffer, taking only what belongs to the body, so that the next message on the
/// connection starts where it stops. Data comes out without copying (split off the
/// buffer); the chunked coding's lines and trailers are checked and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoder {
    state: State,
}

impl Decoder {
    /// A decoder for a body with this framing.
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::UntilClose,
        };
        Self { state }
    }

    /// Whether the body is complete.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still to come, when that is known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes from the front of `buf`: body bytes (at most what is buffered), a request
    /// for more, or the end. An error when the framing is broken; the connection cannot
    /// be used after that.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(0) => {
                    self.state = State::Done;
                    return Ok(Decoded::End);
                }
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::Need);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::Need);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => match chunk_size(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        self.state = if size == 0 { State::Trailers(0) } else { State::ChunkData(size) };
                    }
                    None if buf.len() > MAX_CHUNK_LINE => return Err("chunk size line too long"),
                    None => return Ok(Decoded::Need),
                },
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        // A lone byte that is already wrong need not wait for the next.
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err("missing CRLF after chunk data");
                        }
                        return Ok(Decoded::Need);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("missing CRLF after chunk data");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                // Each line ends with CRLF and holds no other CR or LF: a peer that takes a
                // bare LF for a line end (RFC 9112 section 2.2 lets it) must see the body end
                // where this decoder does. The fields themselves are not parsed: they are
                // dropped (RFC 9112 section 7.1.2), so only where the lines end matters.
                State::Trailers(seen) => match buf.iter().position(|&b| b == b'\n') {
                    Some(i) if i == 0 || buf[i - 1] != b'\r' || buf[..i - 1].contains(&b'\r') => {
                        return Err("bare CR or LF in trailers");
                    }
                    Some(1) => {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    Some(i) => {
                        let seen = seen + i + 1;
                        if seen > MAX_TRAILERS {
                            return Err("trailers too large");
                        }
                        buf.advance(i + 1);
                        self.state = State::Trailers(seen);
                    }
                    None if seen + buf.len() > MAX_TRAILERS => return Err("trailers too large"),
                    None => return Ok(Decoded::Need),
                },
            }
        }
    }

    /// The connection ended: whether that completes the body (only one that runs until
    /// the close), else the body was cut short.
    pub(crate) fn at_eof(&mut self) -> bool {
        let complete = matches!(self.state, State::UntilClose | State::Done);
        self.state = State::Done;
        complete
    }
}

/// Parses a chunk-size line (`1a;name=value CRLF`): the bytes it takes and the size, or
/// `None` when the line is not complete yet. Stricter than httparse's version, as hyper
/// is: at least one hex digit, no bare LF, no control bytes in extensions (a lenient
/// parser here is how chunk-extension smuggling desynchronises a reused connection).
pub(crate) fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 16 {
            return Err("chunk size too large");
        }
        size = size << 4 | u64::from(v);
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err("invalid chunk size");
    }
    // Optional whitespace, then extensions up to the CRLF.
    let mut in_ext = false;
    while let Some(&b) = buf.get(i) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err("invalid chunk size line"),
                };
            }
            b';' => in_ext = true,
            b' ' | b'\t' => {}
            0x21..=0x7e | 0x80..=0xff if in_ext => {}
            _ => return Err("invalid chunk size line"),
        }
        i += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_parsed_strictly() {
        assert_eq!(chunk_size(b"1a\r\nxx"), Ok(Some((4, 26))));
        assert_eq!(chunk_size(b"FF;name=\"v\" ;x\r\n"), Ok(Some((16, 255))));
        assert_eq!(chunk_size(b"0\r\n"), Ok(Some((3, 0))));
        assert_eq!(chunk_size(b"1a"), Ok(None));
        assert_eq!(chunk_size(b"1a;ext"), Ok(None));
        assert_eq!(chunk_size(b"1a\r"), Ok(None));
        for bad in [
            &b"\r\n"[..],
            b";x\r\n",
            b"1a\n",
            b"1a;x\ny\r\n",
            b"1a;\x01\r\n",
            b"1a\rx",
            b"g\r\n",
            b"12345678901234567\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    /// Decodes `input` fed in pieces of `step` bytes: the data, what is left over, or the error.
    fn feed(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        let mut d = Decoder::new(framing);
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        let mut chunks = input.chunks(step.max(1));
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => return Ok((out, [&buf[..], &chunks.flatten().copied().collect::<Vec<_>>()].concat())),
                Decoded::Need => match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None if d.at_eof() => return Ok((out, Vec::new())),
                    None => return Err("cut short"),
                },
            }
        }
    }

    #[test]
    fn every_framing_decodes_whatever_the_reads_and_stops_at_its_end() {
        let chunked = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let got = feed(Framing::Chunked, chunked, step).unwrap();
            assert_eq!((&got.0[..], &got.1[..]), (&b"hello world"[..], &b"NEXT"[..]), "step {step}");
            let got = feed(Framing::Length(5), b"helloNEXT", step).unwrap();
            assert_eq!((&got.0[..], &got.1[..]), (&b"hello"[..], &b"NEXT"[..]), "step {step}");
            let got = feed(Framing::Close, b"all of it", step).unwrap();
            assert_eq!(&got.0[..], b"all of it");
        }
        assert_eq!(feed(Framing::Length(0), b"NEXT", 4).unwrap(), (Vec::new(), b"NEXT".to_vec()));
        assert_eq!(feed(Framing::Length(9), b"short", 2), Err("cut short"));
        assert_eq!(feed(Framing::Chunked, b"5\r\nhel", 2), Err("cut short"));
        for bad in [&b"5\r\nhelloXX0\r\n\r\n"[..], b"zz\r\n", b"5\nhello\r\n", b"-1\r\n"] {
            assert!(feed(Framing::Chunked, bad, 3).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A line that has not ended within the limit (a complete one is taken whole).
        let long_line = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE]].concat();
        assert_eq!(feed(Framing::Chunked, &long_line, 512), Err("chunk size line too long"));
        let big_trailers = [b"0\r\n".as_slice(), &b"x-t: 1\r\n".repeat(MAX_TRAILERS / 8 + 1), b"\r\n"].concat();
        assert_eq!(feed(Framing::Chunked, &big_trailers, 100), Err("trailers too large"));
    }

    /// Found by the h1_chunked fuzz target: a trailer line holding a bare LF was taken as
    /// one line up to the next CRLF, so `0 CRLF x: a LF GET /admin ...` ended the body
    /// where a peer that reads a bare LF as a line end (RFC 9112 section 2.2 allows it)
    /// would not: the two sides would disagree on where the next request starts.
    #[test]
    fn trailer_lines_end_with_crlf_only() {
        for bad in [
            &b"0\r\nx: a\nGET /admin HTTP/1.1\r\n\r\n"[..],
            b"0\r\n\n\r\n\r\n",
            b"0\r\nx: a\rb\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx: 1\r\ny: 2\n\r\n",
        ] {
            for step in [1, 2, 64] {
                assert_eq!(feed(Framing::Chunked, bad, step), Err("bare CR or LF in trailers"), "{bad:?}, step {step}");
            }
        }
        let good = b"0\r\nx: a\r\ny: b\r\n\r\nNEXT";
        for step in [1, 2, 64] {
            assert_eq!(feed(Framing::Chunked, good, step), Ok((Vec::new(), b"NEXT".to_vec())), "step {step}");
        }
    }
}
