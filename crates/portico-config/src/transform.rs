//! Config of the header, query and body transformation plugins (`request_headers`,
//! `response_headers`, `query`, `request_body`, `response_body`), and the value templates
//! they share.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Header changes, applied in this order: `remove`, `rename`, `set`, `add`, `append`.
/// Values are [templates](ValueTemplate): `"{param.id}"`, `"v{query.version}"`,
/// `"{consumer}"`, `"{tenant}"`, `"{claim.sub}"`, `"{request_id}"`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderTransform {
    /// Header names removed, with every value.
    pub remove: Vec<String>,
    /// Headers renamed, `{ x-old: x-new }`, with every value; a header already under the
    /// new name is replaced.
    pub rename: BTreeMap<String, String>,
    /// Headers set to this value, replacing any the message has.
    pub set: BTreeMap<String, String>,
    /// Headers added only when the message has none of that name.
    pub add: BTreeMap<String, String>,
    /// Headers added as one more value, whatever the message has.
    pub append: BTreeMap<String, String>,
}

/// Query parameter changes, applied in this order: `remove`, `rename`, `set`, `add`.
/// Values are templates, as for [`HeaderTransform`]. Names and values are compared and
/// written percent-encoded, as they appear in the URI.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryTransform {
    /// Parameters removed, every occurrence.
    pub remove: Vec<String>,
    /// Parameters renamed, `{ old: new }`; a parameter already under the new name is
    /// replaced.
    pub rename: BTreeMap<String, String>,
    /// Parameters set to this value, replacing every occurrence.
    pub set: BTreeMap<String, String>,
    /// Parameters added only when the query has none of that name.
    pub add: BTreeMap<String, String>,
}

/// JSON body changes (`request_body`, `response_body`), applied in this order: `remove`,
/// `rename`, `move`, `set`, `add`. Paths are dotted (`user.address.city`); a segment of
/// digits indexes an array (`items.0.id`). Values are JSON; a string value is a
/// [template](ValueTemplate), rendered per request. Only JSON bodies are changed (a
/// `Content-Type` of `application/json` or `*/*+json`, not compressed); any other body
/// streams through untouched. A JSON body is read whole, up to `max_size`: a larger
/// request body is refused with 413, a larger response body is a 502.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BodyTransform {
    /// The largest JSON body read to be changed.
    pub max_size: crate::units::ByteSize,
    /// Fields removed.
    pub remove: Vec<String>,
    /// Fields renamed in place, `{ user.fullName: name }`: the value is the new key.
    pub rename: BTreeMap<String, String>,
    /// Fields moved, `{ user.id: id }`: the value is the new path.
    #[serde(rename = "move")]
    pub move_to: BTreeMap<String, String>,
    /// Fields set to this value, created with the objects on their path when missing.
    pub set: BTreeMap<String, serde_json::Value>,
    /// Fields set only when missing.
    pub add: BTreeMap<String, serde_json::Value>,
    /// A jq expression run last, over the whole document; its first output is the new
    /// body (`null` when it has none). One that fails on a body answers 400 for a request,
    /// 502 for a response.
    pub jq: Option<String>,
}

impl Default for BodyTransform {
    fn default() -> Self {
        Self {
            max_size: crate::units::ByteSize::mib(1),
            remove: Vec::new(),
            rename: BTreeMap::new(),
            move_to: BTreeMap::new(),
            set: BTreeMap::new(),
            add: BTreeMap::new(),
            jq: None,
        }
    }
}

/// The segments of a dotted body path, or what is wrong with it.
pub fn body_path(path: &str) -> Result<Vec<&str>, String> {
    if path.is_empty() {
        return Err("an empty path".into());
    }
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(format!("{path:?}: an empty segment (paths are like user.address.city)"));
    }
    Ok(segments)
}

/// Checks a `request_body` (`request: true`) or `response_body` plugin at `p`.
pub(crate) fn check_body(
    p: &str,
    t: &BodyTransform,
    route: Option<&crate::Route>,
    request: bool,
    err: &mut impl FnMut(String, String),
) {
    let path_ok = |field: &str, path: &str, err: &mut dyn FnMut(String, String)| {
        if let Err(m) = body_path(path) {
            err(format!("{p}.{field}"), m);
        }
    };
    for path in &t.remove {
        path_ok("remove", path, err);
    }
    for (from, to) in &t.rename {
        path_ok("rename", from, err);
        if to.is_empty() || to.contains('.') {
            err(format!("{p}.rename.{from}"), format!("{to:?}: the new name is one key, without dots"));
        }
    }
    for (from, to) in &t.move_to {
        path_ok("move", from, err);
        path_ok(&format!("move.{from}"), to, err);
    }
    for (field, map) in [("set", &t.set), ("add", &t.add)] {
        for (path, value) in map {
            path_ok(field, path, err);
            check_json_templates(&format!("{p}.{field}.{path}"), value, route, request, err);
        }
    }
    if let Some(code) = &t.jq
        && let Err(e) = crate::jq::compile(code)
    {
        err(format!("{p}.jq"), e);
    }
    if t.max_size.get() == 0 {
        err(format!("{p}.max_size"), "must be more than 0".into());
    }
    if t.remove.is_empty()
        && t.rename.is_empty()
        && t.move_to.is_empty()
        && t.set.is_empty()
        && t.add.is_empty()
        && t.jq.is_none()
    {
        err(p.to_owned(), "give at least one of remove, rename, move, set, add, jq".into());
    }
}

/// Checks every string inside a JSON value as a template.
fn check_json_templates(
    path: &str,
    value: &serde_json::Value,
    route: Option<&crate::Route>,
    request: bool,
    err: &mut impl FnMut(String, String),
) {
    match value {
        serde_json::Value::String(s) => check_template(path, s, route, request, err),
        serde_json::Value::Array(a) => a.iter().for_each(|v| check_json_templates(path, v, route, request, err)),
        serde_json::Value::Object(o) => o.values().for_each(|v| check_json_templates(path, v, route, request, err)),
        _ => {}
    }
}

/// One piece of a value template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text as written (`{{` and `}}` stand for `{` and `}`).
    Text(String),
    /// `{param.NAME}`: a parameter captured by the route's path.
    Param(String),
    /// `{query.NAME}`: the first value of a query parameter, as sent (percent-encoded).
    Query(String),
    /// `{header.NAME}`: the request's header (the first one of that name).
    Header(String),
    /// `{consumer}`: the authenticated consumer's ID.
    Consumer,
    /// `{tenant}`: the request's tenant.
    Tenant,
    /// `{claim.NAME}`: a claim of the verified JWT (strings as they are, numbers and
    /// booleans as JSON writes them).
    Claim(String),
    /// `{request_id}`: the request's ID.
    RequestId,
    /// `{CALL.PATH}` in an `aggregate` call: the value at the dotted `PATH` of another
    /// call's JSON result (`{CALL}` alone: the whole result).
    Call(String, String),
}

/// A parsed value template: text with `{...}` placeholders. When a placeholder has no value
/// for a request (no such parameter, no consumer), the change that uses it is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueTemplate {
    /// The pieces, in order.
    pub pieces: Vec<Piece>,
}

impl ValueTemplate {
    /// Parses `s`, with a message naming what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_with_calls(s, &[])
    }

    /// Parses `s` where `{CALL.PATH}` may also name the result of one of `calls` (an
    /// `aggregate` call's template).
    pub fn parse_with_calls(s: &str, calls: &[&str]) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            text.push_str(&rest[..i]);
            let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
            if after.as_bytes().first() == Some(&c) {
                text.push(char::from(c));
                rest = &after[1..];
                continue;
            }
            if c == b'}' {
                return Err(format!("{s:?}: a lone '}}' (write '}}}}' for a literal one)"));
            }
            let Some(end) = after.find('}') else {
                return Err(format!("{s:?}: '{{' without its '}}' (write '{{{{' for a literal one)"));
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Self::placeholder(&after[..end], calls).map_err(|m| format!("{s:?}: {m}"))?);
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self { pieces })
    }

    fn placeholder(p: &str, calls: &[&str]) -> Result<Piece, String> {
        let named = |kind: &str, name: &str, f: fn(String) -> Piece| {
            if name.is_empty() || name.contains(['{', '}', ' ']) {
                Err(format!("{{{kind}.}} needs a name, like {{{kind}.id}}"))
            } else {
                Ok(f(name.to_owned()))
            }
        };
        match p.split_once('.') {
            None if p == "consumer" => Ok(Piece::Consumer),
            None if p == "tenant" => Ok(Piece::Tenant),
            None if p == "request_id" => Ok(Piece::RequestId),
            Some(("param", n)) => named("param", n, Piece::Param),
            Some(("query", n)) => named("query", n, Piece::Query),
            Some(("header", n)) => named("header", n, Piece::Header),
            Some(("claim", n)) => named("claim", n, Piece::Claim),
            None if calls.contains(&p) => Ok(Piece::Call(p.to_owned(), String::new())),
            Some((c, path)) if calls.contains(&c) => match crate::transform::body_path(path) {
                Ok(_) => Ok(Piece::Call(c.to_owned(), path.to_owned())),
                Err(e) => Err(format!("{{{p}}}: {e}")),
            },
            _ if !calls.is_empty() => Err(format!(
                "unknown placeholder {{{p}}}: use {{param.NAME}}, {{query.NAME}}, {{header.NAME}}, {{claim.NAME}}, {{consumer}}, {{tenant}}, {{request_id}} or a call's {{CALL.PATH}} ({})",
                calls.join(", ")
            )),
            _ => Err(format!(
                "unknown placeholder {{{p}}}: use {{param.NAME}}, {{query.NAME}}, {{header.NAME}}, {{claim.NAME}}, {{consumer}}, {{tenant}} or {{request_id}}"
            )),
        }
    }

    /// The path parameters the template names.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param(n) => Some(n.as_str()),
            _ => None,
        })
    }
}

/// Checks a template at `path`: it parses, names parameters `route` captures, and (for a
/// response, when `request` is false) uses only what is still known when the response is
/// written.
fn check_template(
    path: &str,
    value: &str,
    route: Option<&crate::Route>,
    request: bool,
    err: &mut impl FnMut(String, String),
) {
    let t = match ValueTemplate::parse(value) {
        Ok(t) => t,
        Err(m) => return err(path.to_owned(), m),
    };
    if !request
        && let Some(p) = t.pieces.iter().find(|p| matches!(p, Piece::Param(_) | Piece::Query(_) | Piece::Header(_)))
    {
        let what = match p {
            Piece::Param(_) => "{param.*}",
            Piece::Query(_) => "{query.*}",
            _ => "{header.*}",
        };
        return err(
            path.to_owned(),
            format!(
                "{value:?}: {what} is not known when the response is written; use {{consumer}}, {{tenant}}, {{claim.NAME}} or {{request_id}}"
            ),
        );
    }
    if let Some(r) = route {
        let have = r.matcher.params();
        for name in t.params() {
            if !have.iter().any(|h| h == name) {
                err(path.to_owned(), format!("{value:?}: the route's path does not capture {{{name}}}"));
            }
        }
    }
}

fn check_names<'a>(
    p: &str,
    field: &str,
    names: impl Iterator<Item = &'a String>,
    ok: fn(&str) -> bool,
    err: &mut impl FnMut(String, String),
) {
    for n in names {
        if !ok(n) {
            err(
                format!("{p}.{field}"),
                format!("{n:?} is not a valid name here (framing and `Host` are the gateway's)"),
            );
        }
    }
}

/// Fields the gateway manages itself: changing them would break the message's framing or
/// its routing to the target.
const MANAGED: [&str; 8] =
    ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"];

fn header_name_ok(n: &str) -> bool {
    http::HeaderName::from_bytes(n.as_bytes()).is_ok_and(|h| !MANAGED.contains(&h.as_str()))
}

fn query_name_ok(n: &str) -> bool {
    !n.is_empty() && !n.bytes().any(|b| matches!(b, b'&' | b'=' | b'#' | b' ') || b.is_ascii_control())
}

/// Checks a `request_headers` (`request: true`) or `response_headers` plugin at `p`.
pub(crate) fn check_headers(
    p: &str,
    t: &HeaderTransform,
    route: Option<&crate::Route>,
    request: bool,
    err: &mut impl FnMut(String, String),
) {
    check_names(p, "remove", t.remove.iter(), header_name_ok, err);
    check_names(p, "rename", t.rename.keys().chain(t.rename.values()), header_name_ok, err);
    for (field, map) in [("set", &t.set), ("add", &t.add), ("append", &t.append)] {
        check_names(p, field, map.keys(), header_name_ok, err);
        for (name, value) in map {
            check_template(&format!("{p}.{field}.{name}"), value, route, request, err);
            if ValueTemplate::parse(value).is_ok_and(|t| t.pieces.iter().all(|p| matches!(p, Piece::Text(_))))
                && http::HeaderValue::from_str(value).is_err()
            {
                err(format!("{p}.{field}.{name}"), format!("{value:?} is not a valid header value"));
            }
        }
    }
    if t.remove.is_empty() && t.rename.is_empty() && t.set.is_empty() && t.add.is_empty() && t.append.is_empty() {
        err(p.to_owned(), "give at least one of remove, rename, set, add, append".into());
    }
}

/// Checks a `query` plugin at `p`.
pub(crate) fn check_query(
    p: &str,
    q: &QueryTransform,
    route: Option<&crate::Route>,
    err: &mut impl FnMut(String, String),
) {
    check_names(p, "remove", q.remove.iter(), query_name_ok, err);
    check_names(p, "rename", q.rename.keys().chain(q.rename.values()), query_name_ok, err);
    for (field, map) in [("set", &q.set), ("add", &q.add)] {
        check_names(p, field, map.keys(), query_name_ok, err);
        for (name, value) in map {
            check_template(&format!("{p}.{field}.{name}"), value, route, true, err);
        }
    }
    if q.remove.is_empty() && q.rename.is_empty() && q.set.is_empty() && q.add.is_empty() {
        err(p.to_owned(), "give at least one of remove, rename, set, add".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_pieces() {
        let t = ValueTemplate::parse("v{query.version}-{param.id}/{consumer}{{x}}").unwrap();
        assert_eq!(
            t.pieces,
            vec![
                Piece::Text("v".into()),
                Piece::Query("version".into()),
                Piece::Text("-".into()),
                Piece::Param("id".into()),
                Piece::Text("/".into()),
                Piece::Consumer,
                Piece::Text("{x}".into()),
            ]
        );
        assert_eq!(ValueTemplate::parse("plain").unwrap().pieces, vec![Piece::Text("plain".into())]);
        assert!(ValueTemplate::parse("").unwrap().pieces.is_empty());
        let t = ValueTemplate::parse("{tenant}{request_id}{claim.sub}{header.x-a}").unwrap();
        assert_eq!(
            t.pieces,
            vec![Piece::Tenant, Piece::RequestId, Piece::Claim("sub".into()), Piece::Header("x-a".into())]
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (t, want) in [
            ("{nope}", "unknown placeholder {nope}"),
            ("{param.}", "{param.} needs a name"),
            ("a{param.id", "'{' without its '}'"),
            ("a}b", "a lone '}'"),
            ("{jwt.sub}", "unknown placeholder {jwt.sub}"),
        ] {
            let e = ValueTemplate::parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
    }
}
