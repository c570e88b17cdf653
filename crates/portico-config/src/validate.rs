//! Semantic checks that serde cannot express. Every problem is collected, each with the
//! config path of the offending field, so one `portico validate` run shows them all.

use std::collections::{HashMap, HashSet};

use http::{HeaderName, Method, Uri};

use crate::model::{Config, Route, Upstream, ValueMatch};
use crate::template::{PathRegex, PathTemplate};
use crate::{ConfigError, ConfigErrors};

/// Checks `config` and returns every problem found.
pub fn validate(config: &Config) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    let mut err = |path: String, msg: String| errs.push(ConfigError::new(path, msg));

    if config.version != 1 {
        err("version".into(), format!("unsupported version {}: this Portico reads version 1", config.version));
    }

    if config.listeners.is_empty() {
        err("listeners".into(), "at least one listener is required".into());
    }
    let mut names = HashMap::new();
    let mut binds = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            err(format!("{p}.name"), "must not be empty".into());
        } else if let Some(first) = names.insert(l.name.as_str(), i) {
            err(format!("{p}.name"), format!("duplicate listener name {:?} (also listeners[{first}])", l.name));
        }
        // Port 0 asks the OS for a free port: never a clash.
        if l.bind.port() == 0 {
        } else if let Some(first) = binds.insert(l.bind, i) {
            err(format!("{p}.bind"), format!("address {} is already used by listeners[{first}]", l.bind));
        }
        if config.admin.enabled && l.bind == config.admin.bind && l.bind.port() != 0 {
            err(format!("{p}.bind"), format!("address {} is also the admin listener's", l.bind));
        }
        let lim = &l.limits;
        if lim.max_header_bytes.get() < 1024 {
            err(format!("{p}.limits.max_header_bytes"), "must be at least 1KiB".into());
        }
        if lim.max_header_bytes.get() > 1024 * 1024 {
            err(format!("{p}.limits.max_header_bytes"), "must be at most 1MiB".into());
        }
        if lim.header_timeout.get().is_zero() {
            err(format!("{p}.limits.header_timeout"), "must be greater than 0s".into());
        }
        if lim.idle_timeout.get().is_zero() {
            err(format!("{p}.limits.idle_timeout"), "must be greater than 0s".into());
        }
        if lim.max_connections == 0 {
            err(format!("{p}.limits.max_connections"), "must be at least 1".into());
        }
        if lim.max_concurrent_streams == 0 {
            err(format!("{p}.limits.max_concurrent_streams"), "must be at least 1".into());
        }
        if !(1..=10_000).contains(&lim.max_header_fields) {
            err(format!("{p}.limits.max_header_fields"), "must be between 1 and 10000".into());
        }
        check_listener_tls(&p, l, &mut err);
    }

    if config.runtime.worker_threads > 1024 {
        err("runtime.worker_threads".into(), "must be at most 1024 (0 means one per core)".into());
    }
    if config.access_log.output.trim().is_empty() {
        err("access_log.output".into(), "must be stdout, stderr or a file path".into());
    }
    if config.access_log.queue_size == 0 {
        err("access_log.queue_size".into(), "must be at least 1".into());
    }
    if HeaderName::from_bytes(config.request_id.header.as_bytes()).is_err() {
        err("request_id.header".into(), format!("{:?} is not a valid header name", config.request_id.header));
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(ca) = l.tls.as_ref().and_then(|t| t.client_auth.as_ref())
            && ca.forward_header.eq_ignore_ascii_case(&config.request_id.header)
        {
            err(
                format!("listeners[{i}].tls.client_auth.forward_header"),
                format!("{:?} is the request ID header (request_id.header)", ca.forward_header),
            );
        }
    }

    if let Some(t) = &config.admin.token
        && (t.len() < 16 || http::HeaderValue::from_str(t).is_err())
    {
        err("admin.token".into(), "must be at least 16 visible characters".into());
    }
    for (name, up) in &config.upstreams {
        check_upstream(name, up, &mut err);
    }

    let mut route_names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.trim().is_empty() {
            err(format!("{p}.name"), "must not be empty".into());
        } else if r.name == "none" {
            err(format!("{p}.name"), "the name \"none\" is reserved: it labels requests that match no route".into());
        } else if let Some(first) = route_names.insert(r.name.as_str(), i) {
            err(format!("{p}.name"), format!("duplicate route name {:?} (also routes[{first}])", r.name));
        }
        let known = || {
            let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
            if known.is_empty() { "none are defined".to_owned() } else { format!("defined: {}", known.join(", ")) }
        };
        if let Some(respond) = &r.respond {
            check_respond(&p, r, respond, &mut err);
        }
        if let Some(h) = &r.hedge {
            crate::hedge::check(&format!("{p}.hedge"), h, &mut err);
            // Hedges are taken from the retry budget of every upstream the route sends to.
            let targets = r.upstream.iter().chain(r.split.iter().map(|s| &s.upstream)).chain(r.flag_upstreams.values());
            for u in targets {
                if config.upstreams.get(u).is_some_and(|up| up.retries.is_none()) {
                    err(
                        format!("{p}.hedge"),
                        format!(
                            "hedges are taken from the retry budget: upstream {u:?} needs retries (attempts: 0 hedges without retrying)"
                        ),
                    );
                }
            }
        }
        if let Some(d) = &r.deprecated {
            crate::lifecycle::check(&format!("{p}.deprecated"), d, &mut err);
        }
        if let Some(a) = &r.aggregate {
            let known = |u: &str| config.upstreams.contains_key(u);
            crate::aggregate::check(&format!("{p}.aggregate"), a, &known, r, &mut err);
            if r.respond.is_some() {
                err(format!("{p}.aggregate"), "give either respond or aggregate, not both".into());
            }
            check_not_forwarding(&format!("{p}.aggregate"), r, "aggregates", &mut err);
        }
        if let Some(publish) = &r.publish {
            crate::events::check(&format!("{p}.publish"), publish, config.redis.is_some(), &mut err);
            if r.respond.is_some() || r.aggregate.is_some() {
                err(format!("{p}.publish"), "give one of respond, aggregate and publish".into());
            }
            check_not_forwarding(&format!("{p}.publish"), r, "publishes", &mut err);
        }
        match (&r.upstream, r.split.is_empty()) {
            _ if r.respond.is_some() || r.aggregate.is_some() || r.publish.is_some() => {}
            (Some(_), false) => err(format!("{p}.split"), "give either upstream or split, not both".into()),
            (None, true) => {
                err(format!("{p}.upstream"), "a route needs upstream, split, respond, aggregate or publish".into())
            }
            (Some(u), true) if !config.upstreams.contains_key(u) => {
                err(format!("{p}.upstream"), format!("unknown upstream {u:?} ({})", known()));
            }
            _ => {}
        }
        for (j, share) in r.split.iter().enumerate() {
            if !config.upstreams.contains_key(&share.upstream) {
                err(format!("{p}.split[{j}].upstream"), format!("unknown upstream {:?} ({})", share.upstream, known()));
            }
            if share.weight > 1000 {
                err(format!("{p}.split[{j}].weight"), format!("weight {} is out of range 0..=1000", share.weight));
            }
        }
        if !r.split.is_empty() && r.split.iter().all(|s| s.weight == 0) {
            err(format!("{p}.split"), "at least one share needs a weight above 0".into());
        }
        if let Some(crate::model::HashOn::Header(h)) = &r.sticky
            && HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            err(format!("{p}.sticky.header"), format!("{h:?} is not a valid header name"));
        }
        if r.sticky.is_some() && r.split.is_empty() {
            err(format!("{p}.sticky"), "sticky is only used with split".into());
        }
        if let Some(m) = &r.mirror {
            if !config.upstreams.contains_key(&m.upstream) {
                err(format!("{p}.mirror.upstream"), format!("unknown upstream {:?} ({})", m.upstream, known()));
            }
            if m.max_in_flight == 0 {
                err(format!("{p}.mirror.max_in_flight"), "must be at least 1".into());
            }
        }
        for (j, l) in r.matcher.listeners.iter().enumerate() {
            if !config.listeners.iter().any(|x| x.name == *l) {
                let known: Vec<&str> = config.listeners.iter().map(|x| x.name.as_str()).collect();
                err(
                    format!("{p}.match.listeners[{j}]"),
                    format!("unknown listener {l:?} (defined: {})", known.join(", ")),
                );
            }
        }
        check_route(&p, r, &mut err);
    }
    crate::plugins::check(config, &mut err);
    if let Some(r) = &config.redis {
        check_redis(r, &mut err);
    }

    if errs.is_empty() { Ok(()) } else { Err(ConfigErrors(errs)) }
}

/// A `respond` route: a status the gateway may answer, valid headers, and none of the
/// fields that only mean something when forwarding.
fn check_respond(
    p: &str,
    r: &crate::model::Route,
    respond: &crate::model::Respond,
    err: &mut impl FnMut(String, String),
) {
    let p = format!("{p}.respond");
    if !(200..=599).contains(&respond.status) {
        err(format!("{p}.status"), format!("{} is not a final status (200 to 599)", respond.status));
    }
    for (name, value) in &respond.headers {
        match HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => err(format!("{p}.headers"), format!("{name:?} is not a valid header name")),
            Ok(n) if matches!(n.as_str(), "content-length" | "transfer-encoding" | "connection") => {
                err(format!("{p}.headers"), format!("{name:?} is the gateway's to write"));
            }
            Ok(_) if http::HeaderValue::from_str(value).is_err() => {
                err(format!("{p}.headers.{name}"), format!("{value:?} is not a valid header value"));
            }
            Ok(_) => {}
        }
    }
    check_not_forwarding(&p, r, "responds itself", err);
}

/// A route whose handler forwards nothing (`respond`, `aggregate`) takes none of the
/// fields that only mean something when forwarding; `what` says what it does instead.
fn check_not_forwarding(p: &str, r: &crate::model::Route, what: &str, err: &mut impl FnMut(String, String)) {
    let forwarding = [
        ("upstream", r.upstream.is_some()),
        ("split", !r.split.is_empty()),
        ("sticky", r.sticky.is_some()),
        ("mirror", r.mirror.is_some()),
        ("hedge", r.hedge.is_some()),
        ("rewrite", r.rewrite.is_some()),
        ("preserve_host", r.preserve_host),
        ("timeout", r.timeout.is_some()),
        ("try_timeout", r.try_timeout.is_some()),
        ("flag_upstreams", !r.flag_upstreams.is_empty()),
        ("max_in_flight", r.max_in_flight > 0),
    ];
    for (field, given) in forwarding {
        if given {
            err(p.to_owned(), format!("a route that {what} takes no {field} (it forwards nothing)"));
        }
    }
}

fn check_redis(r: &crate::model::Redis, err: &mut impl FnMut(String, String)) {
    match (&r.url, r.cluster.is_empty()) {
        (Some(url), true) => check_redis_url("redis.url".into(), url, false, err),
        (None, false) => {
            let tls = r.cluster[0].starts_with("rediss://");
            for (i, url) in r.cluster.iter().enumerate() {
                let path = format!("redis.cluster[{i}]");
                if i > 0 && url.starts_with("rediss://") != tls && url.contains("://") {
                    err(path.clone(), "every node must use the same scheme (redis:// or rediss://)".into());
                }
                if i > 0 && RedisUrl::shared(url) != RedisUrl::shared(&r.cluster[0]) {
                    // Not the values: a password is a secret.
                    err(
                        path.clone(),
                        "every node must have the same user, password, query and #fragment as the first".into(),
                    );
                }
                check_redis_url(path, url, true, err);
            }
        }
        (Some(_), false) => err("redis".into(), "give either url (one server) or cluster (its nodes), not both".into()),
        (None, true) => err("redis".into(), "needs url (one server) or cluster (the nodes of a Redis Cluster)".into()),
    }
    if let Some(tls) = &r.tls {
        let plain = r.url.iter().chain(&r.cluster).any(|u| u.starts_with("redis://"));
        if plain {
            err("redis.tls".into(), "applies to rediss:// URLs only; use rediss:// (TLS) or drop tls".into());
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            err("redis.tls".into(), "client_cert and client_key go together".into());
        }
        for (field, path) in [("ca", &tls.ca), ("client_cert", &tls.client_cert), ("client_key", &tls.client_key)] {
            if path.as_ref().is_some_and(|p| p.is_empty()) {
                err(format!("redis.tls.{field}"), "must name a file".into());
            }
        }
    }
    for (field, d) in [("timeout", r.timeout), ("connect_timeout", r.connect_timeout)] {
        if d.get().is_zero() || d.get() > std::time::Duration::from_secs(10) {
            err(format!("redis.{field}"), "must be greater than 0s and at most 10s".into());
        }
    }
    if r.key_prefix.len() > 64 || r.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        err("redis.key_prefix".into(), "must be at most 64 characters without spaces".into());
    }
    if r.key_prefix.contains(['{', '}']) {
        // A hash tag in the prefix would put every key of every caller in one slot.
        err("redis.key_prefix".into(), "must not contain { or } (Redis Cluster hash tags)".into());
    }
}

/// The parts of a Redis URL after its scheme:
/// `[userinfo@]host[:port][/db][?query][#fragment]`.
struct RedisUrl<'a> {
    userinfo: Option<&'a str>,
    host_port: &'a str,
    db: Option<&'a str>,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> RedisUrl<'a> {
    fn split(rest: &'a str) -> Self {
        let (rest, fragment) = rest.split_once('#').map_or((rest, None), |(r, f)| (r, Some(f)));
        let (rest, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
        let (authority, db) = rest.split_once('/').map_or((rest, None), |(a, d)| (a, Some(d)));
        let (userinfo, host_port) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        Self { userinfo, host_port, db, query, fragment }
    }

    /// What every node of a cluster must share: user and password, query and fragment.
    fn shared(url: &'a str) -> (Option<&'a str>, Option<&'a str>, Option<&'a str>) {
        let u = Self::split(url.split_once("://").map_or(url, |(_, r)| r));
        (u.userinfo, u.query, u.fragment)
    }
}

/// `url` as `redis://` or `rediss://` with a host to connect to, an optional port and
/// database number (none but 0 in a cluster: a Redis Cluster has only database 0), and
/// no fragment (the redis crate's `#insecure` needs a feature Portico leaves out: the
/// server's certificate is always checked). Errors never repeat the URL: it may hold a password.
fn check_redis_url(path: String, url: &str, cluster: bool, err: &mut impl FnMut(String, String)) {
    let Some(rest) = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://")) else {
        return err(path, "must start with redis:// or rediss:// (TLS)".into());
    };
    let RedisUrl { host_port, db, fragment, .. } = RedisUrl::split(rest);
    match fragment {
        Some("insecure") => {
            err(path.clone(), "#insecure (no certificate check) is not supported; give the CA in redis.tls.ca".into())
        }
        Some(_) => err(path.clone(), "takes no #fragment".into()),
        None => {}
    }
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => ("", None),
        },
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        err(path.clone(), "names no host".into());
    } else if host == "0.0.0.0" || host == "::" {
        err(path.clone(), "names a wildcard address, not a server to connect to".into());
    }
    if port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p > 0)) {
        err(path.clone(), "has an invalid port (1-65535)".into());
    }
    match db.filter(|d| !d.is_empty()) {
        Some(d) if d.parse::<u32>().is_err() => err(path, "the database must be a number, as in /0".into()),
        Some(d) if cluster && d != "0" => {
            err(path, "a cluster node takes no database number (a Redis Cluster has only database 0)".into())
        }
        _ => {}
    }
}

fn check_upstream(name: &str, up: &Upstream, err: &mut impl FnMut(String, String)) {
    let p = format!("upstreams.{name}");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        err(p.clone(), format!("upstream name {name:?} may only use letters, digits, '-', '_' and '.'"));
    }
    let mut seen = HashSet::new();
    for (i, t) in up.targets.iter().enumerate() {
        let tp = format!("{p}.targets[{i}]");
        match check_target_url(&t.url) {
            Ok(authority) => {
                if !seen.insert(authority.clone()) {
                    err(format!("{tp}.url"), format!("target {authority} is listed twice; use weight instead"));
                }
            }
            Err(msg) => err(format!("{tp}.url"), msg),
        }
        if !(1..=1000).contains(&t.weight) {
            err(format!("{tp}.weight"), format!("weight {} is out of range 1..=1000", t.weight));
        }
    }
    if up.balance == crate::model::Balance::ConsistentHash && up.hash_on.is_none() {
        err(
            format!("{p}.hash_on"),
            "balance: consistent_hash needs hash_on (header, cookie, client_ip or path)".into(),
        );
    }
    if up.hash_on.is_some() && up.balance != crate::model::Balance::ConsistentHash {
        err(format!("{p}.hash_on"), "hash_on is only used with balance: consistent_hash".into());
    }
    if let Some(crate::model::HashOn::Header(h)) = &up.hash_on
        && HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        err(format!("{p}.hash_on.header"), format!("{h:?} is not a valid header name"));
    }
    if let Some(hc) = &up.health_check {
        let hp = format!("{p}.health_check");
        if !hc.path.starts_with('/') {
            err(format!("{hp}.path"), format!("{:?} must start with '/'", hc.path));
        }
        if hc.interval.get().is_zero() {
            err(format!("{hp}.interval"), "must be greater than 0s".into());
        }
        if hc.timeout.get().is_zero() || hc.timeout > hc.interval {
            err(format!("{hp}.timeout"), "must be greater than 0s and at most the interval".into());
        }
        if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
            err(hp.clone(), "unhealthy_after and healthy_after must be at least 1".into());
        }
        if hc.expected_statuses.is_empty() {
            err(format!("{hp}.expected_statuses"), "list at least one status or range".into());
        }
        for (i, r) in hc.expected_statuses.iter().enumerate() {
            if parse_status_range(r).is_none() {
                err(format!("{hp}.expected_statuses[{i}]"), format!("{r:?} is not a status (200) or range (200-399)"));
            }
        }
        if hc.grpc.is_some() && up.protocol != crate::model::UpstreamProtocol::Http2 {
            err(format!("{hp}.grpc"), "the gRPC health protocol needs the upstream's protocol: http2".into());
        }
    }
    if let Some(od) = &up.outlier_detection {
        let op = format!("{p}.outlier_detection");
        if od.consecutive_failures == 0 {
            err(format!("{op}.consecutive_failures"), "must be at least 1".into());
        }
        if od.base_ejection.get().is_zero() || od.max_ejection < od.base_ejection {
            err(
                format!("{op}.max_ejection"),
                "base_ejection must be > 0s and max_ejection at least base_ejection".into(),
            );
        }
    }
    let https = up.targets.iter().filter(|t| t.url.starts_with("https://")).count();
    if https > 0 && https < up.targets.len() {
        err(format!("{p}.targets"), "all targets of an upstream use the same scheme (http:// or https://)".into());
    }
    if let Some(tls) = &up.tls {
        if https == 0 {
            err(format!("{p}.tls"), "tls settings need https:// targets".into());
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            err(format!("{p}.tls"), "give client_cert and client_key together".into());
        }
    }
    if let Some(d) = &up.discovery {
        let dp = format!("{p}.discovery.dns");
        if d.dns.min_interval.get().is_zero() || d.dns.max_interval < d.dns.min_interval {
            err(format!("{dp}.min_interval"), "must be greater than 0s and at most max_interval".into());
        }
        for (i, ns) in d.dns.nameservers.iter().enumerate() {
            if ns.parse::<std::net::IpAddr>().is_err() && ns.parse::<std::net::SocketAddr>().is_err() {
                err(format!("{dp}.nameservers[{i}]"), format!("{ns:?} is not an IP address or ip:port"));
            }
        }
    }
    if let Some(r) = &up.retries {
        let rp = format!("{p}.retries");
        if r.attempts > 10 {
            err(format!("{rp}.attempts"), "at most 10".into());
        }
        if r.max_backoff < r.backoff {
            err(format!("{rp}.max_backoff"), "must be at least backoff".into());
        }
        for (i, m) in r.methods.iter().enumerate() {
            if Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
                err(format!("{rp}.methods[{i}]"), format!("{m:?} is not an upper-case HTTP method"));
            }
        }
        for (i, s) in r.statuses.iter().enumerate() {
            if !(500..=599).contains(s) {
                err(format!("{rp}.statuses[{i}]"), format!("{s}: only 5xx answers are retried"));
            }
        }
        for (i, s) in r.grpc_statuses.iter().enumerate() {
            match crate::model::GRPC_STATUSES.iter().position(|n| n == s) {
                Some(0) => err(format!("{rp}.grpc_statuses[{i}]"), "OK is not a failure to retry".into()),
                Some(_) => {}
                None => err(
                    format!("{rp}.grpc_statuses[{i}]"),
                    format!("{s:?} is not a gRPC status name (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, ...)"),
                ),
            }
        }
    }
    if let Some(cb) = &up.circuit_breaker {
        let cp = format!("{p}.circuit_breaker");
        if cb.window.get() < std::time::Duration::from_secs(1) {
            err(format!("{cp}.window"), "must be at least 1s".into());
        }
        if cb.open_for.get().is_zero() {
            err(format!("{cp}.open_for"), "must be greater than 0s".into());
        }
        if cb.half_open_requests == 0 {
            err(format!("{cp}.half_open_requests"), "must be at least 1".into());
        }
        if cb.error_rate.0 == 0.0 {
            err(format!("{cp}.error_rate"), "must be greater than 0%".into());
        }
        if let Some(f) = &cb.fallback {
            if !(200..=599).contains(&f.status) {
                err(format!("{cp}.fallback.status"), format!("{} is not a status from 200 to 599", f.status));
            }
            if http::HeaderValue::from_str(&f.content_type).is_err() {
                err(format!("{cp}.fallback.content_type"), "is not a valid header value".into());
            }
        }
    }
    if up.timeouts.connect.get().is_zero() {
        err(format!("{p}.timeouts.connect"), "must be greater than 0s".into());
    }
    if up.timeouts.request.get().is_zero() {
        err(format!("{p}.timeouts.request"), "must be greater than 0s".into());
    }
}

/// Headers a client certificate's subject must not be forwarded in: the gateway sets or
/// strips these itself.
const RESERVED_FORWARD_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// The file-free checks of a listener's `tls` and `redirect_https` (the files are read when
/// the config is compiled).
fn check_listener_tls(p: &str, l: &crate::model::Listener, err: &mut impl FnMut(String, String)) {
    if let Some(r) = &l.redirect_https {
        if l.tls.is_some() {
            err(format!("{p}.redirect_https"), "a TLS listener does not redirect; set it on the plain listener".into());
        }
        if r.port == 0 {
            err(format!("{p}.redirect_https.port"), "must be a port from 1 to 65535".into());
        }
    }
    let Some(tls) = &l.tls else { return };
    let tp = format!("{p}.tls");
    if tls.certificates.is_empty() {
        err(format!("{tp}.certificates"), "at least one certificate is required".into());
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        if c.cert.trim().is_empty() {
            err(format!("{tp}.certificates[{i}].cert"), "must be a file path".into());
        }
        if c.key.trim().is_empty() {
            err(format!("{tp}.certificates[{i}].key"), "must be a file path".into());
        }
    }
    if let Some(ca) = &tls.client_auth {
        if ca.ca.trim().is_empty() {
            err(format!("{tp}.client_auth.ca"), "must be a file path".into());
        }
        let h = &ca.forward_header;
        match HeaderName::from_bytes(h.as_bytes()) {
            Err(_) => err(format!("{tp}.client_auth.forward_header"), format!("{h:?} is not a valid header name")),
            Ok(name) if RESERVED_FORWARD_HEADERS.contains(&name.as_str()) => err(
                format!("{tp}.client_auth.forward_header"),
                format!("{h:?} is set by the gateway itself; choose another name"),
            ),
            Ok(_) => {}
        }
    }
}

/// Parses `200` or `200-399` into an inclusive range of statuses.
pub fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

/// Checks a target URL and returns its `host:port`.
pub fn check_target_url(url: &str) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        Some(other) => return Err(format!("{url:?}: unsupported scheme {other:?}; use http:// or https://")),
        None => return Err(format!("{url:?}: missing scheme; write http://{url}")),
    };
    let Some(auth) = uri.authority() else {
        return Err(format!("{url:?}: missing host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in target URLs are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{url:?}: a target URL has no path or query; use a route's rewrite"));
    }
    let port = auth.port_u16().unwrap_or(default_port);
    Ok(format!("{}:{port}", auth.host()))
}

fn check_route(p: &str, r: &Route, err: &mut impl FnMut(String, String)) {
    let m = &r.matcher;
    let given = [m.path.is_some(), m.prefix.is_some(), m.regex.is_some()].iter().filter(|b| **b).count();
    if given > 1 {
        err(format!("{p}.match"), "give one of path, prefix and regex, not several".into());
    } else if given == 0 {
        err(format!("{p}.match"), "a route needs match.path, match.prefix or match.regex".into());
    }
    if let Some(path) = &m.path
        && let Err(e) = PathTemplate::parse(path)
    {
        err(format!("{p}.match.path"), e);
    }
    if let Some(re) = &m.regex
        && let Err(e) = PathRegex::parse(re)
    {
        err(format!("{p}.match.regex"), e);
    }
    if let Some(prefix) = &m.prefix {
        if !prefix.starts_with('/') {
            err(format!("{p}.match.prefix"), format!("{prefix:?} must start with '/'"));
        } else if prefix.contains(['{', '}', '?', '#']) {
            err(
                format!("{p}.match.prefix"),
                format!("{prefix:?}: a prefix is literal; use path with {{*rest}} for captures"),
            );
        }
    }
    for (i, h) in m.hosts.iter().enumerate() {
        if let Err(e) = check_host(h) {
            err(format!("{p}.match.hosts[{i}]"), e);
        }
    }
    for (i, method) in m.methods.iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        if Method::from_bytes(method.as_bytes()).is_err() {
            err(format!("{p}.match.methods[{i}]"), format!("{method:?} is not a valid HTTP method"));
        } else if upper != *method && Method::from_bytes(upper.as_bytes()).is_ok() {
            err(
                format!("{p}.match.methods[{i}]"),
                format!("methods are case-sensitive: write {upper:?}, not {method:?}"),
            );
        }
    }
    check_value_matches(&format!("{p}.match.headers"), &m.headers, true, err);
    check_value_matches(&format!("{p}.match.query"), &m.query, false, err);
    check_value_matches(&format!("{p}.match.cookies"), &m.cookies, false, err);
    if let Some(rw) = &r.rewrite {
        match (&rw.strip_prefix, &rw.path) {
            (Some(_), Some(_)) => err(format!("{p}.rewrite"), "give either strip_prefix or path, not both".into()),
            (None, None) => err(format!("{p}.rewrite"), "give strip_prefix or path".into()),
            (Some(sp), None) => {
                let base = m.prefix.as_deref().or(m.path.as_deref()).unwrap_or("");
                if !sp.starts_with('/') {
                    err(format!("{p}.rewrite.strip_prefix"), format!("{sp:?} must start with '/'"));
                } else if sp.contains(['{', '}']) {
                    err(
                        format!("{p}.rewrite.strip_prefix"),
                        format!("{sp:?} is literal text; to drop captured segments use rewrite.path"),
                    );
                } else if m.regex.is_none() && !on_boundary(base, sp) {
                    // Not checked against a regex: there it applies when the path starts with it.
                    err(
                        format!("{p}.rewrite.strip_prefix"),
                        format!("{sp:?} is not a prefix of the route's path {base:?}, so it would never apply"),
                    );
                }
            }
            (None, Some(tpl)) => match PathTemplate::parse(tpl) {
                Ok(t) => {
                    let have = m.params();
                    let field = if m.regex.is_some() { "match.regex" } else { "match.path" };
                    for name in t.params() {
                        if !have.iter().any(|h| h == name) {
                            let hint = if have.is_empty() {
                                format!("the route's {field} captures nothing")
                            } else {
                                format!("captured: {}", have.join(", "))
                            };
                            err(format!("{p}.rewrite.path"), format!("{{{name}}} is not captured by {field} ({hint})"));
                        }
                    }
                }
                Err(e) => err(format!("{p}.rewrite.path"), e),
            },
        }
    }
    if let Some(t) = r.timeout
        && t.get().is_zero()
    {
        err(format!("{p}.timeout"), "must be greater than 0s".into());
    }
}

/// Whether `prefix` is a prefix of `path` that ends on a segment boundary.
fn on_boundary(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

fn check_value_matches(p: &str, list: &[ValueMatch], header: bool, err: &mut impl FnMut(String, String)) {
    for (i, v) in list.iter().enumerate() {
        let given = [v.value.is_some(), v.prefix.is_some(), v.present.is_some()].iter().filter(|b| **b).count();
        if given > 1 {
            err(format!("{p}[{i}]"), "give at most one of value, prefix and present".into());
        }
        if v.name.is_empty() {
            err(format!("{p}[{i}].name"), "must not be empty".into());
        } else if header && HeaderName::from_bytes(v.name.as_bytes()).is_err() {
            err(format!("{p}[{i}].name"), format!("{:?} is not a valid header name", v.name));
        }
    }
}

fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains('*') {
        return Err(format!("{h:?}: only one leading wildcard label is allowed (*.example.com)"));
    }
    if name.contains(':') {
        return Err(format!("{h:?}: hosts match without the port; remove it"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(format!("{h:?} is not a valid host name"));
    }
    Ok(())
}
