//! CORS (the Fetch standard's CORS protocol).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//! here and never reaches the upstream: 204 with the allow headers when the origin,
//! method and headers are allowed, else 403. On other requests from an allowed origin the
//! response carries `Access-Control-Allow-Origin` (and credentials and exposed headers
//! when configured); from another origin it carries none, so the browser withholds it.
//! Unless every origin is allowed without credentials, responses carry `Vary: Origin`, so
//! a shared cache never hands one origin's answer to another (added once: not when the
//! upstream's `Vary` already names it or is `*`).

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::hooks::{AccessCtx, HookCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};

/// A compiled `cors` plugin.
#[derive(Debug)]
pub struct Cors {
    any: bool,
    exact: Box<[Box<str>]>,
    /// `(scheme://, .suffix)` of `scheme://*.suffix` patterns.
    wildcard: Box<[(Box<str>, Box<str>)]>,
    methods: Box<[Method]>,
    methods_value: HeaderValue,
    /// Allowed request headers, lower case; `None`: whatever is asked.
    headers: Option<Box<[Box<str>]>>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

static VARY_VALUE: HeaderValue = HeaderValue::from_static("origin");

impl Cors {
    /// Compiles the plugin config (validated).
    pub fn new(cfg: &portico_config::Cors) -> Self {
        let any = cfg.origins.iter().any(|o| o == "*");
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        for o in cfg.origins.iter().filter(|o| *o != "*") {
            let o = o.to_ascii_lowercase();
            match o.split_once("://*.") {
                Some((scheme, rest)) => wildcard.push((format!("{scheme}://").into(), format!(".{rest}").into())),
                None => exact.push(o.into()),
            }
        }
        let methods: Vec<Method> = cfg.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect();
        let joined = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        Self {
            any,
            exact: exact.into(),
            wildcard: wildcard.into(),
            methods_value: HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static("GET")),
            methods: methods.into(),
            headers: (!cfg.headers.is_empty())
                .then(|| cfg.headers.iter().map(|h| h.to_ascii_lowercase().into()).collect()),
            expose: (!cfg.expose_headers.is_empty())
                .then(|| HeaderValue::from_str(&cfg.expose_headers.join(", ")).ok())
                .flatten(),
            credentials: cfg.credentials,
            max_age: HeaderValue::from(cfg.max_age.get().as_secs()),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any {
            return true;
        }
        // Compared without regard to case, without building a lower-case copy per request
        // (the configured origins are stored lower case).
        let o = origin.as_bytes();
        self.exact.iter().any(|e| e.as_bytes().eq_ignore_ascii_case(o))
            || self.wildcard.iter().any(|(scheme, suffix)| {
                let (scheme, suffix) = (scheme.as_bytes(), suffix.as_bytes());
                o.len() > scheme.len() + suffix.len() && o[..scheme.len()].eq_ignore_ascii_case(scheme) && {
                    let host = &o[scheme.len()..];
                    let labels = &host[..host.len() - suffix.len()];
                    // One or more labels before the suffix, and no path or credentials.
                    host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && !labels.iter().any(|b| matches!(b, b'/' | b'@'))
                }
            })
    }

    /// Whether a request is a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<Body>, GatewayError> {
        let refuse = |m| Err(GatewayError::new(ErrorKind::Forbidden(m)));
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| self.allows(o)) else {
            return refuse("CORS origin not allowed");
        };
        let method =
            headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.is_some_and(|m| self.methods.contains(&m)) {
            return refuse("CORS method not allowed");
        }
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let (Some(allowed), Some(asked)) = (&self.headers, asked) {
            let asked = asked.to_str().unwrap_or("\u{0}");
            let ok = asked
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)));
            if !ok {
                return refuse("CORS request header not allowed");
            }
        }
        let mut res = Response::new(Body::Empty);
        *res.status_mut() = StatusCode::NO_CONTENT;
        let h = res.headers_mut();
        self.allow_origin(origin, h);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        if let Some(asked) = asked {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        h.append(header::VARY, HeaderValue::from_static("access-control-request-method"));
        h.append(header::VARY, HeaderValue::from_static("access-control-request-headers"));
        Ok(res)
    }

    fn allow_origin(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        if self.any && !self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            vary_origin(h);
        }
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }

    /// Adds the CORS headers to a response to a request from `origin`.
    pub fn apply(&self, origin: Option<&HeaderValue>, res: &mut Response<Body>) {
        let h = res.headers_mut();
        // The upstream's own CORS headers would contradict ours.
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            h.remove(name);
        }
        match origin.filter(|o| self.allows(o)) {
            Some(o) => {
                self.allow_origin(o, h);
                if let Some(e) = &self.expose {
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
                }
            }
            None if !self.any || self.credentials => vary_origin(h),
            None => {}
        }
    }
}

impl Hooks for Cors {
    fn kind(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, response: true, ..Phases::default() }
    }

    /// Answers a preflight (204, or 403 when not allowed); other requests go on.
    async fn access(&self, req: &RequestView<'_>, _cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        if !Cors::is_preflight(req.method, req.headers) {
            return Ok(Verdict::Continue);
        }
        self.preflight(req.headers).map(Verdict::Respond).map_err(|e| state.refuse(e))
    }

    /// The CORS headers of every response but the preflight answer, which has its own.
    fn response(&self, res: &mut Response<Body>, ctx: &HookCtx<'_>) {
        if !ctx.preflight {
            self.apply(ctx.origin, res);
        }
    }
}

/// Adds `Vary: origin` unless the response (the upstream's) already varies by it or by
/// everything (`*`).
fn vary_origin(h: &mut HeaderMap) {
    let varies = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.eq_ignore_ascii_case("origin")))
    });
    if !varies {
        h.append(header::VARY, VARY_VALUE.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Cors {
        Cors::new(&serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn origins_match_exactly_or_by_one_wildcard() {
        let c = cors("{ origins: ['https://app.example.com', 'https://*.example.org'] }");
        let ok = |o: &'static str| c.allows(&HeaderValue::from_static(o));
        assert!(ok("https://app.example.com"));
        assert!(ok("HTTPS://APP.EXAMPLE.COM"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com.evil.net"));
        assert!(ok("https://a.example.org"));
        assert!(ok("https://a.b.example.org"));
        assert!(!ok("https://example.org"));
        assert!(!ok("https://evilexample.org"));
        assert!(!ok("null"));
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let c = cors(
            "{ origins: ['https://app.example.com'], methods: [GET, POST], headers: [content-type, authorization], credentials: true }",
        );
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://app.example.com"));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("Content-Type, Authorization"));
        let res = c.preflight(&h).unwrap();
        assert_eq!(res.status(), 204);
        assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(res.headers().get_all(header::VARY).iter().any(|v| v == "origin"));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("DELETE"));
        assert!(c.preflight(&h).is_err());
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("GET"));
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("x-secret"));
        assert!(c.preflight(&h).is_err());
    }

    #[test]
    fn vary_origin_is_added_once() {
        let c = cors("{ origins: ['https://app.example.com'] }");
        let origin = HeaderValue::from_static("https://app.example.com");
        for (upstream, expected) in [
            (vec![], vec!["origin"]),
            (vec!["accept-encoding"], vec!["accept-encoding", "origin"]),
            (vec!["Accept-Encoding, Origin"], vec!["Accept-Encoding, Origin"]),
            (vec!["accept-encoding", "origin"], vec!["accept-encoding", "origin"]),
            (vec!["*"], vec!["*"]),
        ] {
            for o in [Some(&origin), None] {
                let mut res = Response::new(Body::Empty);
                for v in &upstream {
                    res.headers_mut().append(header::VARY, HeaderValue::from_static(v));
                }
                c.apply(o, &mut res);
                let got: Vec<_> = res.headers().get_all(header::VARY).iter().map(|v| v.to_str().unwrap()).collect();
                assert_eq!(got, expected, "upstream {upstream:?}, origin {o:?}");
            }
        }
    }
}
