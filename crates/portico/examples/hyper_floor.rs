//! The floor under Portico's CPU per request: the same HTTP stack (hyper's HTTP/1 server,
//! hyper-util's pooled client, one current-thread Tokio runtime) proxying with no gateway
//! logic at all — no routing, no header rewriting, no metrics, no timeouts. What Portico
//! spends above this is its own; what this spends above nginx is the stack's.
//!
//! A measuring tool for docs/benchmarks.md, not part of the gateway:
//! `cargo run --release -p portico --example hyper_floor -- 127.0.0.1:18095 127.0.0.1:18080`,
//! pinned with `taskset -c 1`, then `bench/cpu.sh 18095`.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Boxed = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).unwrap_or(([127, 0, 0, 1], 18095).into());
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (client, backend) = (client.clone(), backend.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let client = client.clone();
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri = format!("http://{backend}{pq}").parse();
                    async move {
                        *req.uri_mut() = uri.map_err(|_| std::io::Error::other("bad uri"))?;
                        let res = client.request(req).await.map_err(std::io::Error::other)?;
                        Ok::<_, std::io::Error>(res.map(|b| -> Boxed { b.boxed() }))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
