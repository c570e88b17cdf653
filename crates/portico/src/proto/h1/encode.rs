//! Heads written out: requests to an upstream, and the one field writer both directions use.

use std::io::IoSlice;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Method, header};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::Framing;
use super::fields::Known;
use super::length::parse_length;
use crate::forwarded::Added;

/// Body frames up to this size are copied next to their framing and written in one call;
/// larger ones are written beside it (vectored), without the copy.
pub(crate) const COPY_MAX: usize = 16 * 1024;

/// A request head for the upstream client.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target (origin form).
    pub target: &'a str,
    /// The `Host` to send; any in `headers` is left out.
    pub host: &'a HeaderValue,
    /// The client's fields that go on. The response's header map reuses the allocation.
    /// By reference: the future that carries the request stays small to move.
    pub headers: &'a mut HeaderMap,
    /// The gateway's fields, written after the client's (none for the gateway's own
    /// requests, such as health checks, or fields already in `headers`).
    pub added: Option<&'a Added<'a>>,
    /// How the body that follows is framed, written by the encoder in place of any
    /// `Content-Length` in `headers`; `None` without a body (the fields go as they are).
    pub framing: Option<Framing>,
}

/// Writes a request head into `out` (emptied first): `METHOD target HTTP/1.1`, `Host`,
/// the request's fields but `Host` and `TE` (trailers are not read on this path: none are
/// invited), then the added ones, then the body's framing when there is a body.
pub fn encode_head(out: &mut Vec<u8>, r: &Outgoing<'_>) {
    out.clear();
    // Room for typical fields without a pass to measure them; a longer head grows once.
    out.reserve(r.method.as_str().len() + r.target.len() + 14 + 64 * (r.headers.len() + 6));
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_field(out, b"host", r.host.as_bytes());
    let framed = r.framing.is_some();
    for (name, value) in r.headers.iter() {
        if name == header::HOST || name == header::TE || (framed && name == header::CONTENT_LENGTH) {
            continue;
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(added) = r.added {
        for (name, value) in added.fields() {
            write_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    match r.framing {
        None => {}
        Some(Framing::Length(n)) => write_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes()),
        Some(Framing::Chunked | Framing::Close) => write_field(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a chunk's size line (`1a` and CRLF) for `len` bytes of data.
pub(crate) fn encode_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes every slice, however the socket splits the writes.
pub(crate) async fn write_all_vectored<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Writes one header line, `name: value` and CRLF, in either direction.
pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the response's own fields said, noted while they are written.
pub(crate) struct Fields<'a> {
    /// The request ID header's name: the gateway writes its own.
    pub(crate) id: &'a [u8],
    /// Whether a `Date` came with them.
    pub(crate) dated: bool,
    /// `Content-Length` fields, and the value of the last when it is plain digits.
    pub(crate) lengths: u32,
    pub(crate) length: Option<u64>,
}

impl Fields<'_> {
    /// Writes one field, but the framing (`Content-Length`, noted; `Transfer-Encoding`),
    /// the connection's fate (`Connection`) and the request ID: this side's own business.
    pub(crate) fn write(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        match Known::of(name) {
            Some(Known::ContentLength) => {
                self.lengths += 1;
                self.length = parse_length(value);
                return;
            }
            Some(Known::TransferEncoding | Known::Connection) => return,
            // Any name the config allows, so the general comparison.
            _ if name.len() == self.id.len() && name.eq_ignore_ascii_case(self.id) => return,
            Some(Known::Date) => self.dated = true,
            _ => {}
        }
        write_field(out, name, value);
    }
}

thread_local! {
    /// The `Date` value for the current second (one format per second per thread).
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
}

/// The current time as an HTTP date (`Tue, 01 Dec 2026 14:00:00 GMT`).
pub(crate) fn http_date() -> [u8; 29] {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            let mut out = [b' '; 29];
            let n = text.len().min(29);
            out[..n].copy_from_slice(&text.as_bytes()[..n]);
            *d = (secs, out);
        }
        d.1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn heads_are_encoded_as_given() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("client.test"));
        h.append("x-m", HeaderValue::from_static("1"));
        h.append("x-m", HeaderValue::from_static("2"));
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("forwarded", HeaderValue::from_static("for=10.0.0.9"));
        let peer = crate::forwarded::PeerHeaders::new("10.0.0.1".parse().unwrap(), "http");
        let id = (HeaderName::from_static("x-request-id"), HeaderValue::from_static("r1"));
        let added = crate::forwarded::forwarding(&mut h, &peer, true, None).with_request_id(&id.0, &id.1);
        let host = HeaderValue::from_static("a:1");
        let mut r = Outgoing {
            method: &Method::DELETE,
            target: "/p?q=1",
            host: &host,
            headers: &mut h,
            added: Some(&added),
            framing: None,
        };
        let mut out = b"left from before".to_vec();
        encode_head(&mut out, &r);
        let fields = "x-m: 1\r\nx-m: 2\r\nforwarded: for=10.0.0.9\r\n";
        let ours = "x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=10.0.0.1;proto=http\r\nx-request-id: r1\r\n";
        let want = format!("DELETE /p?q=1 HTTP/1.1\r\nhost: a:1\r\n{fields}{ours}\r\n");
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want, "Host first, no TE, the gateway's fields last");
        // Longer than the room made up front: the head grows and stays whole.
        let long = "c".repeat(5000);
        r.headers.insert("cookie", HeaderValue::from_str(&long).unwrap());
        r.method = &Method::GET;
        encode_head(&mut out, &r);
        let want = format!("GET /p?q=1 HTTP/1.1\r\nhost: a:1\r\n{fields}cookie: {long}\r\n{ours}\r\n");
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn the_writer_keeps_its_own_fields_whatever_the_request_ids_length() {
        // IDs as long as `connection`, `date` and `content-length`, and `date` itself.
        for id in ["request-id", "x-id", "x-request-id-2", "date"] {
            let mut f = Fields { id: id.as_bytes(), dated: false, lengths: 0, length: None };
            let mut out = Vec::new();
            let upper = id.to_ascii_uppercase();
            for (n, v) in [
                ("Connection", "close"),
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked"),
                ("Date", "d"),
                (upper.as_str(), "forged"),
                ("Set-Cookie", "a"),
                ("X-Cache", "b"),
            ] {
                f.write(&mut out, n.as_bytes(), v.as_bytes());
            }
            let date = if id == "date" { "" } else { "Date: d\r\n" };
            assert_eq!(String::from_utf8(out).unwrap(), format!("{date}Set-Cookie: a\r\nX-Cache: b\r\n"), "{id}");
            assert_eq!((f.dated, f.lengths, f.length), (id != "date", 1, Some(5)), "{id}");
        }
    }
}
