//! A measuring spike, not part of the gateway: how much CPU an HTTP/1.1 proxy on Tokio
//! spends per request when it keeps the header block as bytes (httparse on both sides, no
//! `HeaderMap`, no body channels, no client dispatch task): each client connection task
//! owns one upstream keep-alive connection and copies the head with the edits a proxy
//! makes. It handles exactly what the benchmark sends (requests without a body, responses
//! with `Content-Length`) and closes the connection on anything else.
//!
//! `cargo run --release -p portico --example h1_floor -- 127.0.0.1:18096 127.0.0.1:18080`,
//! pinned with `taskset -c 1`, then `bench/cpu.sh 18096` (docs/benchmarks.md).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Reads until `buf` holds a whole head; returns its length, or `None` at EOF or on junk.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>, response: bool) -> Option<usize> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let done = if response {
            httparse::Response::new(&mut headers).parse(buf).ok()?
        } else {
            httparse::Request::new(&mut headers).parse(buf).ok()?
        };
        if let httparse::Status::Complete(n) = done {
            return Some(n);
        }
        if buf.len() > 16 * 1024 {
            return None;
        }
        buf.reserve(4096);
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve(mut client: TcpStream, backend: SocketAddr, peer: SocketAddr) -> Option<()> {
    let mut up: Option<TcpStream> = None;
    let (mut cbuf, mut ubuf, mut out) = (Vec::with_capacity(8192), Vec::with_capacity(8192), Vec::with_capacity(1024));
    let xff = format!("x-forwarded-for: {}\r\n", peer.ip());
    loop {
        let n = read_head(&mut client, &mut cbuf, false).await?;
        out.clear();
        {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(&cbuf[..n]).ok()?;
            if req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("content-length") || h.name.eq_ignore_ascii_case("transfer-encoding")
            }) {
                return None;
            }
            out.extend_from_slice(req.method?.as_bytes());
            out.push(b' ');
            out.extend_from_slice(req.path?.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            for h in req.headers.iter() {
                if !HOP.iter().any(|hop| h.name.eq_ignore_ascii_case(hop)) {
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(xff.as_bytes());
            out.extend_from_slice(b"x-forwarded-proto: http\r\n\r\n");
        }
        cbuf.drain(..n);
        if up.is_none() {
            let s = TcpStream::connect(backend).await.ok()?;
            s.set_nodelay(true).ok()?;
            up = Some(s);
        }
        let u = up.as_mut()?;
        u.write_all(&out).await.ok()?;
        let n = read_head(u, &mut ubuf, true).await?;
        let mut len = 0usize;
        out.clear();
        {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            res.parse(&ubuf[..n]).ok()?;
            out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", res.code?, res.reason.unwrap_or("")).as_bytes());
            for h in res.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return None;
                }
                if !HOP.iter().any(|hop| h.name.eq_ignore_ascii_case(hop)) {
                    out.extend_from_slice(h.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        ubuf.drain(..n);
        while ubuf.len() < len {
            ubuf.reserve(len - ubuf.len());
            if u.read_buf(&mut ubuf).await.ok()? == 0 {
                return None;
            }
        }
        out.extend_from_slice(&ubuf[..len]);
        ubuf.drain(..len);
        client.write_all(&out).await.ok()?;
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).unwrap_or(([127, 0, 0, 1], 18096).into());
    let backend: SocketAddr = args.next().and_then(|a| a.parse().ok()).unwrap_or(([127, 0, 0, 1], 18080).into());
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream, backend, peer));
        }
    })
}
