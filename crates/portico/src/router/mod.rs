//! Route matching: host, then path, then method, headers and query.
//!
//! Precedence is by specificity, never by position in the file (docs/routing.md has the
//! table this code implements):
//! 1. host: exact host, then wildcard hosts (longest suffix first), then routes without
//!    hosts;
//! 2. path, within a host group: exact paths (a hash lookup), then templates in a radix
//!    tree (matchit: a literal segment beats a parameter; `{param}` and `{*rest}` cannot
//!    share a position), then prefixes, longest first;
//! 3. among routes with the same host and path: routes that list methods before those that
//!    accept any, then routes with more header and query conditions;
//! 4. file order breaks the remaining ties.
//!
//! A route whose path matches but whose conditions do not lets matching continue with the
//! next candidate. When only the method differs, the answer is 405 with `Allow`.
//!
//! Lookup cost does not grow with the number of routes: one hash lookup for the host, one
//! for an exact path, one radix-tree walk, and one hash lookup per path segment for
//! prefixes.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portico_config::template::PathTemplate;
use portico_config::{ConfigError, ConfigErrors, RouteMatch, ValueMatch};

/// The route table's maps. Their keys come from the config and are only looked up with
/// what a request carries, never inserted from it, so a fast hash (foldhash, hashbrown's
/// own default, seeded per process) serves where SipHash's flood resistance buys nothing;
/// SipHash was a measurable part of every request (docs/benchmarks.md).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Captured path parameters of a match.
pub type Params<'k, 'v> = matchit::Params<'k, 'v>;

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup<'k, 'v> {
    /// Route `index` (the position in the list given to [`Router::new`]) matched.
    Found {
        /// Index of the route.
        index: usize,
        /// Parameters captured by a template path (empty for prefixes).
        params: Params<'k, 'v>,
    },
    /// Some route matched everything but the method; the `Allow` header value.
    MethodNotAllowed(String),
    /// Nothing matched.
    NotFound,
}

/// What a request offers to the matcher.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `Host` (or `:authority`), possibly with a port.
    pub host: &'a str,
    /// The path, without query.
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// The headers.
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
enum ValueCond {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Present,
    Absent,
}

impl ValueCond {
    fn from_config(v: &ValueMatch) -> Self {
        match (&v.value, &v.prefix, v.present) {
            (Some(val), _, _) => ValueCond::Exact(val.as_bytes().into()),
            (None, Some(p), _) => ValueCond::Prefix(p.as_bytes().into()),
            (None, None, Some(false)) => ValueCond::Absent,
            _ => ValueCond::Present,
        }
    }

    fn test<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        match self {
            ValueCond::Exact(want) => values.any(|v| v == &**want),
            ValueCond::Prefix(want) => values.any(|v| v.starts_with(want)),
            ValueCond::Present => values.next().is_some(),
            ValueCond::Absent => values.next().is_none(),
        }
    }
}

#[derive(Debug)]
struct Conditions {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueCond)>,
    query: Vec<(Box<str>, ValueCond)>,
    cookies: Vec<(Box<str>, ValueCond)>,
}

impl Conditions {
    fn specificity(&self) -> (bool, usize) {
        (!self.methods.is_empty(), self.headers.len() + self.query.len() + self.cookies.len())
    }

    fn matches_except_method(&self, req: &RequestParts<'_>) -> bool {
        self.headers.iter().all(|(name, cond)| cond.test(req.headers.get_all(name).iter().map(HeaderValue::as_bytes)))
            && self.cookies.iter().all(|(name, cond)| cond.test(cookie_values(req.headers, name)))
            && (self.query.is_empty() || {
                let q = req.query.unwrap_or("");
                self.query.iter().all(|(name, cond)| {
                    let mut decoded = Vec::new();
                    cond.test(query_values(q, name, &mut decoded).iter().map(Vec::as_slice))
                })
            })
    }

    fn method_ok(&self, m: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(m)
    }
}

/// Values of cookie `name` in the request's `Cookie` headers.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).filter_map(
        move |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v.as_bytes())
        },
    )
}

/// Values of query parameter `name` in `q`, percent-decoded (`+` is a space).
fn query_values<'a>(q: &str, name: &str, out: &'a mut Vec<Vec<u8>>) -> &'a [Vec<u8>] {
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k.as_bytes()) == name.as_bytes() {
            out.push(percent_decode(v.as_bytes()));
        }
    }
    out
}

/// Decodes `%XX` and `+`. Malformed escapes are kept as they are.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Routes sharing one host and one path pattern, most specific first.
#[derive(Debug, Default)]
struct Bucket {
    routes: Vec<usize>,
}

#[derive(Debug, Default)]
struct HostGroup {
    /// Literal paths -> bucket.
    exact: HashMap<Box<str>, usize>,
    /// Templates -> bucket.
    tree: matchit::Router<usize>,
    /// Pattern -> bucket, to group routes with the same path before inserting into the tree.
    patterns: HashMap<String, usize>,
    /// Prefix (without trailing slash, except `/`) -> bucket.
    prefixes: HashMap<Box<str>, usize>,
    /// The lengths of those prefixes (bit `n` for length `n`, bit 127 for 127 and longer):
    /// a path's shorter candidates that no prefix is as long as are not looked up.
    prefix_lengths: u128,
    buckets: Vec<Bucket>,
}

/// The bit of [`HostGroup::prefix_lengths`] for a prefix of `len` bytes.
fn length_bit(len: usize) -> u128 {
    1 << len.min(127)
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<Box<str>, usize>,
    /// Keyed by the suffix with its leading dot: `.example.com`.
    wildcard_hosts: HashMap<Box<str>, usize>,
    any_host: Option<usize>,
    groups: Vec<HostGroup>,
    conditions: Vec<Conditions>,
}

impl Router {
    /// Builds the table. `routes[i]` becomes route index `i`; errors name `routes[i]`.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a RouteMatch>) -> Result<Self, ConfigErrors> {
        let mut r = Router::default();
        let mut errors = Vec::new();
        for (index, m) in routes.into_iter().enumerate() {
            r.conditions.push(Conditions {
                methods: m.methods.iter().filter_map(|s| Method::from_bytes(s.as_bytes()).ok()).collect(),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|h| Some((HeaderName::from_bytes(h.name.as_bytes()).ok()?, ValueCond::from_config(h))))
                    .collect(),
                query: m.query.iter().map(|q| (q.name.as_str().into(), ValueCond::from_config(q))).collect(),
                cookies: m.cookies.iter().map(|c| (c.name.as_str().into(), ValueCond::from_config(c))).collect(),
            });
            let groups: Vec<usize> = if m.hosts.is_empty() {
                vec![r.group_for_any()]
            } else {
                m.hosts.iter().map(|h| r.group_for_host(h)).collect()
            };
            for g in groups {
                if let Err(msg) = r.groups[g].add(index, m) {
                    errors.push(ConfigError::new(format!("routes[{index}].match.path"), msg));
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let conditions = &r.conditions;
        for g in &mut r.groups {
            for b in &mut g.buckets {
                b.routes.sort_by_key(|&i| (std::cmp::Reverse(conditions[i].specificity()), i));
            }
        }
        Ok(r)
    }

    fn new_group(&mut self) -> usize {
        self.groups.push(HostGroup::default());
        self.groups.len() - 1
    }

    fn group_for_any(&mut self) -> usize {
        match self.any_host {
            Some(g) => g,
            None => {
                let g = self.new_group();
                self.any_host = Some(g);
                g
            }
        }
    }

    fn group_for_host(&mut self, host: &str) -> usize {
        let host = host.to_ascii_lowercase();
        let (map_is_wild, key) = match host.strip_prefix('*') {
            Some(suffix) => (true, suffix.to_owned()),
            None => (false, host),
        };
        let existing =
            if map_is_wild { self.wildcard_hosts.get(key.as_str()) } else { self.exact_hosts.get(key.as_str()) };
        if let Some(&g) = existing {
            return g;
        }
        let g = self.new_group();
        if map_is_wild {
            self.wildcard_hosts.insert(key.into(), g);
        } else {
            self.exact_hosts.insert(key.into(), g);
        }
        g
    }

    /// Finds the route for a request.
    pub fn lookup<'k, 'v>(&'k self, req: &RequestParts<'v>) -> Lookup<'k, 'v> {
        let mut allow: Vec<&Method> = Vec::new();
        // Without host-specific routes the host is not looked at.
        let host = if self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty() {
            std::borrow::Cow::Borrowed("")
        } else {
            normalize_host(req.host)
        };
        let host = host.as_ref();
        if let Some(&g) = self.exact_hosts.get(host)
            && let Some(found) = self.lookup_group(g, req, &mut allow)
        {
            return found;
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com.
            for (i, _) in host.match_indices('.') {
                if let Some(&g) = self.wildcard_hosts.get(&host[i..])
                    && let Some(found) = self.lookup_group(g, req, &mut allow)
                {
                    return found;
                }
            }
        }
        if let Some(g) = self.any_host
            && let Some(found) = self.lookup_group(g, req, &mut allow)
        {
            return found;
        }
        if allow.is_empty() {
            Lookup::NotFound
        } else {
            let mut names: Vec<&str> = allow.iter().map(|m| m.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            Lookup::MethodNotAllowed(names.join(", "))
        }
    }

    fn lookup_group<'k, 'v>(
        &'k self,
        g: usize,
        req: &RequestParts<'v>,
        allow: &mut Vec<&'k Method>,
    ) -> Option<Lookup<'k, 'v>> {
        let group = &self.groups[g];
        // Kinds of path the group has none of are not looked up.
        if !group.exact.is_empty()
            && let Some(&b) = group.exact.get(req.path)
            && let Some(index) = self.pick(&group.buckets[b], req, allow)
        {
            return Some(Lookup::Found { index, params: Params::new() });
        }
        if !group.patterns.is_empty()
            && let Ok(m) = group.tree.at(req.path)
            && let Some(index) = self.pick(&group.buckets[*m.value], req, allow)
        {
            return Some(Lookup::Found { index, params: m.params });
        }
        if group.prefixes.is_empty() {
            return None;
        }
        let mut candidate = req.path;
        loop {
            if group.prefix_lengths & length_bit(candidate.len()) != 0
                && let Some(&b) = group.prefixes.get(candidate)
                && let Some(index) = self.pick(&group.buckets[b], req, allow)
            {
                return Some(Lookup::Found { index, params: Params::new() });
            }
            if candidate == "/" || candidate.is_empty() {
                return None;
            }
            candidate = match candidate.bytes().rposition(|b| b == b'/') {
                Some(0) => "/",
                Some(i) => &candidate[..i],
                None => return None,
            };
        }
    }

    fn pick<'k>(&'k self, bucket: &Bucket, req: &RequestParts<'_>, allow: &mut Vec<&'k Method>) -> Option<usize> {
        for &i in &bucket.routes {
            let c = &self.conditions[i];
            if !c.matches_except_method(req) {
                continue;
            }
            if c.method_ok(req.method) {
                return Some(i);
            }
            allow.extend(c.methods.iter());
        }
        None
    }
}

impl HostGroup {
    fn add(&mut self, index: usize, m: &RouteMatch) -> Result<(), String> {
        if let Some(path) = &m.path {
            let tpl = PathTemplate::parse(path)?;
            if tpl.is_literal() {
                let bucket = match self.exact.get(tpl.as_str()) {
                    Some(&b) => b,
                    None => {
                        let b = self.buckets.len();
                        self.buckets.push(Bucket::default());
                        self.exact.insert(tpl.as_str().into(), b);
                        b
                    }
                };
                self.buckets[bucket].routes.push(index);
                return Ok(());
            }
            let bucket = match self.patterns.get(tpl.as_str()) {
                Some(&b) => b,
                None => {
                    let b = self.buckets.len();
                    self.tree
                        .insert(tpl.as_str(), b)
                        .map_err(|e| format!("{path:?} conflicts with another route's path: {e}"))?;
                    self.buckets.push(Bucket::default());
                    self.patterns.insert(tpl.as_str().to_owned(), b);
                    b
                }
            };
            self.buckets[bucket].routes.push(index);
        } else if let Some(prefix) = &m.prefix {
            let key = match prefix.trim_end_matches('/') {
                "" => "/",
                k => k,
            };
            let bucket = match self.prefixes.get(key) {
                Some(&b) => b,
                None => {
                    let b = self.buckets.len();
                    self.buckets.push(Bucket::default());
                    self.prefixes.insert(key.into(), b);
                    self.prefix_lengths |= length_bit(key.len());
                    b
                }
            };
            self.buckets[bucket].routes.push(index);
        }
        Ok(())
    }
}

/// Lowercases and removes the port: `API.example.com:8080` -> `api.example.com`.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if host.starts_with('[') {
        // IPv6 literal: keep it with its brackets, drop a port after them. A missing
        // closing bracket (a malformed Host a client can send) keeps the text as it is.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod host_tests {
    use super::normalize_host;

    #[test]
    fn hosts_are_normalized_and_malformed_ones_never_panic() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1"), "[::1");
        for weird in ["", "[", "]", ":", "[]:", "a:b:c", "::::", "[::1]]", "é:80", "[é"] {
            let _ = normalize_host(weird);
        }
    }
}
