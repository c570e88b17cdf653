//! `request_headers`: changes the request's headers before it goes upstream (remove,
//! rename, set, add, append, in that order), with values templated from path parameters,
//! the query, request headers, the consumer, the tenant, JWT claims and the request ID.
//! A change whose template has no value for a request is skipped. [`HeaderOps`] is shared
//! with `response_headers`.

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use portico_config::HeaderTransform;

use super::hooks::{HookCtx, Hooks, Phases, Template};
use crate::body::Body;

/// A compiled [`HeaderTransform`].
#[derive(Debug)]
pub struct HeaderOps {
    remove: Box<[HeaderName]>,
    rename: Box<[(HeaderName, HeaderName)]>,
    set: Box<[(HeaderName, Template)]>,
    add: Box<[(HeaderName, Template)]>,
    append: Box<[(HeaderName, Template)]>,
}

impl HeaderOps {
    /// Compiles what validation accepted (names that do not parse are left out).
    pub fn new(c: &HeaderTransform) -> Self {
        let name = |n: &String| HeaderName::from_bytes(n.as_bytes()).ok();
        let values = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().filter_map(|(n, v)| Some((name(n)?, Template::new(v)))).collect()
        };
        Self {
            remove: c.remove.iter().filter_map(name).collect(),
            rename: c.rename.iter().filter_map(|(a, b)| Some((name(a)?, name(b)?))).collect(),
            set: values(&c.set),
            add: values(&c.add),
            append: values(&c.append),
        }
    }

    /// Applies the changes to `headers`. Templates read `source` (the request's headers
    /// as they were before this plugin) and `query`.
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &HookCtx<'_>, source: Option<&HeaderMap>, query: Option<&str>) {
        // Rendered before anything changes, so every template sees the same message.
        let render = |list: &[(HeaderName, Template)]| -> Vec<(HeaderName, HeaderValue)> {
            list.iter()
                .filter_map(|(n, t)| {
                    let v = t.render(ctx, source, query)?;
                    Some((n.clone(), HeaderValue::try_from(v).ok()?))
                })
                .collect()
        };
        let (set, add, append) = (render(&self.set), render(&self.add), render(&self.append));
        for n in &*self.remove {
            headers.remove(n);
        }
        for (from, to) in &*self.rename {
            let values: Vec<HeaderValue> = match headers.entry(from) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => continue,
            };
            headers.remove(to);
            for v in values {
                headers.append(to.clone(), v);
            }
        }
        for (n, v) in set {
            headers.insert(n, v);
        }
        for (n, v) in add {
            if !headers.contains_key(&n) {
                headers.insert(n, v);
            }
        }
        for (n, v) in append {
            headers.append(n, v);
        }
    }
}

/// The `request_headers` plugin.
#[derive(Debug)]
pub struct RequestHeaders(HeaderOps);

impl RequestHeaders {
    /// Compiles the plugin's config.
    pub fn new(c: &HeaderTransform) -> Self {
        Self(HeaderOps::new(c))
    }
}

impl Hooks for RequestHeaders {
    fn kind(&self) -> &'static str {
        "request_headers"
    }

    fn phases(&self) -> Phases {
        Phases { request: true, ..Phases::default() }
    }

    fn request(&self, req: &mut Request<Body>, ctx: &HookCtx<'_>) {
        let source = req.headers().clone();
        let query = req.uri().query().map(str::to_owned);
        self.0.apply(req.headers_mut(), ctx, Some(&source), query.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(yaml: &str) -> HeaderOps {
        HeaderOps::new(&serde_saphyr::from_str(yaml).unwrap())
    }

    #[test]
    fn changes_apply_in_order_with_templates() {
        let mut h = HeaderMap::new();
        h.insert("x-old", HeaderValue::from_static("1"));
        h.append("x-old", HeaderValue::from_static("2"));
        h.insert("x-gone", HeaderValue::from_static("y"));
        h.insert("x-kept", HeaderValue::from_static("client"));
        h.insert("x-new", HeaderValue::from_static("replaced by the rename"));
        let source = h.clone();
        let id = HeaderValue::from_static("req-1");
        let params = [("id".into(), "42".into())];
        let ctx = HookCtx { params: &params, tenant: Some("acme"), ..HookCtx::new(&id) };
        let o = ops(
            "remove: [x-gone]\nrename: { x-old: x-new }\nset: { x-user: 'u{param.id}', x-t: '{tenant}' }\nadd: { x-kept: gateway, x-fresh: '{query.v}' }\nappend: { via: '{request_id}', x-none: '{consumer}' }\n",
        );
        o.apply(&mut h, &ctx, Some(&source), Some("a=1&v=9"));
        assert!(h.get("x-gone").is_none() && h.get("x-old").is_none());
        assert_eq!(h.get_all("x-new").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h["x-user"], "u42");
        assert_eq!(h["x-t"], "acme");
        assert_eq!(h["x-kept"], "client", "add leaves a present header");
        assert_eq!(h["x-fresh"], "9");
        assert_eq!(h["via"], "req-1");
        assert!(h.get("x-none").is_none(), "no consumer: skipped");
    }

    #[test]
    fn a_rendered_value_that_is_no_header_value_is_skipped() {
        let mut h = HeaderMap::new();
        let id = HeaderValue::from_static("r");
        let params = [("id".into(), "a\nb".into())];
        let ctx = HookCtx { params: &params, ..HookCtx::new(&id) };
        ops("set: { x-id: '{param.id}' }\n").apply(&mut h, &ctx, None, None);
        assert!(h.is_empty());
    }
}
