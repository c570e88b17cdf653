//! The `aggregate` route handler: one client request, several upstream calls, one JSON
//! answer. Calls run in parallel unless one names another's result (`{profile.id}`), which
//! makes it wait for that one. Each call's failure is explicit: a required call fails the
//! answer, an optional one leaves a fallback (or nothing) and an `errors` entry.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::transform::{Piece, ValueTemplate};
use crate::units::{ByteSize, Duration};

/// An aggregated answer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The calls, each under its name. The answer is a JSON object with each call's result
    /// under its name (or merged into the root), in this order.
    pub calls: Vec<Call>,
    /// The most the whole answer may take; a call still running then has failed with
    /// `timeout`.
    #[serde(default = "default_deadline")]
    pub deadline: Duration,
    /// What a failed optional call does: `partial` answers without it (its fallback, an
    /// `errors` entry and the `X-Aggregate-Partial` header); `all_or_nothing` fails the
    /// answer as a required call does.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Shaping of the whole answer, once every call's result is in (before `errors` is
    /// added).
    #[serde(default)]
    pub shape: Option<Shape>,
    /// A jq expression over the whole answer, after `shape` (and before `errors` is added):
    /// its first output is the answer. One that fails on an answer makes it a 502.
    #[serde(default)]
    pub jq: Option<String>,
}

/// How a JSON result is reshaped, in this order: `extract`, `allow`, `deny`, `rename`,
/// `move`, `wrap`. Paths are dotted (`user.address.city`; a segment of digits indexes an
/// array).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Shape {
    /// Take only the value at this path (`data.user`); a result without it is an error of
    /// the call (`missing_value`).
    pub extract: Option<String>,
    /// Keep only these paths (an allow list); the others go.
    pub allow: Vec<String>,
    /// Remove these paths (a deny list).
    pub deny: Vec<String>,
    /// Rename fields in place, `{ user.fullName: name }`: the value is the new key.
    pub rename: BTreeMap<String, String>,
    /// Move fields, `{ user.id: id }`: the value is the new path.
    #[serde(rename = "move")]
    pub move_to: BTreeMap<String, String>,
    /// Put the result under this key (an array becomes `{ KEY: [...] }`).
    pub wrap: Option<String>,
}

/// Checks a shape's paths.
pub fn check_shape(p: &str, s: &Shape, err: &mut impl FnMut(String, String)) {
    let mut paths: Vec<(String, &str)> = Vec::new();
    if let Some(e) = &s.extract {
        paths.push((format!("{p}.extract"), e));
    }
    paths.extend(s.allow.iter().enumerate().map(|(i, a)| (format!("{p}.allow[{i}]"), a.as_str())));
    paths.extend(s.deny.iter().enumerate().map(|(i, d)| (format!("{p}.deny[{i}]"), d.as_str())));
    for (from, to) in &s.rename {
        paths.push((format!("{p}.rename"), from));
        if to.is_empty() || to.contains('.') {
            err(format!("{p}.rename.{from}"), format!("{to:?}: a new key is one key, not a path"));
        }
    }
    for (from, to) in &s.move_to {
        paths.push((format!("{p}.move"), from));
        paths.push((format!("{p}.move.{from}"), to));
    }
    for (at, v) in paths {
        if let Err(e) = crate::transform::body_path(v) {
            err(at, e);
        }
    }
    if s.wrap.as_ref().is_some_and(String::is_empty) {
        err(format!("{p}.wrap"), "must not be empty".into());
    }
}

fn default_deadline() -> Duration {
    Duration::from_secs(10)
}

/// What a failed optional call does to the answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Answer without it, and say so.
    #[default]
    Partial,
    /// Fail the answer.
    AllOrNothing,
}

/// One upstream call of an aggregated answer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The call's name: the key of its result, and how other calls name its values
    /// (`{profile.id}`).
    pub name: String,
    /// The upstream (a key of `upstreams`): its balancing, health checks, breaker,
    /// retries and pool apply as for a proxied request.
    pub upstream: String,
    /// The method.
    #[serde(default = "default_method")]
    pub method: String,
    /// The path, a template: `/users/{param.id}/orders`, `/recommendations/{profile.segment}`.
    /// Values are percent-encoded where they go (a `/` in a value stays in its segment).
    pub path: String,
    /// Query parameters, values templated (percent-encoded).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers, values templated.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body; every string in it is a template, and a string that is one
    /// placeholder naming another call's value (`"{profile.address}"`) takes that value as
    /// it is (an object, a number).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// The most this call may take (its tries and retries included); the upstream's
    /// `timeouts.request` when not given, and never past the answer's `deadline`.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Whether the answer needs this call: when it fails, the answer is a 502 (504 for a
    /// timeout) naming it.
    #[serde(default = "yes")]
    pub required: bool,
    /// An optional call's value when it fails; without one, its key is left out.
    #[serde(default)]
    pub fallback: Option<serde_json::Value>,
    /// The largest response body taken from this call.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Put the result's fields into the answer's root instead of under the call's name
    /// (the result must be an object).
    #[serde(default)]
    pub merge: bool,
    /// Reshape the call's result before it goes into the answer.
    #[serde(default)]
    pub shape: Option<Shape>,
}

fn default_method() -> String {
    "GET".into()
}

fn yes() -> bool {
    true
}

fn default_max_size() -> ByteSize {
    ByteSize::mib(1)
}

/// Names a call may not have: the answer's `errors` key and the placeholders' kinds.
const RESERVED: &[&str] = &["errors", "param", "query", "header", "claim", "consumer", "tenant", "request_id"];

/// A call's template, parsed with the other calls' names known.
pub fn parse_template(s: &str, calls: &[&str]) -> Result<ValueTemplate, String> {
    ValueTemplate::parse_with_calls(s, calls)
}

/// The calls a call's templates name, in order, with duplicates.
pub fn dependencies(call: &Call, calls: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut strings: Vec<&str> = vec![call.path.as_str()];
    strings.extend(call.query.values().map(String::as_str));
    strings.extend(call.headers.values().map(String::as_str));
    let mut body_strings = Vec::new();
    if let Some(b) = &call.body {
        json_strings(b, &mut body_strings);
    }
    strings.extend(body_strings);
    for s in strings {
        if let Ok(t) = parse_template(s, calls) {
            for p in t.pieces {
                if let Piece::Call(name, _) = p {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Every string in a JSON value (keys are not templates).
pub fn json_strings<'v>(v: &'v serde_json::Value, out: &mut Vec<&'v str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// Checks an `aggregate`: unique, unreserved call names; known upstreams; valid methods,
/// paths, headers and templates; references to calls that exist, and no cycle among them.
pub fn check(
    p: &str,
    a: &Aggregate,
    upstreams: &dyn Fn(&str) -> bool,
    route: &crate::Route,
    err: &mut impl FnMut(String, String),
) {
    if a.calls.is_empty() {
        err(format!("{p}.calls"), "give at least one call".into());
    }
    if let Some(shape) = &a.shape {
        check_shape(&format!("{p}.shape"), shape, err);
    }
    if let Some(code) = &a.jq
        && let Err(e) = crate::jq::compile(code)
    {
        err(format!("{p}.jq"), e);
    }
    if a.deadline.get().is_zero() {
        err(format!("{p}.deadline"), "must be more than 0s".into());
    }
    let names: Vec<&str> = a.calls.iter().map(|c| c.name.as_str()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, c) in a.calls.iter().enumerate() {
        let cp = format!("{p}.calls[{i}]");
        let valid_name =
            !c.name.is_empty() && c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            err(format!("{cp}.name"), format!("{:?}: use letters, digits, '_' and '-'", c.name));
        } else if RESERVED.contains(&c.name.as_str()) {
            err(format!("{cp}.name"), format!("{:?} is reserved (errors, and the placeholders' kinds)", c.name));
        } else if let Some(first) = seen.insert(c.name.as_str(), i) {
            err(format!("{cp}.name"), format!("duplicate call name {:?} (also {p}.calls[{first}])", c.name));
        }
        if !upstreams(&c.upstream) {
            err(format!("{cp}.upstream"), format!("unknown upstream {:?}", c.upstream));
        }
        if http::Method::from_bytes(c.method.as_bytes()).is_err() || c.method.bytes().any(|b| b.is_ascii_lowercase()) {
            err(format!("{cp}.method"), format!("{:?} is not an upper-case HTTP method", c.method));
        }
        if !c.path.starts_with('/') || c.path.contains(['?', '#', ' ']) {
            err(format!("{cp}.path"), format!("{:?} must start with '/' and hold no query (use query)", c.path));
        }
        let mut templates: Vec<(String, &str)> = vec![(format!("{cp}.path"), c.path.as_str())];
        templates.extend(c.query.iter().map(|(k, v)| (format!("{cp}.query.{k}"), v.as_str())));
        for (k, v) in &c.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                err(format!("{cp}.headers"), format!("{k:?} is not a valid header name"));
            }
            templates.push((format!("{cp}.headers.{k}"), v.as_str()));
        }
        let mut body_strings = Vec::new();
        if let Some(b) = &c.body {
            json_strings(b, &mut body_strings);
        }
        templates.extend(body_strings.into_iter().map(|s| (format!("{cp}.body"), s)));
        let params = route.matcher.params();
        for (at, s) in templates {
            match parse_template(s, &names) {
                Err(e) => err(at, e),
                Ok(t) => {
                    for n in t.params() {
                        if !params.iter().any(|p| p == n) {
                            err(at.clone(), format!("the route's path does not capture {{{n}}}"));
                        }
                    }
                }
            }
        }
        if c.fallback.is_some() && c.required {
            err(format!("{cp}.fallback"), "only an optional call (required: false) has a fallback".into());
        }
        if let Some(shape) = &c.shape {
            check_shape(&format!("{cp}.shape"), shape, err);
        }
        if c.timeout.is_some_and(|t| t.get().is_zero()) {
            err(format!("{cp}.timeout"), "must be more than 0s".into());
        }
    }
    // Cycles: a call that waits, through others, for itself.
    let deps: Vec<Vec<usize>> = a
        .calls
        .iter()
        .map(|c| dependencies(c, &names).iter().filter_map(|d| names.iter().position(|n| n == d)).collect::<Vec<_>>())
        .collect();
    let mut state = vec![0u8; a.calls.len()];
    fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        match state[i] {
            2 => return None,
            1 => {
                let from = path.iter().position(|&j| j == i).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for &d in &deps[i] {
            if let Some(c) = visit(d, deps, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    for i in 0..a.calls.len() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(i, &deps, &mut state, &mut path) {
            let names: Vec<&str> = cycle.iter().map(|&j| names[j]).collect();
            err(format!("{p}.calls[{}]", cycle[0]), format!("the calls wait for each other: {}", names.join(" -> ")));
            break;
        }
    }
}
