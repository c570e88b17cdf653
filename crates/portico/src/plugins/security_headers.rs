//! Security response headers: HSTS (on TLS listeners only; over plain HTTP it is ignored
//! by browsers and would only mislead), `X-Content-Type-Options`, `X-Frame-Options`,
//! `Referrer-Policy`, an optional `Content-Security-Policy`; and removal of response
//! headers that tell attackers what runs behind the gateway (`Server`, `X-Powered-By`).
//! Headers the upstream already set are kept, except the removed ones.

use http::{HeaderName, HeaderValue, Response, header};

use super::hooks::{HookCtx, Hooks, Phases};
use crate::body::Body;

/// A compiled `security_headers` plugin.
#[derive(Debug)]
pub struct SecurityHeaders {
    hsts: Option<HeaderValue>,
    set: Box<[(HeaderName, HeaderValue)]>,
    remove: Box<[HeaderName]>,
}

impl SecurityHeaders {
    /// Compiles the plugin config (validated).
    pub fn new(cfg: &portico_config::SecurityHeaders) -> Self {
        let secs = cfg.hsts_max_age.get().as_secs();
        let hsts = (secs > 0).then(|| {
            let mut v = format!("max-age={secs}");
            if cfg.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if cfg.hsts_preload {
                v.push_str("; preload");
            }
            HeaderValue::from_str(&v).ok()
        });
        let mut set = Vec::new();
        if cfg.content_type_options {
            set.push((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
        }
        let mut add = |name: HeaderName, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v)
                && !v.is_empty()
            {
                set.push((name, v));
            }
        };
        add(header::X_FRAME_OPTIONS, &cfg.frame_options);
        add(header::REFERRER_POLICY, &cfg.referrer_policy);
        if let Some(csp) = &cfg.content_security_policy {
            add(header::CONTENT_SECURITY_POLICY, csp);
        }
        Self {
            hsts: hsts.flatten(),
            set: set.into(),
            remove: cfg.remove.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()).collect(),
        }
    }

    /// Applies the headers to a response; `tls` says whether the client connection is TLS.
    pub fn apply(&self, res: &mut Response<Body>, tls: bool) {
        let h = res.headers_mut();
        for name in &*self.remove {
            h.remove(name);
        }
        for (name, value) in &*self.set {
            if !h.contains_key(name) {
                h.insert(name, value.clone());
            }
        }
        if tls && let Some(v) = &self.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
    }
}

impl Hooks for SecurityHeaders {
    fn kind(&self) -> &'static str {
        "security_headers"
    }

    fn phases(&self) -> Phases {
        Phases { response: true, ..Phases::default() }
    }

    fn response(&self, res: &mut Response<Body>, ctx: &HookCtx<'_>) {
        self.apply(res, ctx.tls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_set_and_internal_ones_removed() {
        let s = SecurityHeaders::new(&portico_config::SecurityHeaders {
            hsts_include_subdomains: true,
            content_security_policy: Some("default-src 'none'".into()),
            ..Default::default()
        });
        let mut res = Response::new(Body::Empty);
        res.headers_mut().insert(header::SERVER, HeaderValue::from_static("Apache/2.4.1"));
        res.headers_mut().insert("x-powered-by", HeaderValue::from_static("PHP/5.6"));
        res.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
        s.apply(&mut res, false);
        let h = res.headers();
        assert!(h.get(header::SERVER).is_none() && h.get("x-powered-by").is_none());
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'none'");
        assert!(h.get(header::STRICT_TRANSPORT_SECURITY).is_none());
        s.apply(&mut res, true);
        assert_eq!(res.headers()[header::STRICT_TRANSPORT_SECURITY], "max-age=31536000; includeSubDomains");
    }
}
