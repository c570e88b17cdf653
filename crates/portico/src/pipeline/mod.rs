//! The request's way through the gateway: context, checks, route match, handler, then
//! metrics and the access log.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use tokio::time::Instant;

mod body;
pub(crate) mod checks;
pub mod log;

use checks::{SlashAction, check_request};

use crate::Shared;
use crate::body::Body;
use crate::compile::ListenerSettings;
use crate::error::{ErrorKind, GatewayError};
use crate::forwarded;
use crate::handlers::{Handler, proxy};
use crate::observe::AuditRecord;
use crate::plugins::cors::Cors;
use crate::plugins::hooks::HookCtx;
use crate::plugins::{Flow, Passed, Refusal, RequestView};
use crate::router::{Lookup, RequestParts};
pub use log::{Completion, LogPhase};

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The listener's settings at accept time.
    pub listener: Arc<ListenerSettings>,
    /// Forwarding header values for this peer, built once.
    pub peer_headers: forwarded::PeerHeaders,
    /// What the TLS handshake established, on a TLS listener.
    pub tls: Option<Arc<TlsInfo>>,
}

impl ConnInfo {
    /// Describes a connection from `peer` to `listener`.
    pub fn new(peer: SocketAddr, proto: &'static str, listener: Arc<ListenerSettings>) -> Self {
        Self { peer, proto, listener, peer_headers: forwarded::PeerHeaders::new(peer.ip(), proto), tls: None }
    }

    /// Describes a TLS connection (`proto` is `https`).
    pub fn with_tls(peer: SocketAddr, listener: Arc<ListenerSettings>, tls: TlsInfo) -> Self {
        Self { tls: Some(Arc::new(tls)), ..Self::new(peer, "https", listener) }
    }
}

/// What a TLS handshake established, for the connection's requests.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), lower case.
    pub sni: Option<Box<str>>,
    /// Whether ALPN chose HTTP/2.
    pub alpn_h2: bool,
    /// The verified client certificate's subject as RFC 4514 text (`CN=alice,O=Example`),
    /// with `client_auth`, when the client presented one.
    pub client_subject: Option<Box<str>>,
    /// The verified client certificate's subject alternative names: `DNS:..`, `URI:..`,
    /// `email:..`.
    pub client_sans: Vec<Box<str>>,
    /// The listener's `client_auth.forward_header` (none without `client_auth`).
    pub forward_header: Option<HeaderName>,
    /// `client_subject` as a header value, built once per connection.
    pub client_subject_value: Option<HeaderValue>,
}

/// What the handler learned, for metrics and the log.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Time spent waiting for the upstream's response head.
    pub backend_latency: Option<Duration>,
    /// The upstream the request went to (a route with `split` chooses per request).
    pub upstream: Option<Arc<str>>,
    /// An aggregate route's calls, for the access log.
    pub calls: Option<Box<[crate::observe::access_log::CallLog]>>,
}

/// Handles one request. Never fails: every error becomes a response. The request body is
/// hyper's stream or, from the lean HTTP/1.1 server loop, empty. The returned record's
/// [`LogPhase::end`] is for whoever writes the response body, when it ends.
pub async fn handle(req: Request<Body>, conn: &Arc<ConnInfo>, shared: &Arc<Shared>) -> (Response<Body>, Box<LogPhase>) {
    let (mut res, log) = handle_unsent_id(req, conn, shared, false).await;
    let (name, value) = log.request_id_field();
    res.headers_mut().insert(name.clone(), value.clone());
    (res, log)
}

/// [`handle`], but the response's request ID field is left out of its map, for the lean
/// HTTP/1.1 loop to write with the head from [`LogPhase::request_id_field`] (an insertion
/// hashes the name byte by byte). It replaces any field of that name in the map. With `raw_ok`, an
/// upstream response's fields may still be only as the upstream sent them
/// ([`crate::upstream::h1::ResponseBody::raw_fields`]) when nothing here needed them.
pub(crate) async fn handle_unsent_id(
    mut req: Request<Body>,
    conn: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    raw_ok: bool,
) -> (Response<Body>, Box<LogPhase>) {
    let start = Instant::now();
    let snap = shared.snapshot.load_full();

    // The client's copy leaves the request here: the gateway sends its own (the same one
    // when it is trusted and well formed) after the request's fields.
    let request_id = request_id(req.headers_mut(), &snap.request_id_header, snap.trust_request_id);
    let (client_ip, peer_trusted) = forwarded::client_ip(conn.peer.ip(), req.headers(), &snap.trusted_proxies);
    let mut log = LogPhase::new(shared, &snap, conn, start, &req, request_id, client_ip);
    let mut rate = None;
    let mut slot = None;
    // Kept to the response phase, whose hooks may read them.
    let mut identity = None;
    // The API contract's operation the request was found to be (`validate`).
    let mut operation = None;
    let mut tenant: Option<Arc<str>> = None;
    let mut preflight_answered = false;
    // Read now: the request is gone by the response phase. Global CORS also answers the
    // gateway's own errors outside any route (404, 405, 400).
    let mut origin = if snap.global_plugins.has_cors() { req.headers().get(header::ORIGIN).cloned() } else { None };
    let mut accept_encoding = None;
    let mut accept = None;
    // What the cache decided, on a route with a `cache` (boxed: one pointer in the
    // request's future, which every request moves, cached or not). Its `status` is the
    // answer's `Cache-Status`.
    let mut cached: Option<Box<crate::cache::Step>> = None;
    // Whether the cache answered (a stored answer, or the error of a fetch others waited
    // for: not this request's own failure, so not counted against the upstream again).
    let mut answered_by_cache = false;
    // A gRPC request gets the gateway's own errors as gRPC statuses.
    let grpc = crate::proto::grpc::is_grpc(req.version(), req.headers());
    let checked = match check_request(&req, &conn.listener) {
        Ok(seen) if seen.escaped_slash => slash_policy(&mut req, &snap, &conn.listener).map(|r| (seen, r)),
        other => other.map(|seen| (seen, None)),
    };
    let mut result = match checked {
        Err(e) => Err(e),
        Ok(_) if conn.listener.redirect_https.is_some() => redirect_https(&req, conn.listener.redirect_https),
        Ok((_, Some(redirect))) => Ok(redirect),
        Ok((seen, None)) => {
            // Before anything reads the request: headers the client named in `Connection`
            // go (so none can later delete what the gateway adds), and so do the client's
            // copies of every identity header (so no plugin, key or log sees a forged one).
            if seen.connection {
                forwarded::drop_connection_listed(req.headers_mut());
            }
            snap.identity.strip(req.headers_mut());
            // The client's `Host`, read once: for routing and for the upstream request.
            let client_host = match req.uri().authority() {
                None => req.headers().get(header::HOST).cloned(),
                Some(_) => None,
            };
            let host = match req.uri().authority() {
                Some(a) => Some(a.as_str().rsplit('@').next().unwrap_or(a.as_str())),
                None => client_host.as_ref().and_then(|h| h.to_str().ok()),
            }
            .unwrap_or("");
            let path = req.uri().path();
            let query = req.uri().query();
            let headers = req.headers();
            let listener = &*conn.listener.name;
            let plain = RequestParts { host, path, query, method: &log.method, headers, listener };
            // A CORS preflight is routed as the request it announces, so that route's
            // CORS settings answer it.
            let announced = preflight_method(&log.method, headers);
            let lookup = match &announced {
                Some(announced) => {
                    let parts = RequestParts { host, path, query, method: announced, headers, listener };
                    match snap.router.lookup(&parts) {
                        Lookup::Found { index, params } if snap.routes[index].plugins.has_cors() => {
                            Lookup::Found { index, params }
                        }
                        _ => snap.router.lookup(&plain),
                    }
                }
                None => snap.router.lookup(&plain),
            };
            match lookup {
                Lookup::NotFound => Err(GatewayError::new(ErrorKind::NotFound)),
                // Retired at its sunset: the gateway's 410, before any plugin or handler.
                Lookup::Found { index, .. }
                    if let Some(l) = &snap.routes[index].lifecycle
                        && let Some(e) = l.retired_now() =>
                {
                    log.route = Some(index);
                    Err(e)
                }
                Lookup::MethodNotAllowed(allow) => Err(GatewayError::new(ErrorKind::MethodNotAllowed(allow))),
                Lookup::Found { index, params } => {
                    log.route = Some(index);
                    let route = &snap.routes[index];
                    let new_path = route.rewrite.apply(path, &params);
                    // Owned for the request hooks, which run once the request is changed.
                    let aggregates = matches!(route.handler, Handler::Aggregate(_));
                    let hooked =
                        route.plugins.has_request_hooks() || route.plugins.has_request_body_hooks() || aggregates;
                    let hook_params: Vec<(Box<str>, Box<str>)> = match hooked {
                        true => params.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                        false => Vec::new(),
                    };
                    if origin.is_none() && route.plugins.has_cors() {
                        origin = headers.get(header::ORIGIN).cloned();
                    }
                    if route.plugins.has_response_stream_hooks() {
                        accept_encoding = headers.get(header::ACCEPT_ENCODING).cloned();
                    }
                    if route.plugins.has_response_body_hooks() {
                        accept = headers.get(header::ACCEPT).cloned();
                    }
                    let view = RequestView {
                        method: &log.method,
                        uri: req.uri(),
                        headers,
                        host: host_without_port(host),
                        params: &params,
                        client_ip,
                        tls: conn.tls.as_deref(),
                        route: &route.name,
                        flag_upstreams: !route.flag_upstreams.is_empty(),
                        body: req.body(),
                    };
                    // A route without request plugins skips the phase's machinery.
                    let skipped = route.plugins.passes_all(&snap.tenants);
                    let flow = if skipped {
                        Ok(Flow::Continue(Passed::default()))
                    } else {
                        route.plugins.request(&view, &snap.consumers, &snap.tenants).await
                    };
                    match flow {
                        Err(refusal) => {
                            if let ErrorKind::RateLimited { info, .. } = &refusal.error.kind {
                                rate = Some(*info);
                            }
                            audit(shared, &req, &route.name, &log.request_id, client_ip, &refusal);
                            Err(refusal.error)
                        }
                        Ok(Flow::Respond(res)) => {
                            preflight_answered = true;
                            Ok(res)
                        }
                        Ok(Flow::Continue(mut passed)) => {
                            identity = passed.identity.take();
                            operation = passed.operation.take();
                            rate = passed.rate;
                            slot = passed.slot.take();
                            if let Some(uri) = route.plugins.hide_query(req.uri()) {
                                if log.uri.is_some() {
                                    log.uri = Some(uri.clone());
                                }
                                *req.uri_mut() = uri;
                            }
                            let h = req.headers_mut();
                            route.plugins.hide_credentials(h);
                            if let Some(id) = &identity {
                                snap.identity.apply(id, h);
                                log.user_id = Some(id.user_id.clone());
                            }
                            let mut upstream_override = None;
                            if let Some(t) = &passed.tenant {
                                snap.identity.set_tenant(&t.id, h);
                                if let Some(s) = &t.settings {
                                    upstream_override =
                                        route.flag_upstreams.iter().find(|(f, _)| s.has_flag(f)).map(|(_, up)| up);
                                }
                                tenant = Some(t.id.clone());
                            }
                            // The cache, around the handler: a hit answers here (no request
                            // hook nor the handler runs); a fetch readies the request.
                            if let Some(cache) = route.plugins.cache() {
                                let who = crate::cache::Who {
                                    host: host_of(&req).unwrap_or(""),
                                    tls: conn.proto == "https",
                                    identity: identity.as_ref(),
                                    tenant: tenant.as_deref(),
                                    peer_trusted,
                                    refreshes: matches!(route.handler, Handler::Proxy(_)),
                                    identity_fields: snap.identity.names(),
                                };
                                let mut step = Box::new(Box::pin(cache.lookup(&req, &who)).await);
                                if let Some(t) = &mut step.ticket {
                                    t.prepare(&mut req);
                                }
                                cached = Some(step);
                            }
                            let hit = cached.as_ref().is_some_and(|c| c.answer.is_some() && c.ticket.is_none());
                            let body_phase = if hooked && !hit {
                                let ctx = HookCtx {
                                    params: &hook_params,
                                    identity: identity.as_ref(),
                                    tenant: tenant.as_deref(),
                                    request_id: &log.request_id,
                                    tls: conn.proto == "https",
                                    origin: origin.as_ref(),
                                    preflight: false,
                                    rate: rate.as_ref(),
                                    accept_encoding: None,
                                    accept: None,
                                    operation: operation.as_ref(),
                                };
                                if route.plugins.has_request_hooks() {
                                    route.plugins.request_hooks(&mut req, &ctx);
                                }
                                match route.plugins.has_request_body_hooks() {
                                    // Boxed: only routes with body plugins pay for its room.
                                    true => {
                                        let max = conn.listener.max_body;
                                        Box::pin(body::request(&mut req, &route.plugins, &ctx, max)).await
                                    }
                                    false => Ok(()),
                                }
                            } else {
                                Ok(())
                            };
                            // The route's handler, matched here rather than in an async
                            // wrapper, whose future would move the proxy's once more.
                            match (&route.handler, body_phase) {
                                (_, Err(e)) => Err(e),
                                (handler, Ok(()))
                                    if let Some(c) = cached.as_mut()
                                        && let Some(answer) = c.answer.take() =>
                                {
                                    // A stale answer now, and its refresh in the background.
                                    if let (Handler::Proxy(_), Some(ticket)) = (handler, c.ticket.take()) {
                                        refresh_in_background(
                                            req,
                                            ticket,
                                            Refresh {
                                                snap: snap.clone(),
                                                index,
                                                conn: conn.clone(),
                                                shared: shared.clone(),
                                                client_ip,
                                                peer_trusted,
                                                request_id: log.request_id.clone(),
                                                client_host: client_host.clone(),
                                                upstream_override: upstream_override.cloned(),
                                                new_path,
                                            },
                                        );
                                    }
                                    answered_by_cache = true;
                                    answer
                                }
                                (Handler::Respond(r), Ok(())) => Ok(r.response()),
                                (Handler::Publish(p), Ok(())) => {
                                    let cx = crate::handlers::publish::Ctx {
                                        request_id: &log.request_id,
                                        identity: identity.as_ref(),
                                        tenant: tenant.as_deref(),
                                        max_body: conn.listener.max_body,
                                    };
                                    p.answer_boxed(req, cx).await
                                }
                                (Handler::Aggregate(a), Ok(())) => {
                                    let cx = crate::handlers::aggregate::Ctx {
                                        route,
                                        hook: HookCtx {
                                            params: &hook_params,
                                            identity: identity.as_ref(),
                                            tenant: tenant.as_deref(),
                                            ..HookCtx::new(&log.request_id)
                                        },
                                        headers: req.headers(),
                                        query: req.uri().query(),
                                        peer: &conn.peer_headers,
                                        peer_trusted,
                                        client_ip,
                                        shared,
                                        tls: conn.tls.as_deref(),
                                        request_id: (&snap.request_id_header, &log.request_id),
                                        identity: &snap.identity,
                                    };
                                    a.answer_boxed(cx, &mut log.outcome).await
                                }
                                (Handler::Proxy(up), Ok(())) => {
                                    let ctx = proxy::ProxyCtx {
                                        route,
                                        new_path,
                                        peer: &conn.peer_headers,
                                        peer_trusted,
                                        client_ip,
                                        max_body: conn.listener.max_body,
                                        shared,
                                        tls: conn.tls.as_deref(),
                                        upstream_override,
                                        request_id: (&snap.request_id_header, &log.request_id),
                                        client_host: client_host.as_ref(),
                                        may_upgrade: seen.upgrade,
                                        started: skipped.then_some(start),
                                        timeout: None,
                                    };
                                    proxy::forward(req, up, ctx, &mut log.outcome).await
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    // The cache's fetch: the answer is stored as it streams, or a stale entry answers for
    // a failed upstream. (Changed in place: a request without one moves nothing.)
    if let Some(ticket) = cached.as_mut().and_then(|c| c.ticket.take()) {
        let failed = result.as_ref().err().filter(|e| e.counts_against_upstream()).cloned();
        let done = ticket.complete(result);
        if let Some(c) = cached.as_mut() {
            c.status = done.status;
        }
        // Answered stale, the upstream's failure still counts.
        if done.stale_for_error
            && let Some(e) = failed
            && let Some(r) = log.route.map(|i| &snap.routes[i])
            && let Some(up) = log.outcome.upstream.as_ref().or(r.upstream().map(|u| &u.name))
        {
            shared.metrics.backend_error(up, e.metric_kind());
        }
        result = done.result;
    }

    let route = log.route.map(|i| &snap.routes[i]);
    // The body phase changes what a handler answered, not the gateway's own answers.
    let from_handler = result.is_ok() && !preflight_answered;
    let mut res = match result {
        Ok(res) => res,
        Err(e) => {
            if let (ErrorKind::ClientAborted, Some(r)) = (&e.kind, route) {
                shared.metrics.client_aborted(&r.name);
            }
            if let Some(r) = route
                && let Some(upstream) = log.outcome.upstream.as_ref().or(r.upstream().map(|u| &u.name))
                && e.counts_against_upstream()
                && !answered_by_cache
            {
                shared.metrics.backend_error(upstream, e.metric_kind());
                tracing::debug!(route = %r.name, upstream = %upstream, error = %e, "upstream request failed");
            }
            match grpc {
                true => crate::proto::grpc::error_response(&e, &log.request_id, &snap.request_id_header),
                false => e.to_response(&log.request_id),
            }
        }
    };
    let cached_route = cached.is_some();
    let chain = route.map_or(&snap.global_plugins, |r| &r.plugins);
    let lifecycle = route.and_then(|r| r.lifecycle.as_deref());
    // The lean loop writes fields kept as sent itself; everyone else reads the map.
    let keep_raw = raw_ok && slot.is_none() && !chain.touches_response() && lifecycle.is_none() && !cached_route;
    if !keep_raw && !materialise(&mut res) {
        res = GatewayError::new(ErrorKind::BadResponse).to_response(&log.request_id);
    }
    if let Some(c) = cached {
        res.headers_mut().insert(crate::cache::CACHE_STATUS.clone(), c.status);
    }
    let tls = conn.proto == "https";
    let ctx = HookCtx {
        params: &[],
        identity: identity.as_ref(),
        tenant: tenant.as_deref(),
        request_id: &log.request_id,
        tls,
        origin: origin.as_ref(),
        preflight: preflight_answered,
        rate: rate.as_ref(),
        accept_encoding: accept_encoding.as_ref(),
        accept: accept.as_ref(),
        operation: operation.as_ref(),
    };
    let head = log.method == Method::HEAD;
    let mut from_handler = from_handler;
    if from_handler
        && chain.has_response_body_hooks()
        && let Err(e) = Box::pin(body::response(&mut res, chain, &ctx, head)).await
    {
        res = e.to_response(&log.request_id);
        from_handler = false;
    }
    if from_handler && chain.has_response_stream_hooks() {
        body::stream(&mut res, chain, &ctx, head);
    }
    chain.response(&mut res, &ctx);
    if let (Some(l), Some(r)) = (lifecycle, route) {
        l.answered(res.headers_mut(), &shared.metrics, &r.name, log.user_id.as_ref());
    }
    if let Some(slot) = slot {
        res = res.map(|b| b.holding(slot));
    }
    log.rate_remaining = rate.map(|r| r.remaining);
    log.head(res.status());
    (res, log)
}

/// The answer to a request refused before there is a request to route (a head too large,
/// a request line too long, a head that does not parse): the contract's JSON body with a new
/// request ID, counted under `route="none"` and logged, with the method when it could be
/// read and the path as `*`. For the lean HTTP/1.1 loop, which answers these itself.
pub(crate) fn refuse(
    error: &GatewayError,
    method: Method,
    conn: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
) -> (Response<Body>, Box<LogPhase>) {
    let snap = shared.snapshot.load_full();
    let mut req = Request::new(Body::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = Uri::from_static("*");
    let mut log = LogPhase::new(shared, &snap, conn, Instant::now(), &req, new_request_id(), conn.peer.ip());
    let res = error.to_response(&log.request_id);
    log.head(res.status());
    (res, log)
}

/// What a refresh in the background needs of the request's context, owned.
struct Refresh {
    snap: Arc<crate::compile::Snapshot>,
    index: usize,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    client_ip: std::net::IpAddr,
    peer_trusted: bool,
    request_id: HeaderValue,
    client_host: Option<HeaderValue>,
    upstream_override: Option<Arc<crate::upstream::Upstream>>,
    new_path: Option<String>,
}

/// Sends the request of a stale answer's refresh (`stale-while-revalidate`) to the
/// route's upstream in the background; the cache stores what it answers.
fn refresh_in_background(req: Request<Body>, ticket: crate::cache::Ticket, r: Refresh) {
    tokio::spawn(async move {
        let route = &r.snap.routes[r.index];
        let Handler::Proxy(up) = &route.handler else { return };
        let ctx = proxy::ProxyCtx {
            route,
            new_path: r.new_path,
            peer: &r.conn.peer_headers,
            peer_trusted: r.peer_trusted,
            client_ip: r.client_ip,
            max_body: r.conn.listener.max_body,
            shared: &r.shared,
            tls: r.conn.tls.as_deref(),
            upstream_override: r.upstream_override.as_ref(),
            request_id: (&r.snap.request_id_header, &r.request_id),
            client_host: r.client_host.as_ref(),
            may_upgrade: false,
            started: None,
            timeout: None,
        };
        let mut outcome = Outcome::default();
        let result = proxy::forward(req, up, ctx, &mut outcome).await;
        if let Err(e) = &result
            && e.counts_against_upstream()
        {
            let name = outcome.upstream.as_ref().unwrap_or(&up.name);
            r.shared.metrics.backend_error(name, e.metric_kind());
        }
        // The body read to its end is what stores it.
        if let Ok(res) = ticket.complete(result).result {
            use http_body_util::BodyExt as _;
            let mut body = res.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
    });
}

/// Puts an upstream response's fields that are kept as sent into its map; `false` when one
/// is not valid there.
pub(crate) fn materialise(res: &mut Response<Body>) -> bool {
    let Body::H1(b) = res.body_mut() else { return true };
    if b.raw_fields().is_none() {
        return true;
    }
    let mut headers = std::mem::take(res.headers_mut());
    let ok = match res.body_mut() {
        Body::H1(b) => b.materialise(&mut headers),
        _ => true,
    };
    *res.headers_mut() = headers;
    ok
}

/// The escaped-slash policy for a path holding `%2F` or `%5C`: the route the path matches
/// as sent decides, else the listener. An error, a redirect to the decoded path, or on
/// (with the path decoded in place for `unescape_and_forward`, so routing sees it too).
fn slash_policy(
    req: &mut Request<Body>,
    snap: &crate::compile::Snapshot,
    listener: &ListenerSettings,
) -> Result<Option<Response<Body>>, GatewayError> {
    let parts = RequestParts {
        host: host_of(req).unwrap_or(""),
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
        listener: &listener.name,
    };
    let policy = match snap.router.lookup(&parts) {
        Lookup::Found { index, .. } => snap.routes[index].escaped_slashes,
        _ => None,
    };
    let invalid = || GatewayError::new(ErrorKind::BadRequest("invalid request target"));
    let with_query = |path: String| match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    match checks::escaped_slashes(policy.unwrap_or(listener.escaped_slashes), req.uri().path())? {
        SlashAction::Keep => Ok(None),
        SlashAction::Forward(path) => {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(with_query(path).parse().map_err(|_| invalid())?);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| invalid())?;
            Ok(None)
        }
        SlashAction::Redirect(path) => {
            let location = HeaderValue::try_from(with_query(path)).map_err(|_| invalid())?;
            let mut res = Response::new(Body::Empty);
            *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            res.headers_mut().insert(header::LOCATION, location);
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            Ok(Some(res))
        }
    }
}

/// `redirect_https`: the same host (without its port), path and query on `https://` and
/// `port`; 301 for GET and HEAD, 308 (method and body kept) otherwise.
fn redirect_https<B>(req: &Request<B>, port: Option<u16>) -> Result<Response<Body>, GatewayError> {
    let bad = || GatewayError::new(ErrorKind::BadRequest("missing or invalid Host"));
    let authority: http::uri::Authority = host_of(req).ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let host = authority.host();
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut location = String::with_capacity(8 + host.len() + 6 + pq.len());
    location.push_str("https://");
    location.push_str(host);
    match port {
        Some(443) | None => {}
        Some(p) => {
            let _ = write!(location, ":{p}");
        }
    }
    location.push_str(pq);
    let location = HeaderValue::from_str(&location).map_err(|_| bad())?;
    let mut res = Response::new(Body::Empty);
    *res.status_mut() = if matches!(*req.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    res.headers_mut().insert(header::LOCATION, location);
    res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(res)
}

/// The request's host, with its port when given: the URI's authority when there is one
/// (HTTP/2's `:authority`, an absolute-form HTTP/1.1 target; RFC 9112 section 3.2.2 says
/// it wins over `Host`), else `Host`.
pub fn host_of<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str().rsplit('@').next().unwrap_or(a.as_str())),
        None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()),
    }
}

/// The host without its port (`[::1]:8080` gives `[::1]`).
fn host_without_port(host: &str) -> &str {
    // One byte scan from the end: a `:` before any `]` starts the port, a `]` first ends an
    // IPv6 literal without one. (`rfind` and `contains` each cost more in their setup than
    // in their scan on a host this short: about 200 instructions a request.)
    for (i, b) in host.bytes().enumerate().rev() {
        match b {
            b':' => return &host[..i],
            b']' => return host,
            _ => {}
        }
    }
    host
}

/// The method a CORS preflight announces, when the request is one.
fn preflight_method(method: &Method, headers: &http::HeaderMap) -> Option<Method> {
    if !Cors::is_preflight(method, headers) {
        return None;
    }
    Method::from_bytes(headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?.as_bytes()).ok()
}

/// Counts a refused request and writes its audit line (rate and concurrency limits are
/// only counted).
fn audit<B>(
    shared: &Shared,
    req: &Request<B>,
    route: &Arc<str>,
    request_id: &HeaderValue,
    client_ip: std::net::IpAddr,
    r: &Refusal,
) {
    // Limits are counted, not audited: a flood of them says nothing about who may do what.
    if matches!(r.error.kind, ErrorKind::RateLimited { .. } | ErrorKind::ConcurrencyLimited(_)) {
        shared.metrics.rate_limited(route);
        return;
    }
    // Counted by the plugin (`gateway_rate_limit_store_errors_total`); nobody's credentials.
    if r.error.kind == ErrorKind::RateLimitUnavailable {
        return;
    }
    let status = r.error.status().as_u16();
    if status >= 500 {
        // The gateway could not check (keys or revocation list unavailable): counted, and
        // logged by the part that failed; not a refusal of this caller.
        shared.metrics.auth_failure(route, status, r.error.public_message());
        return;
    }
    let (event, reason) = match r.error.kind {
        ErrorKind::Unauthorized(_, m) => ("authentication", m),
        ErrorKind::Forbidden(m) => ("authorization", m),
        _ => ("authentication", r.error.public_message()),
    };
    shared.metrics.auth_failure(route, status, reason);
    shared.audit_log.log(AuditRecord {
        time: SystemTime::now(),
        event,
        status,
        reason,
        request_id: request_id.clone(),
        route: route.clone(),
        method: req.method().clone(),
        path: req.uri().path().into(),
        client_ip,
        user_agent: req.headers().get(header::USER_AGENT).cloned(),
        user_id: r.user.clone(),
        credential: r.credential,
    });
}

/// Keeps a well-formed incoming request ID (1-128 of `[A-Za-z0-9._:-]`) or makes one.
fn request_id(headers: &mut http::HeaderMap, header: &http::HeaderName, trust: bool) -> HeaderValue {
    // Usually absent: one pass over the names is cheaper than hashing a custom name (FNV
    // over every byte) for the removal.
    if crate::forwarded::present_mask(headers, &[header]) == 0 {
        return new_request_id();
    }
    if let Some(v) = headers.remove(header)
        && trust
    {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c)) {
            return v;
        }
    }
    new_request_id()
}

/// A random 128-bit ID as 32 lowercase hex characters.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(fastrand::u128(..).to_le_bytes()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    // Hex digits are always a valid header value. Owned by its `Bytes` from the start (one
    // allocation): copied into a `Vec`, the first of its clones (request, response, log)
    // would allocate again to share it.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out)).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_port_is_left_out_and_an_ipv6_literal_kept_whole() {
        for (host, want) in [
            ("api.test:8080", "api.test"),
            ("api.test", "api.test"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("[fe80::1%25eth0]", "[fe80::1%25eth0]"),
            ("127.0.0.1:18090", "127.0.0.1"),
            ("a.test:", "a.test"),
            ("", ""),
        ] {
            assert_eq!(host_without_port(host), want, "{host:?}");
        }
    }

    #[test]
    fn a_request_id_is_taken_out_of_small_and_large_maps() {
        let name = http::HeaderName::from_static("x-request-id");
        for others in [0, 3, 16, 40] {
            let mut h = http::HeaderMap::new();
            for i in 0..others {
                h.insert(http::HeaderName::try_from(format!("x-f{i}")).unwrap(), HeaderValue::from_static("v"));
            }
            let mut fresh = h.clone();
            h.insert(name.clone(), HeaderValue::from_static("abc-1"));
            assert_eq!(request_id(&mut h, &name, true), "abc-1", "{others} other fields");
            assert!(!h.contains_key(&name) && h.len() == others);
            h.insert(name.clone(), HeaderValue::from_static("abc-1"));
            let made = request_id(&mut h, &name, false);
            assert!(made != "abc-1" && made.len() == 32 && !h.contains_key(&name), "untrusted: replaced");
            let made = request_id(&mut fresh, &name, true);
            assert_eq!((made.len(), fresh.len()), (32, others), "absent: made");
        }
    }

    #[test]
    fn redirects_keep_host_path_and_query() {
        let loc = |method: &str, uri: &str, host: Option<&str>, port| {
            let mut b = Request::builder().method(method).uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            let res = redirect_https(&b.body(()).unwrap(), Some(port));
            res.map(|r| (r.status().as_u16(), r.headers()["location"].to_str().unwrap().to_owned()))
        };
        assert_eq!(
            loc("GET", "/a/b?x=1&y", Some("api.test:8080"), 443).unwrap(),
            (301, "https://api.test/a/b?x=1&y".into())
        );
        assert_eq!(loc("POST", "/p", Some("api.test"), 8443).unwrap(), (308, "https://api.test:8443/p".into()));
        assert_eq!(loc("HEAD", "/", Some("[::1]:80"), 443).unwrap(), (301, "https://[::1]/".into()));
        assert_eq!(loc("GET", "http://abs.test:80/q", None, 443).unwrap(), (301, "https://abs.test/q".into()));
        assert!(loc("GET", "/", None, 443).is_err());
        assert!(loc("GET", "/", Some("evil.test/x"), 443).is_err());
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        let h = http::HeaderName::from_static("x-request-id");
        let mk = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert("x-request-id", HeaderValue::from_str(v).unwrap());
            m.insert("x-other", HeaderValue::from_static("1"));
            m
        };
        let mut m = mk("abc-1.2:3_x");
        assert_eq!(request_id(&mut m, &h, true), "abc-1.2:3_x");
        assert!(m.get(&h).is_none() && m.len() == 1, "the client's copy is taken out");
        let mut m = mk("abc-1.2:3_x");
        assert_ne!(request_id(&mut m, &h, false), "abc-1.2:3_x");
        assert!(m.get(&h).is_none(), "also when not trusted");
        let bad = request_id(&mut mk("a b"), &h, true);
        assert_eq!(bad.len(), 32);
        assert_ne!(request_id(&mut mk(&"x".repeat(129)), &h, true).len(), 129);
        assert_eq!(request_id(&mut http::HeaderMap::new(), &h, true).len(), 32);
        assert_ne!(new_request_id(), new_request_id());
    }
}
