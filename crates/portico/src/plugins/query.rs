//! `query`: changes the request's query parameters before it goes upstream (remove,
//! rename, set, add, in that order). Names are compared as they appear in the URI; set and
//! added values are templates, percent-encoded when written. A change whose template has
//! no value for a request is skipped.

use http::{Request, Uri};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use portico_config::QueryTransform;

use super::hooks::{HookCtx, Hooks, Phases, Template};
use crate::body::Body;

/// What a rendered value escapes in a query component (RFC 3986 `query`, less `&`, `=`,
/// `+` and `#`, which would change the parameters' meaning).
const VALUE: &AsciiSet =
    &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'&').add(b'+').add(b'=').add(b'<').add(b'>').add(b'%');

/// The `query` plugin.
#[derive(Debug)]
pub struct Query {
    remove: Box<[Box<str>]>,
    rename: Box<[(Box<str>, Box<str>)]>,
    set: Box<[(Box<str>, Template)]>,
    add: Box<[(Box<str>, Template)]>,
}

impl Query {
    /// Compiles the plugin's config.
    pub fn new(c: &QueryTransform) -> Self {
        let values = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(n, v)| (n.as_str().into(), Template::new(v))).collect()
        };
        Self {
            remove: c.remove.iter().map(|n| n.as_str().into()).collect(),
            rename: c.rename.iter().map(|(a, b)| (a.as_str().into(), b.as_str().into())).collect(),
            set: values(&c.set),
            add: values(&c.add),
        }
    }

    /// The new query (`None`: no query at all).
    fn apply(&self, query: Option<&str>, headers: &http::HeaderMap, ctx: &HookCtx<'_>) -> Option<String> {
        let render = |list: &[(Box<str>, Template)]| -> Vec<(Box<str>, String)> {
            list.iter()
                .filter_map(|(n, t)| {
                    let v = t.render(ctx, Some(headers), query)?;
                    Some((n.clone(), utf8_percent_encode(&v, VALUE).to_string()))
                })
                .collect()
        };
        let (set, add) = (render(&self.set), render(&self.add));
        let name_of = |pair: &str| pair.split_once('=').map_or(pair, |(k, _)| k).to_owned();
        let mut pairs: Vec<String> =
            query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
        pairs.retain(|p| !self.remove.iter().any(|r| **r == name_of(p)));
        for (from, to) in &*self.rename {
            if !pairs.iter().any(|p| name_of(p) == **from) {
                continue;
            }
            pairs.retain(|p| name_of(p) != **to);
            for p in &mut pairs {
                if name_of(p) == **from {
                    *p = match p.split_once('=') {
                        Some((_, v)) => format!("{to}={v}"),
                        None => to.to_string(),
                    };
                }
            }
        }
        for (n, v) in set {
            pairs.retain(|p| name_of(p) != *n);
            pairs.push(format!("{n}={v}"));
        }
        for (n, v) in add {
            if !pairs.iter().any(|p| name_of(p) == *n) {
                pairs.push(format!("{n}={v}"));
            }
        }
        (!pairs.is_empty()).then(|| pairs.join("&"))
    }
}

impl Hooks for Query {
    fn kind(&self) -> &'static str {
        "query"
    }

    fn phases(&self) -> Phases {
        Phases { request: true, ..Phases::default() }
    }

    fn request(&self, req: &mut Request<Body>, ctx: &HookCtx<'_>) {
        let query = self.apply(req.uri().query(), req.headers(), ctx);
        let pq = match query {
            Some(q) => format!("{}?{q}", req.uri().path()),
            None => req.uri().path().to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        // Names were checked and values encoded: the new query always parses; if not, the
        // request keeps its query rather than failing.
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_in_order_and_values_are_encoded() {
        let q = Query::new(
            &serde_saphyr::from_str(
                "remove: [debug]\nrename: { old: new }\nset: { page: '1' }\nadd: { user: '{param.id}', v: two, tag: 'a b&c' }\n",
            )
            .unwrap(),
        );
        let id = http::HeaderValue::from_static("r");
        let params = [("id".into(), "u 1".into())];
        let ctx = HookCtx { params: &params, ..HookCtx::new(&id) };
        let h = http::HeaderMap::new();
        let out = q.apply(Some("debug=1&old=x&page=3&page=4&new=gone&v=one&flag"), &h, &ctx).unwrap();
        assert_eq!(out, "new=x&v=one&flag&page=1&tag=a%20b%26c&user=u%201");
        assert_eq!(q.apply(None, &h, &ctx).unwrap(), "page=1&tag=a%20b%26c&user=u%201&v=two");
        let only_remove = Query::new(&serde_saphyr::from_str("remove: [a]\n").unwrap());
        assert_eq!(only_remove.apply(Some("a=1"), &h, &ctx), None);
    }
}
