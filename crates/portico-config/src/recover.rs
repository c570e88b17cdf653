//! Every parse-level problem in one run, not only the first.
//!
//! serde stops at the first problem. To find the next one, the document (as a
//! [`serde_json::Value`]) is repaired where serde complained and deserialized again: an
//! unknown field is removed; a bad optional value is removed, so that its default applies; a
//! bad required value, or a missing one, gets a stand-in built from the config's JSON Schema.
//! This repeats until the document deserializes or [`MAX_ERRORS`] problems are found. The
//! repaired config then goes through semantic validation, less the problems at a replaced
//! value, inside it, or on an object that holds it: those may be the stand-in's own.
//!
//! serde stays the one judge of what is valid, so every message is serde's and nothing that
//! loads is reported. A JSON Schema validator (the `jsonschema` crate) did not fit: it brings
//! some 30 crates, rejects scalars that serde-saphyr accepts (`name: 123`), reports a problem
//! inside a plugin as one `oneOf` failure of the whole plugin, and its messages would have
//! to be rewritten to match serde's.

use std::collections::HashMap;

use serde_json::Value;

use crate::ConfigError;
use crate::locate::Locator;
use crate::model::Config;

/// Most parse-level problems reported from one file; past that, fixing them comes first.
pub(crate) const MAX_ERRORS: usize = 100;

/// Bytes of YAML re-parsed at most while recovering (each try parses the whole document
/// twice), so a huge file with many problems still answers within seconds.
const PARSE_BUDGET: usize = 256 * 1024 * 1024;

/// Strings tried after the schema's stand-in for a required string was rejected: a socket
/// address and an IP network, for fields parsed from strings that the schema gives no
/// pattern for (`listeners[].bind`, `client_ip.trusted_proxies[]`).
const STAND_INS: [&str; 2] = ["127.0.0.1:0", "127.0.0.1/32"];

/// What [`recover`] found.
pub(crate) struct Recovered {
    /// Parse-level problems, in the order found.
    pub(crate) errors: Vec<ConfigError>,
    /// The repaired config, when the repairs got that far.
    pub(crate) config: Option<Config>,
    /// Paths whose value was replaced by a default or a stand-in, or added.
    replaced: Vec<String>,
}

impl Recovered {
    /// Whether a semantic problem at `path` may be caused by a replaced value rather than by
    /// what the file says.
    pub(crate) fn hides(&self, path: &str) -> bool {
        self.replaced.iter().any(|r| within(path, r) || (!path.is_empty() && within(r, path)))
    }
}

/// Finds the parse-level problems of `text` from `first` on, the one serde reported.
/// `locator` indexes `text`; the problems found after `first` get their positions from it.
pub(crate) fn recover(text: &str, locator: &Locator, first: ConfigError) -> Recovered {
    let mut out = Recovered { errors: Vec::new(), config: None, replaced: Vec::new() };
    let (Ok(mut doc), Ok(schema)) =
        (serde_saphyr::from_str::<Value>(text), serde_json::to_value(schemars::schema_for!(Config)))
    else {
        // Not YAML at all: serde's one error says it.
        out.errors.push(first);
        return out;
    };
    let schema = Schema { root: &schema };
    let mut tries = HashMap::new();
    let mut err = first;
    let mut own = true;
    for _ in 0..(PARSE_BUDGET / text.len().max(1)).clamp(1, 4 * MAX_ERRORS) {
        let fixed = repair(&mut doc, &schema, &err, &mut tries, &mut out.replaced);
        if own {
            out.errors.push(report(err, fixed.as_ref(), locator));
        }
        if fixed.is_none() {
            return out;
        }
        if out.errors.len() == MAX_ERRORS {
            break;
        }
        let Ok(json) = serde_json::to_string_pretty(&doc) else { return out };
        match serde_saphyr::from_str::<Config>(&json) {
            Ok(config) => {
                out.config = Some(config);
                return out;
            }
            Err(e) => {
                err = crate::parse_error(&e, &Locator::new(&json));
                // Positions in the JSON text mean nothing to the user; the path finds its own.
                err.position = None;
                // A problem in a stand-in is the stand-in's: it is repaired, not reported.
                own = !out.replaced.iter().any(|r| within(&err.path, r));
            }
        }
    }
    out.errors.push(ConfigError::new("", format!("stopped after {} problems: fix these first", out.errors.len())));
    out
}

/// What a repair learned, for the report.
struct Fixed {
    /// The path the problem is really at, when not the one serde's position gave.
    path: Option<String>,
}

fn report(mut err: ConfigError, fixed: Option<&Fixed>, locator: &Locator) -> ConfigError {
    if let Some(path) = fixed.and_then(|f| f.path.as_ref())
        && *path != err.path
    {
        err.position = None;
        err.path.clone_from(path);
    }
    if err.position.is_none() && crate::locate::is_about_a_key(&err.message) {
        err.position = locator.find_key(&err.path);
    }
    err
}

/// Changes `doc` so that serde gets past `err`. `None` when it cannot.
fn repair(
    doc: &mut Value,
    schema: &Schema<'_>,
    err: &ConfigError,
    tries: &mut HashMap<String, usize>,
    replaced: &mut Vec<String>,
) -> Option<Fixed> {
    let segs = segments(doc, &err.path)?;
    if let Some(field) = quoted(&err.message, "unknown field `") {
        // Reported at the key's own path, or (in flow style) near it.
        let at = holder(doc, &segs, field)?;
        node_mut(doc, &at)?.as_object_mut()?.remove(field);
        return Some(Fixed { path: Some(join(&at, field)) });
    }
    if let Some(field) = quoted(&err.message, "missing field `") {
        let at = (0..=segs.len()).rev().map(|n| &segs[..n]).find(|s| {
            node(doc, s).and_then(Value::as_object).is_some_and(|o| !o.contains_key(field))
                && schema.at(s).and_then(|o| schema.property(o, field)).is_some()
        })?;
        let value = schema.stand_in(schema.property(schema.at(at)?, field)?, 0);
        let at = at.to_vec();
        node_mut(doc, &at)?.as_object_mut()?.insert(field.to_owned(), value);
        replaced.push(join(&at, field));
        return Some(Fixed { path: Some(path_of(&at)) });
    }
    if let Some(variant) = quoted(&err.message, "unknown variant `") {
        // `{ bogus: {...} }` for an enum written as a one-key mapping: replace the mapping.
        if let Some(at) = holder(doc, &segs, variant) {
            let path = path_of(&at);
            return replace(doc, schema, &at, tries, replaced).map(|_| Fixed { path: Some(path) });
        }
    }
    // When the value cannot be replaced (its stand-ins were rejected too), the value that
    // holds it is.
    (1..=segs.len()).rev().find_map(|n| replace(doc, schema, &segs[..n], tries, replaced))
}

/// Replaces the bad value at `segs`: removes it when optional (its default applies), else
/// puts the next stand-in there.
fn replace(
    doc: &mut Value,
    schema: &Schema<'_>,
    segs: &[Seg],
    tries: &mut HashMap<String, usize>,
    replaced: &mut Vec<String>,
) -> Option<Fixed> {
    let path = path_of(segs);
    let (last, parent) = segs.split_last()?;
    let attempt = tries.entry(path.clone()).or_insert(0);
    let n = *attempt;
    *attempt += 1;
    let parent_schema = schema.at(parent)?;
    match last {
        Seg::Key(k) if schema.property(parent_schema, k).is_some_and(|_| !schema.required(parent_schema, k)) => {
            if n > 0 {
                return None;
            }
            node_mut(doc, parent)?.as_object_mut()?.remove(k);
        }
        _ => {
            let first = schema.stand_in(schema.at(segs)?, 0);
            let value = std::iter::once(first).chain(STAND_INS.map(Value::from)).nth(n)?;
            *node_mut(doc, segs)? = value;
        }
    }
    replaced.push(path);
    Some(Fixed { path: None })
}

/// The path of the mapping, at `segs` or around it, that has the key `key`.
fn holder(doc: &Value, segs: &[Seg], key: &str) -> Option<Vec<Seg>> {
    (0..=segs.len())
        .rev()
        .map(|n| &segs[..n])
        .find(|s| node(doc, s).and_then(Value::as_object).is_some_and(|o| o.contains_key(key)))
        .map(<[Seg]>::to_vec)
}

/// The text between `prefix` and the next backtick.
fn quoted<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}

/// `path` is `base` or inside it.
fn within(path: &str, base: &str) -> bool {
    base.is_empty() || path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// One step of a config path.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The steps of `path` in `doc`. A key may itself contain `.` (an upstream named `api.v1`),
/// so keys are matched against the mapping's own keys, the longest that fits first.
fn segments(doc: &Value, path: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut node = doc;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let i = r[..end].parse().ok()?;
            node = node.as_array()?.get(i)?;
            segs.push(Seg::Index(i));
            rest = &r[end + 1..];
        } else {
            let r = if segs.is_empty() { rest } else { rest.strip_prefix('.')? };
            let fits =
                |k: &&String| r.strip_prefix(k.as_str()).is_some_and(|t| t.is_empty() || t.starts_with(['.', '[']));
            let obj = node.as_object()?;
            let key = obj.keys().filter(fits).max_by_key(|k| k.len())?;
            node = &obj[key];
            rest = &r[key.len()..];
            segs.push(Seg::Key(key.clone()));
        }
    }
    Some(segs)
}

fn path_of(segs: &[Seg]) -> String {
    let mut p = String::new();
    for s in segs {
        match s {
            Seg::Key(k) if p.is_empty() => p.push_str(k),
            Seg::Key(k) => {
                p.push('.');
                p.push_str(k);
            }
            Seg::Index(i) => p.push_str(&format!("[{i}]")),
        }
    }
    p
}

fn join(segs: &[Seg], key: &str) -> String {
    let p = path_of(segs);
    if p.is_empty() { key.to_owned() } else { format!("{p}.{key}") }
}

fn node<'v>(doc: &'v Value, segs: &[Seg]) -> Option<&'v Value> {
    segs.iter().try_fold(doc, |v, s| match s {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(i),
    })
}

fn node_mut<'v>(doc: &'v mut Value, segs: &[Seg]) -> Option<&'v mut Value> {
    segs.iter().try_fold(doc, |v, s| match s {
        Seg::Key(k) => v.get_mut(k),
        Seg::Index(i) => v.get_mut(i),
    })
}

/// The config's JSON Schema, as schemars writes it: `$ref`s into `$defs`, `anyOf` for
/// `Option`s, `oneOf` for enums.
struct Schema<'a> {
    root: &'a Value,
}

impl<'a> Schema<'a> {
    fn resolve(&self, mut s: &'a Value) -> &'a Value {
        while let Some(name) = s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            s = &self.root["$defs"][name];
        }
        s
    }

    fn branches(&self, s: &'a Value) -> impl Iterator<Item = &'a Value> {
        s.get("anyOf").or_else(|| s.get("oneOf")).and_then(Value::as_array).into_iter().flatten()
    }

    /// The schema of the value at `segs` from the root.
    fn at(&self, segs: &[Seg]) -> Option<&'a Value> {
        segs.iter().try_fold(self.root, |s, seg| self.child(s, seg))
    }

    fn child(&self, s: &'a Value, seg: &Seg) -> Option<&'a Value> {
        let s = self.resolve(s);
        let direct = match seg {
            Seg::Key(k) => s
                .get("properties")
                .and_then(|p| p.get(k))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object())),
            Seg::Index(_) => s.get("items"),
        };
        direct.or_else(|| self.branches(s).find_map(|b| self.child(b, seg)))
    }

    /// The object schema (`s` itself or one of its branches) that names the property `key`.
    fn object_with(&self, s: &'a Value, key: &str) -> Option<&'a Value> {
        let s = self.resolve(s);
        if s.get("properties").is_some_and(|p| p.get(key).is_some()) {
            return Some(s);
        }
        self.branches(s).find_map(|b| self.object_with(b, key))
    }

    fn property(&self, s: &'a Value, key: &str) -> Option<&'a Value> {
        self.object_with(s, key)?.get("properties")?.get(key)
    }

    fn required(&self, s: &'a Value, key: &str) -> bool {
        self.object_with(s, key)
            .and_then(|o| o.get("required"))
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|k| k == key))
    }

    /// A value that `s` accepts, as plain as possible: the default, else null where allowed,
    /// the first constant, example or branch, an empty string or list, the minimum, or an
    /// object with its required properties.
    fn stand_in(&self, s: &'a Value, depth: usize) -> Value {
        if let Some(d) = s.get("default") {
            return d.clone();
        }
        let s = self.resolve(s);
        if depth > 16 {
            return Value::Null;
        }
        let branches: Vec<_> = self.branches(s).collect();
        if !branches.is_empty() {
            let null = branches.iter().any(|b| b.get("type").is_some_and(|t| t == "null"));
            return if null { Value::Null } else { self.stand_in(branches[0], depth + 1) };
        }
        if let Some(c) = s.get("const").or_else(|| s.get("enum").and_then(|e| e.get(0))) {
            return c.clone();
        }
        if let Some(e) = s.get("examples").and_then(|e| e.get(0)) {
            return e.clone();
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if types.contains(&"null") {
            return Value::Null;
        }
        match types.first().copied() {
            Some("string") => Value::from(""),
            Some("integer" | "number") => s.get("minimum").cloned().unwrap_or(Value::from(0)),
            Some("boolean") => Value::Bool(false),
            Some("array") => Value::Array(Vec::new()),
            Some("object") => {
                let mut obj = serde_json::Map::new();
                for key in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
                        obj.insert(key.to_owned(), self.stand_in(p, depth + 1));
                    }
                }
                Value::Object(obj)
            }
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_document_keys() {
        let doc = serde_json::json!({ "upstreams": { "api.v1": { "targets": [{ "url": 1 }] }, "api": {} } });
        let segs = segments(&doc, "upstreams.api.v1.targets[0].url").unwrap();
        assert_eq!(path_of(&segs), "upstreams.api.v1.targets[0].url");
        assert_eq!(segs[1], Seg::Key("api.v1".into()));
        assert_eq!(segments(&doc, "upstreams.api"), Some(vec![Seg::Key("upstreams".into()), Seg::Key("api".into())]));
        assert_eq!(segments(&doc, "upstreams.nope"), None);
    }

    #[test]
    fn stand_ins_satisfy_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap();
        let schema = Schema { root: &schema };
        let at = |p: &str| {
            let segs: Vec<Seg> =
                p.split('.').map(|s| s.parse().map_or_else(|_| Seg::Key(s.to_owned()), Seg::Index)).collect();
            schema.stand_in(schema.at(&segs).unwrap(), 0)
        };
        assert_eq!(at("version"), serde_json::json!(0));
        assert_eq!(at("listeners.0"), serde_json::json!({ "name": "", "bind": "" }));
        assert_eq!(at("upstreams.x.targets"), serde_json::json!([]));
        assert_eq!(at("routes.0.timeout"), Value::Null, "an Option stands in as None");
        assert_eq!(at("plugins.0.rate_limit.limits.0.per"), serde_json::json!("250ms"), "a unit takes its example");
        assert!(schema.required(schema.at(&[Seg::Key("routes".into()), Seg::Index(0)]).unwrap(), "match"));
        assert!(!schema.required(schema.at(&[Seg::Key("routes".into()), Seg::Index(0)]).unwrap(), "upstream"));
    }

    #[test]
    fn semantic_problems_near_a_stand_in_are_hidden() {
        let r = Recovered { errors: Vec::new(), config: None, replaced: vec!["routes[1].upstream".into()] };
        assert!(r.hides("routes[1].upstream"));
        assert!(r.hides("routes[1]"), "the route that holds it");
        assert!(!r.hides("routes[1].name"));
        assert!(!r.hides("routes[10].upstream"));
        assert!(!r.hides(""), "file-wide problems stay");
    }
}
