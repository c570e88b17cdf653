//! Route matching: host, then path, then method, headers and query.
//!
//! Precedence is by specificity, never by position in the file (docs/routing.md has the
//! table this code implements):
//! 1. host: exact host, then wildcard hosts (longest suffix first), then routes without
//!    hosts;
//! 2. path, within a host group: exact paths (a hash lookup), then templates in a radix
//!    tree (matchit: a literal segment beats a parameter; `{param}` and `{*rest}` cannot
//!    share a position), then regexes in file order, then prefixes, longest first;
//! 3. among routes with the same host and path: routes that list methods before those that
//!    accept any, then routes with more header and query conditions;
//! 4. file order breaks the remaining ties.
//!
//! A route whose path matches but whose conditions do not lets matching continue with the
//! next candidate. When only the method differs, the answer is 405 with `Allow`.
//!
//! Lookup cost does not grow with the number of routes: one hash lookup for the host, one
//! for an exact path, one radix-tree walk, and one hash lookup per path segment for
//! prefixes. Regexes are the exception, kept small: all of a host group's regexes are one
//! `RegexSet`, so a path is scanned once (a lazy DFA) however many there are, but that
//! scan costs more than the lookups above and is skipped by groups without regexes.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portico_config::template::{PathRegex, PathTemplate};
use portico_config::{ConfigError, ConfigErrors, RouteMatch, ValueMatch};

/// The route table's maps. Their keys come from the config and are only looked up with
/// what a request carries, never inserted from it, so a fast hash (foldhash, hashbrown's
/// own default, seeded per process) serves where SipHash's flood resistance buys nothing;
/// SipHash was a measurable part of every request (docs/benchmarks.md).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Captured path parameters of a match: a template's (from the radix tree) or a regex's
/// named groups. A template's are matchit's own, moved as they are: plain paths pay
/// nothing for regexes.
#[derive(Debug)]
pub struct Params<'k, 'v>(ParamsFrom<'k, 'v>);

#[derive(Debug)]
enum ParamsFrom<'k, 'v> {
    Tree(matchit::Params<'k, 'v>),
    /// Not boxed: smaller than matchit's params, so `Lookup` keeps its size (120 bytes).
    Regex(&'k regex::Regex, regex::Captures<'v>),
}

impl<'k, 'v> Params<'k, 'v> {
    /// No parameters.
    pub fn new() -> Self {
        Params(ParamsFrom::Tree(matchit::Params::new()))
    }

    /// The value of parameter `name`; `None` when the route does not capture it, or when
    /// it is a regex group that took no part in the match.
    pub fn get(&self, name: &str) -> Option<&'v str> {
        match &self.0 {
            ParamsFrom::Tree(p) => p.get(name),
            ParamsFrom::Regex(_, caps) => caps.name(name).map(|m| m.as_str()),
        }
    }

    /// The parameters with values, in the order the route's path names them.
    pub fn iter(&self) -> impl Iterator<Item = (&'k str, &'v str)> + '_ {
        let (tree, regex) = match &self.0 {
            ParamsFrom::Tree(p) => (Some(p.iter()), None),
            ParamsFrom::Regex(re, caps) => (None, Some((*re, caps))),
        };
        let named = regex.into_iter().flat_map(|(re, caps)| {
            re.capture_names().enumerate().filter_map(|(i, name)| Some((name?, caps.get(i)?.as_str())))
        });
        tree.into_iter().flatten().chain(named)
    }
}

impl Default for Params<'_, '_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'k, 'v> From<matchit::Params<'k, 'v>> for Params<'k, 'v> {
    fn from(p: matchit::Params<'k, 'v>) -> Self {
        Params(ParamsFrom::Tree(p))
    }
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup<'k, 'v> {
    /// Route `index` (the position in the list given to [`Router::new`]) matched.
    Found {
        /// Index of the route.
        index: usize,
        /// Parameters captured by a template or a regex's named groups (empty for exact
        /// paths and prefixes).
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
    /// The name of the listener the request came in on.
    pub listener: &'a str,
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
    listeners: Box<[Box<str>]>,
}

impl Conditions {
    fn specificity(&self) -> (bool, usize) {
        let listeners = usize::from(!self.listeners.is_empty());
        (!self.methods.is_empty(), self.headers.len() + self.query.len() + self.cookies.len() + listeners)
    }

    fn matches_except_method(&self, req: &RequestParts<'_>) -> bool {
        (self.listeners.is_empty() || self.listeners.iter().any(|l| **l == *req.listener))
            && self
                .headers
                .iter()
                .all(|(name, cond)| cond.test(req.headers.get_all(name).iter().map(HeaderValue::as_bytes)))
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
    /// Regexes in file order (one per distinct `match.regex`), each with its bucket.
    regexes: Vec<RegexPath>,
    /// `match.regex` as written -> index in `regexes`.
    regex_index: HashMap<Box<str>, usize>,
    /// All of `regexes`, for one pass over the path; built by [`HostGroup::finish`].
    regex_set: Option<regex::RegexSet>,
    /// Prefix (without trailing slash, except `/`) -> bucket.
    prefixes: HashMap<Box<str>, usize>,
    /// The lengths of those prefixes (bit `n` for length `n`, bit 127 for 127 and longer):
    /// a path's shorter candidates that no prefix is as long as are not looked up.
    prefix_lengths: u128,
    buckets: Vec<Bucket>,
}

/// One distinct `match.regex` of a host group.
#[derive(Debug)]
struct RegexPath {
    /// Anchored at both ends ([`PathRegex`]).
    regex: regex::Regex,
    /// Whether it has named groups, which only then are captured.
    named: bool,
    bucket: usize,
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
                listeners: m.listeners.iter().map(|l| l.as_str().into()).collect(),
            });
            let groups: Vec<usize> = if m.hosts.is_empty() {
                vec![r.group_for_any()]
            } else {
                m.hosts.iter().map(|h| r.group_for_host(h)).collect()
            };
            for g in groups {
                if let Err(msg) = r.groups[g].add(index, m) {
                    errors.push(ConfigError::new(format!("routes[{index}].match.{}", m.path_field()), msg));
                }
            }
        }
        for g in &mut r.groups {
            if let Err((index, msg)) = g.finish() {
                errors.push(ConfigError::new(format!("routes[{index}].match.regex"), msg));
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
            return Some(Lookup::Found { index, params: m.params.into() });
        }
        if let Some(set) = &group.regex_set
            && let Some(found) = self.lookup_regexes(group, set, req, allow)
        {
            return Some(found);
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

    /// The regex step: one pass of the group's set finds every regex that matches; they are
    /// tried in file order, and the first whose routes accept the request wins.
    fn lookup_regexes<'k, 'v>(
        &'k self,
        group: &'k HostGroup,
        set: &regex::RegexSet,
        req: &RequestParts<'v>,
        allow: &mut Vec<&'k Method>,
    ) -> Option<Lookup<'k, 'v>> {
        // `is_match` first: a path no regex matches (the common case in a group that also
        // has prefixes) costs one pass and no allocation.
        if !set.is_match(req.path) {
            return None;
        }
        for i in set.matches(req.path).iter() {
            let r = &group.regexes[i];
            if let Some(index) = self.pick(&group.buckets[r.bucket], req, allow) {
                let params = match r.named {
                    true => {
                        let caps = r.regex.captures(req.path);
                        caps.map_or_else(Params::new, |c| Params(ParamsFrom::Regex(&r.regex, c)))
                    }
                    false => Params::new(),
                };
                return Some(Lookup::Found { index, params });
            }
        }
        None
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
        } else if let Some(re) = &m.regex {
            let regex = match self.regex_index.get(re.as_str()) {
                Some(&i) => i,
                None => {
                    let compiled = PathRegex::parse(re)?;
                    let b = self.buckets.len();
                    self.buckets.push(Bucket::default());
                    self.regexes.push(RegexPath {
                        named: compiled.params().next().is_some(),
                        regex: compiled.regex().clone(),
                        bucket: b,
                    });
                    self.regex_index.insert(re.as_str().into(), self.regexes.len() - 1);
                    self.regexes.len() - 1
                }
            };
            let bucket = self.regexes[regex].bucket;
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

impl HostGroup {
    /// Builds the regex set once every route is added. On failure (the set is over the
    /// regex crate's size limit), the error names the group's first regex route.
    fn finish(&mut self) -> Result<(), (usize, String)> {
        if self.regexes.is_empty() {
            return Ok(());
        }
        let set = regex::RegexSetBuilder::new(self.regexes.iter().map(|r| r.regex.as_str()))
            .size_limit(REGEX_SET_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                let first = self.buckets[self.regexes[0].bucket].routes[0];
                (first, format!("the {} regexes of this route's host group together: {e}", self.regexes.len()))
            })?;
        self.regex_set = Some(set);
        Ok(())
    }
}

/// The compiled size a host group's regex set may reach: ten times the regex crate's
/// default for one regex, room for some 10,000 simple regexes.
const REGEX_SET_SIZE_LIMIT: usize = 100 << 20;

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
