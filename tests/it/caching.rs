//! The response cache against a real origin that counts what reaches it: hits, RFC 9111
//! freshness and validation, coalesced misses, stale answers, and the ways a shared cache
//! is attacked (unkeyed headers, another caller's entry, paths that look alike, huge
//! bodies).

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;

/// An origin whose answers the query shapes: `cc` (its `Cache-Control`), `etag=1` (an
/// `ETag` of the current version, and 304 to a matching `If-None-Match`), `vary`, `cookie=1`
/// (a `Set-Cookie`), `tag` (a `Surrogate-Key`), `bytes` (a body of that many bytes), `lm=1`
/// (a `Last-Modified`). The body tells which request it was (`n`) and what the origin saw.
struct Origin {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Bumped to change what `etag=1` answers carry.
    version: Arc<AtomicU64>,
    /// When non-zero, every request gets this status (no caching fields).
    fail: Arc<AtomicU16>,
    /// Added to every answer, in ms.
    delay: Arc<AtomicU64>,
    /// Set to stop: the listener closes, and so does every open connection.
    stop: tokio::sync::watch::Sender<bool>,
    /// The conditional fields of the last request.
    last_conditional: Arc<std::sync::Mutex<Option<String>>>,
}

use std::sync::Arc;

impl Origin {
    async fn start() -> Origin {
        Self::start_at("127.0.0.1:0").await
    }

    async fn start_at(addr: &str) -> Origin {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hits, version, fail, delay) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicU64::new(1)),
            Arc::new(AtomicU16::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let last_conditional = Arc::new(std::sync::Mutex::new(None));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let state = (hits.clone(), version.clone(), fail.clone(), delay.clone(), last_conditional.clone());
        tokio::spawn(async move {
            let mut until = stopped.clone();
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => break },
                    _ = until.wait_for(|s| *s) => break,
                };
                let state = state.clone();
                let mut until = stopped.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &state).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = until.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Origin { addr, hits, version, fail, delay, stop, last_conditional }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting (connections are then refused).
    fn stop(&mut self) {
        self.stop.send_replace(true);
    }
}

type State = (Arc<AtomicUsize>, Arc<AtomicU64>, Arc<AtomicU16>, Arc<AtomicU64>, Arc<std::sync::Mutex<Option<String>>>);

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    state: &State,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (hits, version, fail, delay, last_conditional) = state;
    let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
    let h = req.headers();
    let conditional =
        h.get("if-none-match").or(h.get("if-modified-since")).map(|v| v.to_str().unwrap_or("").to_owned());
    *last_conditional.lock().unwrap() = conditional;
    let d = delay.load(Ordering::SeqCst);
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
    let q: std::collections::HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let mut res = http::Response::builder();
    let f = fail.load(Ordering::SeqCst);
    if f != 0 {
        return res.status(f).body(http_body_util::Full::new(bytes::Bytes::from("failing"))).unwrap();
    }
    let etag = format!("\"v{}\"", version.load(Ordering::SeqCst));
    if let Some(cc) = q.get("cc") {
        res = res.header("cache-control", cc);
    }
    if let Some(code) = q.get("status").and_then(|c| c.parse::<u16>().ok()) {
        return res.status(code).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    }
    if q.contains_key("etag") {
        res = res.header("etag", &etag);
        if h.get("if-none-match").is_some_and(|v| v.to_str().unwrap_or("") == etag) {
            return res.status(304).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
        }
    }
    if q.contains_key("lm") {
        res = res.header("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT");
    }
    if let Some(v) = q.get("vary") {
        res = res.header("vary", v);
    }
    if q.contains_key("cookie") {
        res = res.header("set-cookie", format!("session=s{n}"));
    }
    if let Some(t) = q.get("tag") {
        res = res.header("surrogate-key", t);
    }
    let seen = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = match q.get("bytes").and_then(|b| b.parse::<usize>().ok()) {
        Some(size) => vec![b'x'; size],
        None => serde_json::json!({
            "n": n,
            "path": req.uri().path(),
            "query": req.uri().query(),
            "version": etag,
            "xfh": seen("x-forwarded-host"),
            "xou": seen("x-original-url"),
            "xou_": seen("x_original_url"),
            "xfs": seen("x-forwarded-scheme"),
            "override": seen("x-http-method-override"),
            "user": seen("x-user-id"),
            "tenant": seen("x-tenant-id"),
            "lang": seen("accept-language"),
        })
        .to_string()
        .into_bytes(),
    };
    res.header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap()
}

/// A gateway with one cached route to `origin` (extra `cache` settings in `settings`,
/// extra route fields in `route`).
fn cached(origin: &Origin, settings: &str, route: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o{route}, plugins: [{{ cache: {{ {settings} }} }}] }}\n",
        origin.url()
    )))
}

fn status(h: &http::HeaderMap) -> String {
    h.get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn n_of(body: &str) -> u64 {
    json(body)["n"].as_u64().unwrap_or_else(|| panic!("no n in {body}"))
}

#[tokio::test]
async fn a_stored_answer_is_served_again_without_the_origin() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let url = gw.url("/item/1?cc=max-age%3D60&etag=1");
    let (s, h, first) = get(&url).await;
    assert_eq!(s, 200);
    assert!(status(&h).starts_with("Portico; fwd=uri-miss; fwd-status=200; stored"), "{h:?}");
    let (s, h, again) = get(&url).await;
    assert_eq!((s.as_u16(), &again), (200, &first), "the same answer");
    assert!(status(&h).starts_with("Portico; hit; ttl="), "{h:?}");
    assert!(h.get("age").is_some() && h["etag"] == "\"v1\"" && h["content-type"] == "application/json");
    assert_eq!(h["content-length"], first.len().to_string().as_str());
    assert_eq!(origin.hits(), 1, "one fetch");
    // HEAD is answered from the GET's entry: its fields, no body.
    let req = http::Request::head(&url).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    let (s, h, body) = send(req).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, ""));
    assert!(status(&h).contains("hit") && h["content-length"] == first.len().to_string().as_str(), "{h:?}");
    // A client's conditional request is answered 304 from the entry.
    let (s, h, body) = get_with(&url, &[("if-none-match", "\"v0\", \"v1\"")]).await;
    assert_eq!((s.as_u16(), body.as_str()), (304, ""));
    assert_eq!(h["etag"], "\"v1\"");
    let (s, ..) = get_with(&url, &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(s, 200);
    assert_eq!(origin.hits(), 1, "all from the cache");
    assert_eq!(gw.metric("gateway_cache_lookups_total{route=\"r\",result=\"hit\"}").await, 4.0);
    assert_eq!(gw.metric("gateway_cache_lookups_total{route=\"r\",result=\"miss\"}").await, 1.0);
    assert_eq!(gw.metric("gateway_cache_entries{store=\"r\"}").await, 1.0);
    assert!(gw.metric("gateway_cache_bytes{store=\"r\"}").await > first.len() as f64);
    // A POST on the route is not for the cache, and says so.
    let req = http::Request::post(&url).body(http_body_util::Full::new(bytes::Bytes::from("x"))).unwrap();
    let (s, h, _) = send(req).await;
    assert_eq!((s.as_u16(), status(&h).as_str()), (200, "Portico; fwd=method"));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn what_the_origin_forbids_or_does_not_allow_is_never_stored() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "ttl: 0s", "");
    for (query, why) in [
        ("cc=no-store", "no-store"),
        ("cc=private%2C%20max-age%3D60", "private on a route without callers"),
        ("cc=max-age%3D60&cookie=1", "Set-Cookie"),
        ("cc=max-age%3D60&vary=*", "Vary: *"),
        ("", "no freshness and ttl: 0s"),
        ("cc=max-age%3D0", "stale at once, nothing to validate"),
    ] {
        let url = gw.url(&format!("/never?{query}"));
        let before = origin.hits();
        let (s1, h, _) = get(&url).await;
        let (s2, ..) = get(&url).await;
        assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200));
        assert_eq!(origin.hits() - before, 2, "{why}: both reach the origin");
        assert!(!status(&h).contains("stored"), "{why}: {h:?}");
    }
    // A status not in `statuses` is not stored either.
    let (s, h, _) = get(&gw.url("/status?cc=max-age%3D60")).await;
    assert_eq!(s, 200, "{h:?}");
}

#[tokio::test]
async fn freshness_comes_from_the_origin_or_the_routes_ttl_and_ends() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "ttl: 1s", "");
    // No caching fields: the route's ttl (1s).
    let url = gw.url("/plain");
    let first = n_of(&get(&url).await.2);
    assert_eq!(n_of(&get(&url).await.2), first, "fresh for the route's ttl");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_ne!(n_of(&get(&url).await.2), first, "fetched again once stale");
    // The origin's max-age wins over the ttl.
    let url = gw.url("/long?cc=max-age%3D60");
    let first = n_of(&get(&url).await.2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, h, body) = get(&url).await;
    assert_eq!(n_of(&body), first, "{h:?}");
    assert!(h["age"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
}

#[tokio::test]
async fn query_order_makes_one_entry_and_excluded_parameters_none() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "query: { exclude: [utm_source] }", "");
    let a = n_of(&get(&gw.url("/q?cc=max-age%3D60&a=1&b=2")).await.2);
    assert_eq!(n_of(&get(&gw.url("/q?b=2&cc=max-age%3D60&a=1")).await.2), a, "sorted: one entry");
    assert_eq!(n_of(&get(&gw.url("/q?b=2&cc=max-age%3D60&a=1&utm_source=mail")).await.2), a, "excluded");
    // A repeated parameter's order is kept: another entry.
    let x = n_of(&get(&gw.url("/q?cc=max-age%3D60&a=1&a=2")).await.2);
    let y = n_of(&get(&gw.url("/q?cc=max-age%3D60&a=2&a=1")).await.2);
    assert!(x != a && y != x, "{a} {x} {y}");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_value() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let url = gw.url("/v?cc=max-age%3D60&vary=Accept-Language");
    let en = get_with(&url, &[("accept-language", "en")]).await.2;
    let fr = get_with(&url, &[("accept-language", "fr")]).await.2;
    assert_eq!((json(&en)["lang"].as_str(), json(&fr)["lang"].as_str()), (Some("en"), Some("fr")));
    let (_, h, en2) = get_with(&url, &[("accept-language", "en")]).await;
    let (_, _, fr2) = get_with(&url, &[("accept-language", "fr")]).await;
    assert_eq!((en2, fr2), (en, fr), "each from its own variant: {h:?}");
    let (_, h, _) = get(&url).await;
    assert!(status(&h).contains("fwd=vary-miss"), "{h:?}");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn a_stale_entry_is_validated_and_a_304_renews_it() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let url = gw.url("/val?cc=max-age%3D1&etag=1&lm=1");
    let (_, _, first) = get(&url).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, h, again) = get(&url).await;
    assert_eq!((s.as_u16(), &again), (200, &first), "the stored body, renewed");
    assert!(status(&h).starts_with("Portico; fwd=stale; fwd-status=304; stored"), "{h:?}");
    assert_eq!(origin.last_conditional.lock().unwrap().as_deref(), Some("\"v1\""), "validated with its ETag");
    assert_eq!(origin.hits(), 2);
    assert_eq!(gw.metric("gateway_cache_lookups_total{route=\"r\",result=\"revalidated\"}").await, 1.0);
    // Renewed: fresh again.
    let (_, h, _) = get(&url).await;
    assert!(status(&h).contains("hit"), "{h:?}");
    // Changed at the origin: the validation gets a whole new answer, which is stored.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.version.store(2, Ordering::SeqCst);
    let (_, h, changed) = get(&url).await;
    assert_eq!(json(&changed)["version"], "\"v2\"", "{h:?}");
    assert!(status(&h).contains("fwd=stale; fwd-status=200; stored"), "{h:?}");
    // The client's own conditional fields never reach the origin of a storable fetch.
    let (s, ..) = get_with(&gw.url("/val2?cc=max-age%3D60&etag=1"), &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(s, 200, "the origin's whole answer, stored; the client's tag did not match what the cache had");
    assert_eq!(*origin.last_conditional.lock().unwrap(), None);
    let (s, ..) = get_with(&gw.url("/val2?cc=max-age%3D60&etag=1"), &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(s, 304, "then answered from the entry");
}

#[tokio::test]
async fn a_clients_cache_control_is_obeyed_or_ignored() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let url = gw.url("/cc?cc=max-age%3D60");
    let (s, h, _) = get_with(&url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(s, 504, "nothing stored yet: {h:?}");
    assert_eq!(origin.hits(), 0);
    let first = n_of(&get(&url).await.2);
    assert_eq!(n_of(&get_with(&url, &[("cache-control", "only-if-cached")]).await.2), first);
    let (_, h, body) = get_with(&url, &[("cache-control", "no-cache")]).await;
    assert_ne!(n_of(&body), first, "no-cache goes to the origin: {h:?}");
    assert!(status(&h).contains("fwd=request"), "{h:?}");
    let (_, _, body) = get_with(&url, &[("pragma", "no-cache")]).await;
    assert_eq!(n_of(&body), first + 2, "Pragma: no-cache too");
    let (_, _, body) = get_with(&url, &[("cache-control", "no-store")]).await;
    assert_eq!(n_of(&body), first + 2, "no-store is served from the cache and stores nothing");

    let ignoring = cached(&origin, "request_cache_control: ignore", "");
    let url = ignoring.url("/cc?cc=max-age%3D60");
    let first = n_of(&get(&url).await.2);
    assert_eq!(n_of(&get_with(&url, &[("cache-control", "no-cache")]).await.2), first, "ignored");
}

/// h2c clients, so that a thousand requests are in flight at once over a few connections.
fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http()
}

async fn many(url: &str, n: usize) -> Vec<(u16, String, String)> {
    let clients: Vec<_> = (0..10).map(|_| h2_client()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = clients[i % clients.len()].clone();
        let url = url.to_owned();
        tasks.spawn(async move {
            let res = c.get(url.parse().unwrap()).await.unwrap();
            let s = res.status().as_u16();
            let cs = status(res.headers());
            let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
            (s, cs, String::from_utf8_lossy(&body).into_owned())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test]
async fn a_thousand_concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start().await;
    origin.delay.store(500, Ordering::SeqCst);
    let gw = cached(&origin, "", "");
    let answers = many(&gw.url("/hot?cc=max-age%3D60"), 1000).await;
    assert_eq!(origin.hits(), 1, "one fetch for all");
    assert!(answers.iter().all(|(s, _, b)| *s == 200 && n_of(b) == 1));
    let collapsed = answers.iter().filter(|(_, cs, _)| cs.contains("collapsed")).count();
    assert!(collapsed >= 900, "{collapsed} waited for the fetch");
    assert_eq!(gw.metric("gateway_cache_coalesced_total{route=\"r\"}").await, collapsed as f64);
}

#[tokio::test]
async fn a_failing_fetch_does_not_hang_its_waiters() {
    let origin = Origin::start().await;
    origin.delay.store(300, Ordering::SeqCst);
    origin.fail.store(503, Ordering::SeqCst);
    // A target that takes each connection and closes it 300ms later, unanswered.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = dead.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(s);
            });
        }
    });
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\n  dead:\n    targets: [{{ url: \"http://{dead_addr}\" }}]\nroutes:\n  - {{ name: gone, match: {{ prefix: /gone }}, upstream: dead, plugins: [{{ cache: {{ lock_timeout: 10s }} }}] }}\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{ lock_timeout: 10s }} }}] }}\n",
        origin.url()
    )));
    // A 5xx is not stored: the waiters each ask for themselves (and get its 503), at once
    // rather than after the lock's 10s.
    let started = std::time::Instant::now();
    let answers = many(&gw.url("/down?cc=max-age%3D60"), 50).await;
    assert!(answers.iter().all(|(s, ..)| *s == 503), "{:?}", &answers[..3]);
    assert!(started.elapsed() < Duration::from_secs(8), "nobody waited out the lock");
    // A fetch that fails at the gateway (the upstream hung up): its error is the answer
    // of every request that waited for it, counted once against the upstream.
    let answers = many(&gw.url("/gone?cc=max-age%3D60"), 50).await;
    assert!(answers.iter().all(|(s, ..)| *s == 502), "{:?}", &answers[..3]);
    let shared = answers.iter().filter(|(_, cs, _)| cs.contains("collapsed")).count();
    assert!(shared >= 40, "{shared} of 50 shared the failed fetch: {:?}", &answers[..3]);
    let errors = gw.metric("gateway_backend_errors_total{upstream=\"dead\",kind=\"bad_response\"}").await;
    assert!(errors >= 1.0 && errors <= (50 - shared + 1) as f64, "{errors} errors counted");
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let url = gw.url("/swr?cc=max-age%3D5%2C%20stale-while-revalidate%3D30");
    let first = n_of(&get(&url).await.2);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    // The origin now takes 1s: an answer sooner did not wait for it.
    origin.delay.store(1000, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let (s, h, body) = get(&url).await;
    assert!(started.elapsed() < Duration::from_millis(900), "answered without waiting for the origin");
    assert_eq!((s.as_u16(), n_of(&body)), (200, first));
    assert!(status(&h).contains("detail=stale-while-revalidate"), "{h:?}");
    // Stale answers go on while the refresh is under way, without another refresh.
    let (_, h, body) = get(&url).await;
    assert!(n_of(&body) == first && status(&h).contains("stale-while-revalidate"), "{h:?}");
    // The refresh lands in the background, and is what the next request gets.
    assert!(
        Gateway::eventually(Duration::from_secs(10), || async {
            let (_, h, body) = get(&url).await;
            status(&h).starts_with("Portico; hit") && n_of(&body) == first + 1
        })
        .await
    );
    assert_eq!(origin.hits(), 2, "one refresh");
}

#[tokio::test]
async fn a_failing_origin_is_answered_by_a_stale_entry_within_its_bound() {
    let mut origin = Origin::start().await;
    let gw = cached(&origin, "serve_stale_on_error: 1m", "");
    let url = gw.url("/sie?cc=max-age%3D1");
    let strict = gw.url("/strict?cc=max-age%3D1%2C%20must-revalidate");
    let first = n_of(&get(&url).await.2);
    get(&strict).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The origin answers 503: the stale entry answers instead.
    origin.fail.store(503, Ordering::SeqCst);
    let (s, h, body) = get(&url).await;
    assert_eq!((s.as_u16(), n_of(&body)), (200, first), "{h:?}");
    assert!(status(&h).contains("fwd=stale; fwd-status=503") && status(&h).contains("stale-if-error"), "{h:?}");
    // must-revalidate: never answered stale.
    assert_eq!(get(&strict).await.0, 503);
    // The origin is gone: still the stale entry.
    origin.stop();
    let (s, h, body) = get(&url).await;
    assert_eq!((s.as_u16(), n_of(&body)), (200, first), "{h:?}");
    assert!(status(&h).contains("fwd-status=502"), "{h:?}");
    assert!(gw.metric("gateway_backend_errors_total{upstream=\"o\",kind=\"connect\"}").await >= 1.0, "still counted");
    assert!(gw.metric("gateway_cache_lookups_total{route=\"r\",result=\"stale\"}").await >= 2.0);
}

#[tokio::test]
async fn an_open_breaker_is_answered_by_a_stale_entry() {
    let origin = Origin::start().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\n    circuit_breaker: {{ error_rate: 50%, min_requests: 4, window: 10s, open_for: 30s }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{ serve_stale_on_error: 1m }} }}] }}\n",
        origin.url()
    )));
    let url = gw.url("/b?cc=max-age%3D1");
    let first = n_of(&get(&url).await.2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.fail.store(500, Ordering::SeqCst);
    for i in 0..6 {
        get(&gw.url(&format!("/other/{i}"))).await;
    }
    assert_eq!(gw.metric("gateway_circuit_breaker_state{upstream=\"o\"}").await, 1.0, "open");
    let hits = origin.hits();
    let (s, h, body) = get(&url).await;
    assert_eq!((s.as_u16(), n_of(&body)), (200, first), "{h:?}");
    assert!(status(&h).contains("fwd-status=503"), "{h:?}");
    assert_eq!(origin.hits(), hits, "the breaker kept the request from the origin");
}

#[tokio::test]
async fn a_huge_answer_streams_whole_and_is_not_stored() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "max_object_size: 64KiB", "");
    let url = gw.url("/big?cc=max-age%3D60&bytes=1000000");
    for _ in 0..2 {
        let (s, h, body) = get(&url).await;
        assert_eq!((s.as_u16(), body.len()), (200, 1_000_000));
        assert!(!status(&h).contains("stored"), "{h:?}");
    }
    assert_eq!(origin.hits(), 2);
    let small = gw.url("/small?cc=max-age%3D60&bytes=60000");
    assert_eq!(get(&small).await.2.len(), 60_000);
    assert_eq!(get(&small).await.2.len(), 60_000);
    assert_eq!(origin.hits(), 3, "a body under the bound is stored");
}

#[tokio::test]
async fn unkeyed_headers_neither_change_nor_reach_a_stored_answer() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let url = gw.url("/poison?cc=max-age%3D60");
    let (_, _, poisoned) = get_with(
        &url,
        &[
            ("x-forwarded-host", "evil.test"),
            ("x-original-url", "/admin"),
            ("x-forwarded-scheme", "nothttps"),
            ("x-http-method-override", "DELETE"),
            ("x_original_url", "/admin/export"),
        ],
    )
    .await;
    let seen = json(&poisoned);
    assert_ne!(seen["xfh"], "evil.test", "the gateway sets X-Forwarded-Host itself for an untrusted client");
    assert_eq!((seen["xou"].as_str(), seen["xfs"].as_str(), seen["override"].as_str()), (Some(""), Some(""), Some("")));
    assert_eq!(seen["xou_"], "", "nor its CGI spelling (X_Original_URL)");
    let (_, _, clean) = get(&url).await;
    assert_eq!(clean, poisoned, "the same entry, and nothing of the attacker's in it");
    assert!(!clean.contains("evil.test") && !clean.contains("/admin") && !clean.contains("DELETE"));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn paths_that_look_alike_are_separate_entries() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let mut seen = std::collections::HashSet::new();
    for path in ["/a/b", "/a/b/", "/A/b", "/a/%62", "/a/./b", "/a/x/../b"] {
        let (s, _, body) = get(&gw.url(&format!("{path}?cc=max-age%3D60"))).await;
        if s == 200 {
            assert!(seen.insert(n_of(&body)), "{path} was answered with another path's entry");
        }
    }
    assert!(seen.len() >= 4, "{seen:?}");
    let n = origin.hits();
    for path in ["/a/b", "/a/b/", "/A/b"] {
        get(&gw.url(&format!("{path}?cc=max-age%3D60"))).await;
    }
    assert_eq!(origin.hits(), n, "each is its own stored entry");
}

/// Two consumers with API keys, each in its own tenant.
fn with_callers(origin: &Origin, settings: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nconsumers:\n  - {{ id: alice, tenant: acme, api_keys: [{{ sha256: {} }}] }}\n  - {{ id: bob, tenant: globex, api_keys: [{{ sha256: {} }}] }}\n  - {{ id: carol, tenant: acme, api_keys: [{{ sha256: {} }}] }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ api_key: {{ header: x-api-key }} }}, {{ cache: {{ {settings} }} }}] }}\n",
        origin.url(),
        hash_key("key-alice"),
        hash_key("key-bob"),
        hash_key("key-carol"),
    )))
}

#[tokio::test]
async fn one_callers_or_tenants_entry_is_never_served_to_another() {
    let origin = Origin::start().await;
    let gw = with_callers(&origin, "");
    let url = gw.url("/me?cc=private%2C%20max-age%3D60");
    let alice = get_with(&url, &[("x-api-key", "key-alice")]).await.2;
    let bob = get_with(&url, &[("x-api-key", "key-bob")]).await.2;
    let carol = get_with(&url, &[("x-api-key", "key-carol")]).await.2;
    assert_eq!(json(&alice)["user"], "alice");
    assert_eq!(json(&bob)["user"], "bob");
    assert_eq!(json(&carol)["user"], "carol", "same tenant as alice, another caller");
    // Each caller's own entry (private answers too: the entry is that caller's alone).
    assert_eq!(get_with(&url, &[("x-api-key", "key-alice")]).await.2, alice);
    assert_eq!(get_with(&url, &[("x-api-key", "key-bob")]).await.2, bob);
    assert_eq!(origin.hits(), 3);
    // No key: refused before the cache.
    assert_eq!(get(&url).await.0, 401);

    // `shared`: one entry for everyone, but never a `private` answer, and a request with
    // credentials in `Authorization` or `Cookie` bypasses it.
    let origin = Origin::start().await;
    let gw = with_callers(&origin, "shared: true");
    let public = gw.url("/catalog?cc=max-age%3D60");
    let a = get_with(&public, &[("x-api-key", "key-alice")]).await.2;
    assert_eq!(get_with(&public, &[("x-api-key", "key-bob")]).await.2, a, "shared");
    let private = gw.url("/mine?cc=private%2C%20max-age%3D60");
    let a = get_with(&private, &[("x-api-key", "key-alice")]).await.2;
    let b = get_with(&private, &[("x-api-key", "key-bob")]).await.2;
    assert_ne!(a, b, "a private answer is not stored in a shared cache");
    let (_, h, _) = get_with(&public, &[("x-api-key", "key-bob"), ("cookie", "session=1")]).await;
    assert_eq!(status(&h), "Portico; fwd=request; detail=credentials");
}

#[test]
fn cache_settings_are_checked() {
    let route = |settings: &str| {
        config(&format!(
            "upstreams:\n  o:\n    targets: [{{ url: \"http://127.0.0.1:9\" }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{ {settings} }} }}] }}\n"
        ))
    };
    let e = validation_errors(&route("ttl: 2d, max_ttl: 1d"));
    assert!(e.contains("routes[0].plugins[0].cache.ttl: must not be above max_ttl"), "{e}");
    let e = validation_errors(&route("statuses: [206, 99]"));
    assert!(e.contains("statuses[0]") && e.contains("statuses[1]"), "{e}");
    let e = validation_errors(&route("query: { include: [a], exclude: [b] }"));
    assert!(e.contains("cache.query: give include or exclude, not both"), "{e}");
    let e = validation_errors(&route("max_object_size: 2MiB, max_size: 1MiB"));
    assert!(e.contains("cache.max_object_size: must not be above max_size"), "{e}");
    let e = validation_errors(&route("key_headers: ['bad header']"));
    assert!(e.contains("cache.key_headers[0]"), "{e}");
    let e = validation_errors(&route("tll: 1s"));
    assert!(e.contains("tll"), "{e}");
    let e = validation_errors(&config(
        "routes:\n  - { name: r, match: { prefix: / }, respond: { status: 200, body: hi }, plugins: [{ cache: {} }] }\n",
    ));
    assert!(e.contains("routes[0].plugins[0].cache: cache needs a route that proxies or aggregates"), "{e}");
}

async fn admin_post(gw: &Gateway, path: &str, body: &str) -> (http::StatusCode, serde_json::Value) {
    let req = http::Request::post(gw.admin_url(path))
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let (s, _, b) = send(req).await;
    (s, serde_json::from_str(&b).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn entries_are_listed_and_purged_by_key_prefix_and_tag() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    let host = gw.addr().to_string();
    let urls =
        ["/p/1?cc=max-age%3D60&tag=prod-1%20all", "/p/2?cc=max-age%3D60&tag=prod-2%20all", "/q/1?cc=max-age%3D60"];
    let fetch = |i: usize| {
        let url = gw.url(urls[i]);
        async move { n_of(&get(&url).await.2) }
    };
    let mut first = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        first.push(fetch(i).await);
        let (_, h, _) = get(&gw.url(url)).await;
        assert!(h.get("surrogate-key").is_none(), "the tags stay at the gateway");
    }
    let (s, _, listing) = get(&gw.admin_url("/cache?store=r")).await;
    assert_eq!(s, 200);
    let listing = json(&listing);
    assert_eq!(listing["stores"][0]["entries"], 3, "{listing}");
    let list = listing["stores"][0]["list"].as_array().unwrap();
    let q_key = list.iter().find(|e| e["path"] == format!("{host}/q/1")).unwrap()["key"].as_str().unwrap().to_owned();
    assert!(list.iter().any(|e| e["tags"] == serde_json::json!(["prod-1", "all"])), "{listing}");

    let (s, body) = admin_post(&gw, "/cache/purge", r#"{"tag":"prod-1"}"#).await;
    assert_eq!((s.as_u16(), &body["purged"]), (200, &serde_json::json!(1)), "{body}");
    assert_ne!(fetch(0).await, first[0], "purged by tag: fetched again");
    assert_eq!((fetch(1).await, fetch(2).await), (first[1], first[2]), "the others stay");

    let (_, body) = admin_post(&gw, "/cache/purge", &format!(r#"{{"key":{}}}"#, serde_json::json!(q_key))).await;
    assert_eq!(body["purged"], 1, "{body}");
    assert_ne!(fetch(2).await, first[2], "purged by key");

    let (_, body) = admin_post(&gw, "/cache/purge", &format!(r#"{{"prefix":"{host}/p/"}}"#)).await;
    assert_eq!(body["purged"], 2, "{body}");
    assert_ne!(fetch(1).await, first[1], "purged by prefix");
    assert!(gw.metric("gateway_cache_evictions_total{store=\"r\",reason=\"purged\"}").await >= 4.0);

    for bad in [r#"{}"#, r#"{"tag":"a","prefix":"b"}"#, r#"{"tag":""}"#, r#"{"tags":"a"}"#, "not json"] {
        let (s, body) = admin_post(&gw, "/cache/purge", bad).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (s, _, _) = get(&gw.admin_url("/cache/purge")).await;
    assert_eq!(s, 405);
}

#[tokio::test]
async fn a_purge_reaches_every_instance_through_redis() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let yaml = config(&format!(
        "redis: {{ url: \"{}\", timeout: 1s }}\nupstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{}} }}] }}\n",
        redis.url(),
        origin.url()
    ));
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    for gw in [&a, &b] {
        assert!(
            Gateway::eventually(Duration::from_secs(5), || async {
                gw.metric("gateway_redis_subscribed{channel=\"cache_purge\"}").await == 1.0
            })
            .await
        );
    }
    let path = "/shared?cc=max-age%3D60&tag=t1";
    let (na, nb) = (n_of(&get(&a.url(path)).await.2), n_of(&get(&b.url(path)).await.2));
    assert_eq!((n_of(&get(&a.url(path)).await.2), n_of(&get(&b.url(path)).await.2)), (na, nb), "each has its entry");
    let (s, body) = admin_post(&a, "/cache/purge", r#"{"tag":"t1"}"#).await;
    assert_eq!((s.as_u16(), &body["published"]), (200, &serde_json::json!(true)), "{body}");
    assert!(
        Gateway::eventually(Duration::from_secs(5), || async { n_of(&get(&b.url(path)).await.2) != nb }).await,
        "the other instance's entry is gone too"
    );
    assert_ne!(n_of(&get(&a.url(path)).await.2), na);
}

fn shared_tier(origin: &Origin, redis: &RedisServer) -> String {
    config(&format!(
        "redis: {{ url: \"{}\", timeout: 300ms }}\nupstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{ store: redis }} }}] }}\n",
        redis.url(),
        origin.url()
    ))
}

#[tokio::test]
async fn an_answer_one_instance_fetched_is_served_by_the_others_through_redis() {
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let yaml = shared_tier(&origin, &redis);
    let (a, b, c) = (Gateway::start(&yaml), Gateway::start(&yaml), Gateway::start(&yaml));
    // Each instance reads the tier once it knows the purges kept in Redis.
    for gw in [&a, &b, &c] {
        assert!(gw.logged("the shared tier is in use").await);
    }
    // Behind a load balancer every instance sees the same host (here, each its own port).
    let path = "/tiered?cc=max-age%3D60&tag=t2&vary=Accept-Language";
    let (_, h, first) = get_with(&a.url(path), &[("accept-language", "en"), ("host", "api.test")]).await;
    assert!(status(&h).contains("stored"), "{h:?}");
    // Written to Redis in the background, once the body has ended.
    assert!(
        Gateway::eventually(Duration::from_secs(5), || async { redis.cmd(&["DBSIZE"]) != "0" }).await,
        "stored in Redis"
    );
    let (_, h, body) = get_with(&b.url(path), &[("accept-language", "en"), ("host", "api.test")]).await;
    assert!(status(&h).starts_with("Portico; hit") && body == first, "the second instance answers from Redis: {h:?}");
    let (_, h, body) = get_with(&c.url(path), &[("accept-language", "en"), ("host", "api.test")]).await;
    assert!(status(&h).starts_with("Portico; hit") && body == first, "{h:?}");
    assert_eq!(origin.hits(), 1, "one fetch for three instances");
    // Another variant is fetched (Vary), and the value then holds both.
    let fr = get_with(&b.url(path), &[("accept-language", "fr"), ("host", "api.test")]).await.2;
    assert_eq!(json(&fr)["lang"], "fr");
    assert_eq!(origin.hits(), 2);

    // A purge by tag: gone from every instance's memory, and from Redis for all.
    let (s, body) = admin_post(&c, "/cache/purge", r#"{"tag":"t2"}"#).await;
    assert_eq!((s.as_u16(), &body["published"]), (200, &serde_json::json!(true)), "{body}");
    assert!(
        Gateway::eventually(Duration::from_secs(5), || async {
            n_of(&get_with(&a.url(path), &[("accept-language", "en"), ("host", "api.test")]).await.2) != n_of(&first)
        })
        .await
    );
    assert_eq!(origin.hits(), 3, "fetched once more, by the first instance to ask");
    // A fourth instance, started after the purge, refuses the purged value still in
    // Redis (the purge is kept there): it sees the new entry or fetches.
    let d = Gateway::start(&yaml);
    assert!(d.logged("the shared tier is in use").await);
    let after = n_of(&get_with(&d.url(path), &[("accept-language", "en"), ("host", "api.test")]).await.2);
    assert_ne!(after, n_of(&first), "the purged answer never comes back");
}

#[tokio::test]
async fn with_redis_down_the_cache_works_from_memory_and_says_so_once() {
    let mut redis = RedisServer::start();
    let origin = Origin::start().await;
    let gw = Gateway::start(&shared_tier(&origin, &redis));
    redis.stop();
    for i in 0..5 {
        let url = gw.url(&format!("/down/{i}?cc=max-age%3D60"));
        let (s1, ..) = get(&url).await;
        let (s2, h, _) = get(&url).await;
        assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200));
        assert!(status(&h).starts_with("Portico; hit"), "memory still answers: {h:?}");
    }
    assert_eq!(origin.hits(), 5);
    assert!(gw.logged("serving from memory only").await);
    let warned = gw.stderr_text().matches("serving from memory only").count();
    assert_eq!(warned, 1, "logged once per outage");
    redis.restart();
    assert!(
        gw.logged("cache: redis answers again").await || {
            // Asked again only after a second of rest, on the next miss.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            get(&gw.url("/down/again?cc=max-age%3D60")).await;
            get(&gw.url("/down/again2?cc=max-age%3D60")).await;
            gw.logged("cache: redis answers again").await
        }
    );
}

#[test]
fn a_redis_store_needs_redis() {
    let e = validation_errors(&config(
        "upstreams:\n  o:\n    targets: [{ url: \"http://127.0.0.1:9\" }]\nroutes:\n  - { name: r, match: { prefix: / }, upstream: o, plugins: [{ cache: { store: redis } }] }\n",
    ));
    assert!(e.contains("routes[0].plugins[0].cache.store: store: redis needs a top-level redis"), "{e}");
}

#[tokio::test]
async fn empty_answers_are_stored_and_a_head_never_fills_an_entry() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "", "");
    // A 204 has no body to stream: it is stored all the same.
    let url = gw.url("/empty?cc=max-age%3D60&status=204");
    let (s, h, _) = get(&url).await;
    assert_eq!(s, 204, "{h:?}");
    let (s, h, _) = get(&url).await;
    assert!(s == 204 && status(&h).starts_with("Portico; hit"), "{h:?}");
    assert_eq!(origin.hits(), 1);
    // An entry within stale-while-revalidate, asked for with HEAD: answered from the entry,
    // no refresh by HEAD (whose empty answer would otherwise become the GET's entry).
    let url = gw.url("/swr-head?cc=max-age%3D1%2C%20stale-while-revalidate%3D60");
    let (_, _, body) = get(&url).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let head = http::Request::head(&url).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    let (s, h, _) = send(head).await;
    assert!(s == 200 && status(&h).contains("stale-while-revalidate"), "{h:?}");
    let hits = origin.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.hits(), hits, "no refresh for a HEAD");
    let (_, _, again) = get(&url).await;
    assert_eq!(json(&again)["path"], json(&body)["path"], "a GET still gets a whole body");
    // A HEAD that misses goes upstream as HEAD and stores nothing.
    let url = gw.url("/head-miss?cc=max-age%3D60");
    let head = http::Request::head(&url).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    send(head).await;
    let (_, h, body) = get(&url).await;
    assert!(!body.is_empty() && status(&h).contains("fwd=uri-miss"), "{h:?}");
}

#[tokio::test]
async fn key_header_values_are_keyed_byte_for_byte() {
    let origin = Origin::start().await;
    let gw = cached(&origin, "key_headers: [x-country]", "");
    let url = gw.url("/geo?cc=max-age%3D60");
    let odd = http::Request::get(&url)
        .header("x-country", http::HeaderValue::from_bytes(b"\xff").unwrap())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (_, _, with_odd) = send(odd).await;
    let (_, _, without) = get(&url).await;
    let (_, _, fr) = get_with(&url, &[("x-country", "fr")]).await;
    let ns = [n_of(&with_odd), n_of(&without), n_of(&fr)];
    assert!(ns[0] != ns[1] && ns[1] != ns[2] && ns[0] != ns[2], "three entries: {ns:?}");
}

#[tokio::test]
async fn a_global_cache_passes_routes_that_answer_themselves_by() {
    let origin = Origin::start().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nplugins: [{{ cache: {{ ttl: 60s }} }}]\nroutes:\n  - {{ name: fixed, match: {{ prefix: /fixed }}, respond: {{ status: 200, body: hi }} }}\n  - {{ name: r, match: {{ prefix: / }}, upstream: o }}\n",
        origin.url()
    )));
    let (s, h, _) = get(&gw.url("/fixed")).await;
    assert!(s == 200 && h.get("cache-status").is_none(), "{h:?}");
    let (_, h, _) = get(&gw.url("/proxied")).await;
    assert!(status(&h).contains("stored"), "{h:?}");
    let (_, h, _) = get(&gw.url("/proxied")).await;
    assert!(status(&h).starts_with("Portico; hit"), "{h:?}");
    assert_eq!(gw.metric("gateway_cache_entries{store=\"plugins\"}").await, 1.0);
}

#[tokio::test]
async fn the_shared_tier_and_its_purges_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let origin = Origin::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let yaml = config(&format!(
        "redis: {{ cluster: [{}], timeout: 1s }}\nupstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{ store: redis }} }}] }}\n",
        nodes.join(", "),
        origin.url()
    ));
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    for gw in [&a, &b] {
        assert!(gw.logged("the shared tier is in use").await);
    }
    let host = [("host", "api.test")];
    // Several keys, so that they land on more than one node.
    let mut first = Vec::new();
    for i in 0..6 {
        first.push(n_of(&get_with(&a.url(&format!("/c/{i}?cc=max-age%3D60&tag=all")), &host).await.2));
    }
    assert!(
        Gateway::eventually(Duration::from_secs(5), || async { cluster.keys_per_node().iter().sum::<u64>() >= 6 })
            .await,
        "stored across the cluster: {:?}",
        cluster.keys_per_node()
    );
    for (i, n) in first.iter().enumerate() {
        let (_, h, body) = get_with(&b.url(&format!("/c/{i}?cc=max-age%3D60&tag=all")), &host).await;
        assert!(status(&h).starts_with("Portico; hit") && n_of(&body) == *n, "{i}: {h:?}");
    }
    assert_eq!(origin.hits(), 6);
    let (s, body) = admin_post(&b, "/cache/purge", r#"{"tag":"all"}"#).await;
    assert_eq!((s.as_u16(), &body["published"]), (200, &serde_json::json!(true)), "{body}");
    assert!(
        Gateway::eventually(Duration::from_secs(5), || async {
            n_of(&get_with(&a.url("/c/0?cc=max-age%3D60&tag=all"), &host).await.2) != first[0]
        })
        .await,
        "purged on every instance"
    );
}

#[tokio::test]
async fn an_upstream_timeout_is_answered_by_a_stale_entry() {
    let origin = Origin::start().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\n    timeouts: {{ request: 300ms }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{ serve_stale_on_error: 1m }} }}] }}\n",
        origin.url()
    )));
    let url = gw.url("/t?cc=max-age%3D1");
    let first = n_of(&get(&url).await.2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.delay.store(2000, Ordering::SeqCst);
    let (s, h, body) = get(&url).await;
    assert_eq!((s.as_u16(), n_of(&body)), (200, first), "{h:?}");
    assert!(status(&h).contains("fwd-status=504") && status(&h).contains("stale-if-error"), "{h:?}");
    assert!(gw.metric("gateway_backend_errors_total{upstream=\"o\",kind=\"timeout\"}").await >= 1.0);
}

#[tokio::test]
async fn the_cache_admin_endpoints_need_the_admin_token() {
    let origin = Origin::start().await;
    let gw = Gateway::start(
        &config(&format!(
            "upstreams:\n  o:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: o, plugins: [{{ cache: {{}} }}] }}\n",
            origin.url()
        ))
        .replace("admin:\n  bind: 127.0.0.1:0\n", "admin:\n  bind: 127.0.0.1:0\n  token: s3cret-admin-token-1\n"),
    );
    assert_eq!(get(&gw.admin_url("/cache")).await.0, 401);
    let (s, _) = admin_post(&gw, "/cache/purge", r#"{"tag":"x"}"#).await;
    assert_eq!(s, 401);
    let (s, _, body) = get_with(&gw.admin_url("/cache"), &[("authorization", "Bearer s3cret-admin-token-1")]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["stores"][0]["store"], "r");
}
