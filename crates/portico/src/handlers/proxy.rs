//! The proxy handler: sends the request to a target of the route's upstream and streams
//! the answer back. Bodies are never buffered; WebSocket upgrades become a byte tunnel.

use std::error::Error as _;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portico_config::UpstreamProtocol;
use tokio::time::Instant;

use crate::Shared;
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::forwarded;
use crate::pipeline::{Outcome, host_of};
use crate::snapshot::CompiledRoute;
use crate::upstream::PickKey;

/// What the proxy needs besides the request.
#[derive(Debug)]
pub struct ProxyCtx<'a> {
    /// The matched route.
    pub route: &'a CompiledRoute,
    /// The rewritten path, when the route rewrites.
    pub new_path: Option<String>,
    /// Forwarding header values of the connection's peer.
    pub peer: &'a forwarded::PeerHeaders,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client's IP (through trusted proxies), for `hash_on: client_ip`.
    pub client_ip: std::net::IpAddr,
    /// The listener's body limit.
    pub max_body: u64,
    /// Process-wide state.
    pub shared: &'a Shared,
}

/// Forwards `req` upstream and returns the upstream's response.
pub async fn forward(
    mut req: Request<Incoming>,
    ctx: ProxyCtx<'_>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let upstream = &ctx.route.upstream;
    let key = PickKey { headers: req.headers(), client_ip: ctx.client_ip, path: req.uri().path() };
    let index = upstream.pick(&key, None).ok_or(GatewayError::new(ErrorKind::NoTarget))?;
    let target = &upstream.targets[index];
    let flight = upstream.start(index);

    let upgrade = req.version() == Version::HTTP_11
        && upstream.definition.protocol == UpstreamProtocol::Http1
        && forwarded::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // The URI toward the target: scheme and authority of the target, (rewritten) path.
    let pq = match ctx.new_path {
        Some(mut p) => {
            if let Some(q) = req.uri().query() {
                p.push('?');
                p.push_str(q);
            }
            PathAndQuery::try_from(p).map_err(|_| GatewayError::new(ErrorKind::BadRequest("invalid rewritten path")))?
        }
        None => req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::new(ErrorKind::BadRequest("invalid request target")))?;

    // The client's host: the URI authority (HTTP/2) or its `Host` header (a cheap clone).
    let original_host = match (req.uri().authority(), req.headers().get(header::HOST)) {
        (None, Some(h)) => Some(h.clone()),
        _ => host_of(&req).and_then(|h| HeaderValue::from_str(h).ok()),
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = match upstream.definition.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    let headers = &mut parts.headers;
    forwarded::remove_hop_by_hop(headers, upgrade);
    forwarded::set_forwarding_headers(headers, ctx.peer, ctx.peer_trusted, original_host.as_ref());
    match (&original_host, ctx.route.preserve_host) {
        (Some(h), true) => {
            headers.insert(header::HOST, h.clone());
        }
        _ => {
            headers.insert(header::HOST, target.host_header.clone());
        }
    }
    let body = if body_is_empty(&body) {
        Body::Empty
    } else {
        Body::Limited(Limited::new(body, usize::try_from(ctx.max_body).unwrap_or(usize::MAX)))
    };
    let upstream_req = Request::from_parts(parts, body);

    let sent = Instant::now();
    let result = tokio::time::timeout(ctx.route.timeout, upstream.client.request(upstream_req)).await;
    let waited = sent.elapsed();
    outcome.backend_latency = Some(waited);
    upstream.latency.observe(waited.as_secs_f64());
    let mut res = match result {
        Err(_) => {
            flight.finish(true);
            return Err(GatewayError::new(ErrorKind::UpstreamTimeout(ctx.route.timeout)));
        }
        Ok(Err(e)) => {
            let e = classify(&e, upstream.connect_timeout);
            flight.finish(e.side() == crate::error::Side::Upstream);
            return Err(e);
        }
        Ok(Ok(res)) => res,
    };
    flight.finish(res.status().is_server_error());

    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upstream must not switch protocols unasked.
            return Err(GatewayError::new(ErrorKind::BadResponse));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut res);
        let guard = ctx.shared.tracker.enter();
        tokio::spawn(async move {
            let _guard = guard;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((down, up)) => {
                    let mut down = TokioIo::new(down);
                    let mut up = TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let (mut parts, _) = res.into_parts();
        forwarded::remove_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, Body::Empty));
    }

    let (mut parts, body) = res.into_parts();
    forwarded::remove_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::Incoming(body)))
}

fn body_is_empty(b: &Incoming) -> bool {
    use http_body::Body as _;
    b.is_end_stream()
}

/// Maps a client error to the contract: refused/unreachable 502, connect timeout 504,
/// client body over the limit 413, anything else (reset, malformed) 502.
fn classify(e: &hyper_util::client::legacy::Error, connect_timeout: Duration) -> GatewayError {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<LengthLimitError>() {
            return GatewayError::new(ErrorKind::PayloadTooLarge);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
            && e.is_connect()
        {
            return GatewayError::new(ErrorKind::ConnectTimeout(connect_timeout));
        }
        source = s.source();
    }
    if e.is_connect() {
        // hyper-util reports its own connect timeout as a plain "connect timeout" error.
        if format!("{e:?}").contains("timeout") {
            return GatewayError::new(ErrorKind::ConnectTimeout(connect_timeout));
        }
        return GatewayError::new(ErrorKind::ConnectFailed);
    }
    GatewayError::new(ErrorKind::BadResponse)
}
