//! An OpenAPI 3.0 or 3.1 document, compiled: its paths as templates to match, each
//! operation's parameters, body and answers with their schemas compiled.
//!
//! Schemas are compiled with the document's `components` beside them, so that the usual
//! `$ref: '#/components/schemas/Order'` resolves. 3.0 documents are read as JSON Schema
//! draft 4 (their `exclusiveMinimum: true` is draft 4's) with `nullable: true` turned
//! into a `null` type; 3.1 documents are JSON Schema 2020-12. References outside the
//! document (other files, URLs) are not fetched: a contract is what the file says.

use std::sync::Arc;

use http::Method;
use serde_json::{Map, Value};

use super::{BodySpec, In, METHODS, Operation, Param, Shape, compile_schema};

/// A compiled document.
#[derive(Debug)]
pub struct Document {
    paths: Vec<PathItem>,
}

#[derive(Debug)]
struct PathItem {
    template: String,
    segments: Vec<Seg>,
    ops: Vec<(Method, Arc<Operation>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// A parameter with text around it in its segment (`{id}`, `{name}.json`).
    Param {
        name: String,
        prefix: String,
        suffix: String,
    },
}

/// What a request's method and path find in a document.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The operation, with the path's parameters (percent-decoded).
    Found(&'a Arc<Operation>, Vec<(String, String)>),
    /// No path of the document matches.
    NoPath,
    /// A path matches, not the method; the methods it has, for `Allow`.
    NoMethod(String),
}

/// Everything wrong with a document: (field path inside it, message).
pub type Errors = Vec<(String, String)>;

impl Document {
    /// Loads and compiles a document file.
    pub fn load(file: &str) -> Result<Self, Errors> {
        let doc = portico_config::contract::read_document(file).map_err(|e| vec![(String::new(), e)])?;
        Self::compile(doc)
    }

    /// Compiles a document already read.
    pub fn compile(mut doc: Value) -> Result<Self, Errors> {
        let version = doc.get("openapi").and_then(Value::as_str).unwrap_or_default().to_owned();
        let draft = if version.starts_with("3.0") {
            nullable_to_type(&mut doc);
            jsonschema::Draft::Draft4
        } else if version.starts_with("3.1") {
            jsonschema::Draft::Draft202012
        } else {
            let found = doc.get("swagger").map_or_else(|| format!("openapi: {version:?}"), |v| format!("swagger: {v}"));
            return Err(vec![("openapi".into(), format!("not an OpenAPI 3.0 or 3.1 document ({found})"))]);
        };
        let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
            return Err(vec![("paths".into(), "the document has no paths".into())]);
        };
        let c = Compiler { doc: &doc, draft, components: doc.get("components").cloned() };
        let mut errors = Vec::new();
        let mut items = Vec::new();
        for (template, item) in paths {
            let at = format!("paths.{template}");
            let segments = match parse_template(template) {
                Ok(s) => s,
                Err(e) => {
                    errors.push((at, e));
                    continue;
                }
            };
            let item = c.resolve(item);
            let shared = item.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let mut ops = Vec::new();
            for (key, method) in &METHODS {
                let Some(op) = item.get(*key) else { continue };
                let op = c.resolve(op);
                match c.operation(&format!("{at}.{key}"), template, method, shared, op) {
                    Ok(o) => ops.push((method.clone(), Arc::new(o))),
                    Err(e) => errors.extend(e),
                }
            }
            items.push(PathItem { template: template.clone(), segments, ops });
        }
        if errors.is_empty() { Ok(Self { paths: items }) } else { Err(errors) }
    }

    /// Finds the operation of a request's method and path (`HEAD` falls back to `GET`).
    /// A concrete segment wins over a template one, from the left (OpenAPI: `/users/me`
    /// before `/users/{id}`). Escapes of unreserved characters are decoded before literal
    /// segments are compared (`/users/%6De` is `/users/me`, as a service that decodes it
    /// sees it).
    pub fn find(&self, method: &Method, path: &str) -> Lookup<'_> {
        self.find_with(method, path, false)
    }

    /// As [`Document::find`], also taking the spellings a lenient service folds into a
    /// path: empty segments (`//`, a trailing `/`) dropped, literal segments compared
    /// without case. For unknown operations that pass unchecked: a path that a lenient
    /// service reads as a known operation is checked as that operation.
    pub fn find_loose(&self, method: &Method, path: &str) -> Lookup<'_> {
        self.find_with(method, path, true)
    }

    fn find_with(&self, method: &Method, path: &str, loose: bool) -> Lookup<'_> {
        let normal = decode_unreserved(path);
        // An origin-form path starts with `/`; anything else names no operation.
        let Some(rest) = normal.strip_prefix('/') else { return Lookup::NoPath };
        let segs: Vec<&str> = rest.split('/').collect();
        let segs: Vec<&str> = if loose { segs.into_iter().filter(|s| !s.is_empty()).collect() } else { segs };
        let mut best: Option<(&PathItem, Match)> = None;
        for item in &self.paths {
            let Some(m) = matches(&item.segments, &segs, loose) else { continue };
            if best.as_ref().is_none_or(|(_, (rank, _))| m.0 > *rank) {
                best = Some((item, m));
            }
        }
        let Some((item, (_, params))) = best else { return Lookup::NoPath };
        let op =
            item.ops.iter().find(|(m, _)| m == method).or_else(|| {
                (*method == Method::HEAD).then(|| item.ops.iter().find(|(m, _)| *m == Method::GET)).flatten()
            });
        match op {
            Some((_, op)) => Lookup::Found(op, params),
            None => Lookup::NoMethod(item.ops.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Each path template with its operations: `(template, [(method, operationId)])`.
    pub fn operations(&self) -> impl Iterator<Item = (&str, Vec<(&Method, &str)>)> {
        self.paths.iter().map(|p| (p.template.as_str(), p.ops.iter().map(|(m, o)| (m, o.id.as_str())).collect()))
    }
}

/// How well a path matched a template (see [`matches`]), and its parameters.
type Match = (Vec<u8>, Vec<(String, String)>);

/// A path's segments against a template's: a rank (2 per literal, 1 per parameter with
/// text around it, 0 per bare parameter) and the parameters, when it matches.
fn matches(template: &[Seg], segs: &[&str], loose: bool) -> Option<Match> {
    if template.len() != segs.len() {
        return None;
    }
    let mut rank = Vec::with_capacity(segs.len());
    let mut params = Vec::new();
    for (t, s) in template.iter().zip(segs) {
        match t {
            Seg::Lit(l) if l == s || (loose && l.eq_ignore_ascii_case(s)) => rank.push(2),
            Seg::Lit(_) => return None,
            Seg::Param { name, prefix, suffix } => {
                let value = s.strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
                if value.is_empty() {
                    return None;
                }
                let decoded = super::decode_component(value);
                params.push((name.clone(), decoded));
                rank.push(u8::from(!prefix.is_empty() || !suffix.is_empty()));
            }
        }
    }
    Some((rank, params))
}

/// A path with `%XX` escapes of unreserved characters (letters, digits, `-._~`) decoded:
/// RFC 3986 section 6.2.2.2 makes them the same path. Other escapes stay.
fn decode_unreserved(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return path.into();
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c));
        match decoded {
            Some(c) => {
                out.push(char::from(c));
                i += 3;
            }
            None => {
                // `path` is a str: the byte starts a character here unless it continues one,
                // which the loop never stops in (escapes are ASCII).
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out.into()
}

fn parse_template(t: &str) -> Result<Vec<Seg>, String> {
    if !t.starts_with('/') {
        return Err("a path must start with /".into());
    }
    t.trim_start_matches('/')
        .split('/')
        .map(|s| {
            let Some(open) = s.find('{') else {
                return if s.contains('}') {
                    Err(format!("unbalanced }} in {s:?}"))
                } else {
                    Ok(Seg::Lit(s.to_owned()))
                };
            };
            let close = s[open..].find('}').map(|c| c + open).ok_or_else(|| format!("unclosed {{ in {s:?}"))?;
            let (prefix, name, suffix) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
            if name.is_empty() || suffix.contains(['{', '}']) || prefix.contains('}') {
                return Err(format!("{s:?}: one {{name}} per segment"));
            }
            Ok(Seg::Param { name: name.to_owned(), prefix: prefix.to_owned(), suffix: suffix.to_owned() })
        })
        .collect()
}

/// 3.0's `nullable: true` as a `null` type (and a `null` in an `enum`), everywhere.
fn nullable_to_type(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true)) {
                match map.get_mut("type") {
                    Some(Value::String(t)) => {
                        let t = std::mem::take(t);
                        map.insert("type".into(), Value::Array(vec![Value::String(t), Value::from("null")]));
                    }
                    Some(Value::Array(list)) if !list.contains(&Value::from("null")) => list.push(Value::from("null")),
                    _ => {}
                }
                if let Some(Value::Array(list)) = map.get_mut("enum")
                    && !list.contains(&Value::Null)
                {
                    list.push(Value::Null);
                }
            }
            map.values_mut().for_each(nullable_to_type);
        }
        Value::Array(list) => list.iter_mut().for_each(nullable_to_type),
        _ => {}
    }
}

struct Compiler<'a> {
    doc: &'a Value,
    draft: jsonschema::Draft,
    components: Option<Value>,
}

impl Compiler<'_> {
    /// Follows local `$ref`s (`#/components/...`) of a parameter, body, answer or path
    /// item, at most 16 deep; an unresolvable one is left as it is.
    fn resolve<'v>(&'v self, mut v: &'v Value) -> &'v Value {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else { return v };
            let Some(pointer) = r.strip_prefix('#') else { return v };
            let pointer = percent_encoding::percent_decode_str(pointer).decode_utf8_lossy();
            match self.doc.pointer(&pointer) {
                Some(target) => v = target,
                None => return v,
            }
        }
        v
    }

    /// Compiles a schema with the document's `components` beside it.
    fn schema(&self, at: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, (String, String)> {
        let mut root = match schema {
            Value::Object(m) => m.clone(),
            other => Map::from_iter([("allOf".to_owned(), Value::Array(vec![other.clone()]))]),
        };
        if let Some(c) = &self.components {
            root.entry("components").or_insert_with(|| c.clone());
        }
        compile_schema(&Value::Object(root), self.draft).map_err(|e| (at.to_owned(), format!("bad schema: {e}")))
    }

    fn operation(
        &self,
        at: &str,
        template: &str,
        method: &Method,
        shared: &[Value],
        op: &Value,
    ) -> Result<Operation, Errors> {
        let mut errors = Vec::new();
        let id =
            op.get("operationId").and_then(Value::as_str).map_or_else(|| format!("{method} {template}"), str::to_owned);
        // The operation's parameters override the path item's of the same name and place.
        let own = op.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut params: Vec<Param> = Vec::new();
        let listed = shared.iter().enumerate().map(|(i, p)| (format!("{}.parameters[{i}]", parent(at)), p));
        let listed = listed.chain(own.iter().enumerate().map(|(i, p)| (format!("{at}.parameters[{i}]"), p)));
        for (pat, p) in listed {
            match self.param(&pat, self.resolve(p)) {
                Ok(Some(p)) => {
                    params.retain(|q| !(q.name == p.name && q.location == p.location));
                    params.push(p);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        for seg in parse_template(template).unwrap_or_default() {
            if let Seg::Param { name, .. } = seg
                && !params.iter().any(|p| p.location == In::Path && p.name == name)
            {
                // Undeclared: still a required segment, of any text.
                params.push(Param {
                    name,
                    location: In::Path,
                    required: true,
                    shape: Shape::String,
                    split: Some(','),
                    schema: None,
                });
            }
        }
        let body = match op.get("requestBody").map(|b| self.resolve(b)) {
            None => None,
            Some(b) => {
                let mut media = Vec::new();
                for (ty, m) in b.get("content").and_then(Value::as_object).into_iter().flatten() {
                    let schema = match m.get("schema") {
                        Some(s) if crate::plugins::hooks::is_json_media(ty) => {
                            match self.schema(&format!("{at}.requestBody.content.{ty}.schema"), s) {
                                Ok(v) => Some(v),
                                Err(e) => {
                                    errors.push(e);
                                    None
                                }
                            }
                        }
                        _ => None,
                    };
                    media.push((ty.to_ascii_lowercase(), schema));
                }
                let required = b.get("required").and_then(Value::as_bool).unwrap_or(false);
                Some(BodySpec { required, media })
            }
        };
        let mut responses = Vec::new();
        for (status, r) in op.get("responses").and_then(Value::as_object).into_iter().flatten() {
            let r = self.resolve(r);
            let json = r
                .get("content")
                .and_then(Value::as_object)
                .and_then(|c| c.iter().find(|(t, _)| crate::plugins::hooks::is_json_media(t)));
            if let Some((ty, m)) = json
                && let Some(s) = m.get("schema")
            {
                let Some(key) = super::StatusKey::parse(status) else {
                    errors.push((format!("{at}.responses.{status}"), "not a status, a class (2XX) or default".into()));
                    continue;
                };
                match self.schema(&format!("{at}.responses.{status}.content.{ty}.schema"), s) {
                    Ok(v) => responses.push((key, v)),
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() { Ok(Operation { id, params, body, responses }) } else { Err(errors) }
    }

    /// A parameter; `None` for one this contract does not check (a cookie).
    fn param(&self, at: &str, p: &Value) -> Result<Option<Param>, (String, String)> {
        let name = p.get("name").and_then(Value::as_str).ok_or_else(|| (at.to_owned(), "no name".to_owned()))?;
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => In::Path,
            Some("query") => In::Query,
            Some("header") => In::Header,
            Some("cookie") => return Ok(None),
            other => return Err((format!("{at}.in"), format!("{other:?} is not path, query, header or cookie"))),
        };
        let required = location == In::Path || p.get("required").and_then(Value::as_bool).unwrap_or(false);
        let (shape, schema) = match p.get("schema") {
            Some(s) => (Shape::of_resolved(s, &|v| self.resolve(v)), Some(self.schema(&format!("{at}.schema"), s)?)),
            None => (Shape::String, None),
        };
        // `explode` only matters to the query's `form` style (its default there): each
        // item a parameter of its own. Every other style separates items in one value.
        let style = p.get("style").and_then(Value::as_str);
        let split = match (location, style) {
            (In::Query, None | Some("form")) => {
                let explode = p.get("explode").and_then(Value::as_bool).unwrap_or(true);
                (!explode).then_some(',')
            }
            (In::Query, Some("spaceDelimited")) => Some(' '),
            (In::Query, Some("pipeDelimited")) => Some('|'),
            _ => Some(','),
        };
        let name = if location == In::Header { name.to_ascii_lowercase() } else { name.to_owned() };
        Ok(Some(Param { name, location, required, shape, split, schema }))
    }
}

/// `paths./a.get` → `paths./a`.
fn parent(at: &str) -> &str {
    at.rsplit_once('.').map_or(at, |(p, _)| p)
}

/// Routes for a document's operations, as config YAML (`portico routes-from-openapi`):
/// one per path, matching its methods, sending to `upstream`, validated against the
/// document at `file`. With `prefix`, routes match under it and validation strips it.
pub fn routes_yaml(doc: &Document, file: &str, upstream: &str, prefix: Option<&str>) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut names = std::collections::HashSet::new();
    let mut out = format!("# Routes for the operations of {file}, validated against it.\nroutes:\n");
    let base = prefix.map(|p| format!(", base_path: {}", quote(p))).unwrap_or_default();
    for item in &doc.paths {
        if item.ops.is_empty() {
            continue;
        }
        let full = format!("{}{}", prefix.unwrap_or(""), item.template);
        // A route's name: the first operation's ID, else one made of the path; unique.
        let stem = item.ops.first().map(|(_, o)| o.id.as_str()).filter(|id| !id.contains(' ')).map_or_else(
            || {
                let words: Vec<String> = item
                    .template
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect();
                if words.is_empty() { "root".to_owned() } else { words.join("-") }
            },
            str::to_owned,
        );
        let mut name = stem.clone();
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        let methods: Vec<&str> = item.ops.iter().map(|(m, _)| m.as_str()).collect();
        let ids: Vec<&str> = item.ops.iter().map(|(_, o)| o.id.as_str()).collect();
        // A parameter with text around it in its segment is not a route template: a regex.
        let partial = item
            .segments
            .iter()
            .any(|s| matches!(s, Seg::Param { prefix, suffix, .. } if !prefix.is_empty() || !suffix.is_empty()));
        let matcher = if partial {
            let mut re = format!("^{}", regex::escape(prefix.unwrap_or("")));
            for seg in &item.segments {
                re.push('/');
                match seg {
                    Seg::Lit(l) => re.push_str(&regex::escape(l)),
                    Seg::Param { name, prefix, suffix } => {
                        re.push_str(&format!("{}(?P<{}>[^/]+){}", regex::escape(prefix), name, regex::escape(suffix)))
                    }
                }
            }
            re.push('$');
            format!("regex: {}", quote(&re))
        } else {
            format!("path: {}", quote(&full))
        };
        out.push_str(&format!(
            "  - name: {}\n    # {}\n    match: {{ {matcher}, methods: [{}] }}\n    upstream: {}\n    plugins:\n      - validate: {{ openapi: {}{base} }}\n",
            quote(&name),
            ids.join(", "),
            methods.join(", "),
            quote(upstream),
            quote(file),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Document {
        let d = json!({
            "openapi": "3.0.3",
            "paths": {
                "/users/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                                "get": {"operationId": "getUser"}, "delete": {}},
                "/users/me": {"get": {"operationId": "me"}},
                "/files/{name}.json": {"get": {}}
            },
            "components": {"schemas": {"N": {"type": "string", "nullable": true}}}
        });
        Document::compile(d).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn a_concrete_path_wins_over_a_template() {
        let d = doc();
        let Lookup::Found(op, params) = d.find(&Method::GET, "/users/me") else { panic!("no match") };
        assert_eq!((op.id.as_str(), params.len()), ("me", 0));
        let Lookup::Found(op, params) = d.find(&Method::GET, "/users/7") else { panic!("no match") };
        assert_eq!(op.id, "getUser");
        assert_eq!(params, [("id".to_owned(), "7".to_owned())]);
        let Lookup::Found(_, params) = d.find(&Method::HEAD, "/files/a%20b.json") else { panic!("no match") };
        assert_eq!(params, [("name".to_owned(), "a b".to_owned())]);
        assert!(matches!(d.find(&Method::GET, "/users"), Lookup::NoPath));
        // Found by the contract fuzz target: a path without its leading `/` matched.
        assert!(matches!(d.find(&Method::GET, "users/7"), Lookup::NoPath));
        assert!(matches!(d.find_loose(&Method::GET, "users/7"), Lookup::NoPath));
        // An escaped unreserved character is the character: `/users/%6De` is `/users/me`.
        let Lookup::Found(op, _) = d.find(&Method::GET, "/users/%6De") else { panic!("no match") };
        assert_eq!(op.id, "me");
        // Lenient spellings: only the loose lookup takes them.
        assert!(matches!(d.find(&Method::GET, "/users/me/"), Lookup::NoPath));
        assert!(matches!(d.find(&Method::GET, "//users/me"), Lookup::NoPath));
        for spelling in ["/users/me/", "//users//me", "/Users/ME"] {
            let Lookup::Found(op, _) = d.find_loose(&Method::GET, spelling) else { panic!("{spelling}") };
            assert_eq!(op.id, "me", "{spelling}");
        }
        assert!(matches!(d.find(&Method::POST, "/users/7"), Lookup::NoMethod(allow) if allow == "GET, DELETE"));
    }

    #[test]
    fn routes_are_printed_per_path_with_a_regex_for_partial_segments() {
        let yaml = routes_yaml(&doc(), "api.yaml", "users", Some("/v1"));
        assert!(yaml.contains(r#"match: { path: "/v1/users/{id}", methods: [GET, DELETE] }"#), "{yaml}");
        assert!(yaml.contains(r#"name: "me""#), "{yaml}");
        let line = yaml.lines().find(|l| l.contains("regex:")).unwrap_or_else(|| panic!("{yaml}"));
        let re: String =
            serde_json::from_str(line.split("regex: ").nth(1).and_then(|r| r.split(", methods").next()).unwrap_or(""))
                .unwrap_or_default();
        let re = regex::Regex::new(&re).unwrap_or_else(|e| panic!("{e}"));
        assert!(re.is_match("/v1/files/a.json") && !re.is_match("/v1/files/a_json"));
    }

    #[test]
    fn nullable_becomes_a_null_type() {
        let mut v = json!({"type": "string", "nullable": true, "enum": ["a"], "properties": {"x": {"type": "integer", "nullable": true}}});
        nullable_to_type(&mut v);
        assert_eq!(v["type"], json!(["string", "null"]));
        assert_eq!(v["enum"], json!(["a", null]));
        assert_eq!(v["properties"]["x"]["type"], json!(["integer", "null"]));
    }

    #[test]
    fn bad_documents_name_the_place() {
        let e = Document::compile(json!({"swagger": "2.0", "paths": {}})).err().unwrap_or_default();
        assert_eq!(e[0].0, "openapi");
        let e = Document::compile(json!({"openapi": "3.1.0", "paths": {"/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": "objekt"}}}}}}}}))
            .err()
            .unwrap_or_default();
        assert_eq!(e[0].0, "paths./a.post.requestBody.content.application/json.schema");
        let e = Document::compile(json!({"openapi": "3.1.0", "paths": {"/a/{x}{y}": {}}})).err().unwrap_or_default();
        assert_eq!(e[0].0, "paths./a/{x}{y}");
    }
}
