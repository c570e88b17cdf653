//! API contracts: what the `validate` plugin checks a request against. A contract is an
//! OpenAPI 3.0/3.1 document's operations ([`openapi`]) or one set of JSON Schemas for
//! every request of a route (`schemas`), compiled once per config load with the
//! `jsonschema` crate.
//!
//! A request's path, query and header parameters arrive as text; each is turned into the
//! JSON its schema expects (a number, a boolean, an array of values) before it is checked,
//! as OpenAPI's parameter serialization says (`form` for the query, `simple` for paths and
//! headers). Every problem found is reported, each with a JSON pointer into the request
//! (`/body/items/0/qty`, `/query/limit`, `/headers/x-trace-id`, `/path/id`) and the rule it
//! broke.

pub mod openapi;

use std::sync::Arc;

use http::Method;
use jsonschema::Validator;
use serde_json::Value;

/// Most problems listed in one answer.
pub const MAX_PROBLEMS: usize = 20;
/// Longest problem message, in bytes (a message may quote the client's value).
const MAX_MESSAGE: usize = 200;

/// One way a request breaks its contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a JSON pointer into the request (`/body/...`, `/query/<name>`, ...).
    pub pointer: String,
    /// The rule broken: the JSON Schema keyword (`type`, `required`, `minimum`...), or
    /// `required` for a missing parameter or body, `json` for a body that is not JSON.
    pub rule: String,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    /// A required body that is not there.
    pub fn body_required() -> Self {
        Self::new("/body".into(), "required", "a request body is required")
    }

    fn new(pointer: String, rule: &str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Self { pointer, rule: rule.to_owned(), message }
    }
}

/// Where a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum In {
    /// A segment of the path.
    Path,
    /// The query.
    Query,
    /// A header.
    Header,
}

impl In {
    fn pointer(self) -> &'static str {
        match self {
            In::Path => "/path/",
            In::Query => "/query/",
            In::Header => "/headers/",
        }
    }
}

/// The JSON a parameter's text becomes, read from its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Left as a string.
    String,
    /// A number when it reads as one (else left as text, for the schema to refuse).
    Number,
    /// An integer when it reads as one.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// Several values: repeated (`explode`) or comma-separated; each of `Shape`.
    Array(Scalar),
}

/// The items of an array parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// Left as a string.
    String,
    /// A number.
    Number,
    /// An integer.
    Integer,
    /// `true` or `false`.
    Boolean,
}

impl Scalar {
    fn of(schema: &Value) -> Self {
        match type_of(schema) {
            Some("integer") => Scalar::Integer,
            Some("number") => Scalar::Number,
            Some("boolean") => Scalar::Boolean,
            _ => Scalar::String,
        }
    }

    fn value(self, text: &str) -> Value {
        let parsed = match self {
            Scalar::String => None,
            Scalar::Integer => text.parse::<i64>().ok().map(Value::from),
            Scalar::Number => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .and_then(serde_json::Number::from_f64)
                .map(|n| text.parse::<i64>().map_or(Value::Number(n), Value::from)),
            Scalar::Boolean => match text {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
        };
        parsed.unwrap_or_else(|| Value::String(text.to_owned()))
    }
}

impl Shape {
    /// The shape a schema gives its parameter's text.
    pub fn of(schema: &Value) -> Self {
        Self::of_resolved(schema, &|v| v)
    }

    /// As [`Shape::of`], following `$ref`s (of the schema and of its `items`) with
    /// `resolve`.
    pub fn of_resolved<'v>(schema: &'v Value, resolve: &dyn Fn(&'v Value) -> &'v Value) -> Self {
        let schema = resolve(schema);
        match type_of(schema) {
            Some("array") => Shape::Array(schema.get("items").map_or(Scalar::String, |i| Scalar::of(resolve(i)))),
            Some("integer") => Shape::Integer,
            Some("number") => Shape::Number,
            Some("boolean") => Shape::Boolean,
            _ => Shape::String,
        }
    }

    /// The JSON of a parameter's values. An array takes every value, each split on
    /// `split` when given (`simple`, `form` without `explode`, `spaceDelimited`,
    /// `pipeDelimited`); anything else is one value (the caller refuses more).
    fn value(self, values: &[&str], split: Option<char>) -> Value {
        let scalar = |s: Scalar| s.value(values.first().copied().unwrap_or_default());
        match self {
            Shape::String => scalar(Scalar::String),
            Shape::Number => scalar(Scalar::Number),
            Shape::Integer => scalar(Scalar::Integer),
            Shape::Boolean => scalar(Scalar::Boolean),
            Shape::Array(item) => Value::Array(match split {
                None => values.iter().map(|v| item.value(v)).collect(),
                Some(d) => values.iter().flat_map(|v| v.split(d)).map(|part| item.value(part.trim())).collect(),
            }),
        }
    }
}

/// The `type` a schema names (the first non-null one of a list).
fn type_of(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(s) => Some(s),
        Value::Array(list) => list.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

/// A parameter of an operation.
#[derive(Debug)]
pub struct Param {
    /// Its name (lower-case for a header).
    pub name: String,
    /// Where it is.
    pub location: In,
    /// Whether a request must carry it.
    pub required: bool,
    /// The JSON its text becomes.
    pub shape: Shape,
    /// What an array's items are separated by in one value: `None` when each item is a
    /// value of its own (`form` with `explode`, the query's default); `,` for `simple` (paths
    /// and headers) and `form` without `explode`; ` ` and `|` for `spaceDelimited` and
    /// `pipeDelimited`.
    pub split: Option<char>,
    /// Its schema.
    pub schema: Option<Arc<Validator>>,
}

/// A request body an operation takes.
#[derive(Debug)]
pub struct BodySpec {
    /// Whether a request must carry one.
    pub required: bool,
    /// The media types it may have (lower-case; `*/*`, `type/*`, and `+json` suffixes match
    /// as OpenAPI says), with the schema of each JSON one.
    pub media: Vec<(String, Option<Arc<Validator>>)>,
}

impl BodySpec {
    /// The schema for a body of this `Content-Type`: `None` when the type is not taken,
    /// `Some(None)` when it is, unchecked.
    pub fn for_type(&self, content_type: Option<&str>) -> Option<Option<&Arc<Validator>>> {
        // Ranges are stored in lower case; the type is compared without case, unallocated.
        let essence = content_type.and_then(|c| c.split(';').next()).unwrap_or_default().trim();
        let matches = |range: &str| {
            range.eq_ignore_ascii_case(essence)
                || range == "*/*"
                || range
                    .strip_suffix("/*")
                    .is_some_and(|ty| essence.split('/').next().is_some_and(|t| t.eq_ignore_ascii_case(ty)))
        };
        // The most specific range first: an exact type, then `type/*`, then `*/*`.
        let rank = |range: &str| {
            if range == "*/*" {
                2
            } else if range.ends_with("/*") {
                1
            } else {
                0
            }
        };
        self.media
            .iter()
            .filter(|(range, _)| matches(range))
            .min_by_key(|(range, _)| rank(range))
            .map(|(_, v)| v.as_ref())
    }
}

/// One operation: what a request of one method on one path must look like.
#[derive(Debug)]
pub struct Operation {
    /// `operationId`, or `METHOD /path`.
    pub id: String,
    /// Its parameters.
    pub params: Vec<Param>,
    /// Its body, when it takes one.
    pub body: Option<BodySpec>,
    /// The schemas of its JSON answers by status (`200`, `2XX`, `default`).
    pub responses: Vec<(StatusKey, Arc<Validator>)>,
}

/// The parts of a request a contract reads (before any of the route's plugins changed it).
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The path's parameters, by name, percent-decoded.
    pub path_params: &'a [(String, String)],
    /// The raw query, when there is one.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a http::HeaderMap,
}

impl Operation {
    /// Checks a request's parameters; `problems` gets each one found.
    pub fn check_params(&self, req: RequestParts<'_>, problems: &mut Vec<Problem>) {
        // The query is decoded once, and only when a parameter is in it.
        let query: Vec<(String, String)> = match (req.query, self.params.iter().any(|p| p.location == In::Query)) {
            (Some(q), true) => {
                form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
            }
            _ => Vec::new(),
        };
        for p in &self.params {
            let values: Vec<std::borrow::Cow<'_, str>> = match p.location {
                In::Path => {
                    req.path_params.iter().filter(|(k, _)| *k == p.name).map(|(_, v)| v.as_str().into()).collect()
                }
                In::Query => query.iter().filter(|(k, _)| *k == p.name).map(|(_, v)| v.as_str().into()).collect(),
                // Every line of the field, bytes that are not text included (as the service
                // will see them, lossily), as one list value (RFC 9110 section 5.3).
                In::Header => {
                    let lines: Vec<std::borrow::Cow<'_, str>> = req
                        .headers
                        .get_all(p.name.as_str())
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()))
                        .collect();
                    match lines.len() {
                        0 | 1 => lines,
                        _ => vec![lines.join(",").into()],
                    }
                }
            };
            let pointer = || format!("{}{}", p.location.pointer(), escape_pointer(&p.name));
            if values.is_empty() {
                if p.required {
                    problems.push(Problem::new(
                        pointer(),
                        "required",
                        format!("required parameter {:?} is missing", p.name),
                    ));
                }
                continue;
            }
            if values.len() > 1 && !matches!(p.shape, Shape::Array(_)) {
                // Services disagree on which of several values counts: the first, the last,
                // all of them joined. One value was checked, another could be used.
                let message = format!("parameter {:?} is given {} times; it takes one value", p.name, values.len());
                problems.push(Problem::new(pointer(), "repeated", message));
                continue;
            }
            if let Some(schema) = &p.schema {
                let texts: Vec<&str> = values.iter().map(|v| &**v).collect();
                let value = p.shape.value(&texts, p.split);
                collect(schema, &value, &pointer(), true, problems);
            }
        }
    }

    /// The schema of a JSON answer of status `status`: the exact code's, else its class's
    /// (`2XX`), else `default`'s; `None` when the operation has none.
    pub fn response_schema(&self, status: u16) -> Option<&Arc<Validator>> {
        let find = |key: StatusKey| self.responses.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
        find(StatusKey::Exact(status))
            .or_else(|| find(StatusKey::Class(status / 100)))
            .or_else(|| find(StatusKey::Default))
    }
}

/// A key of an operation's `responses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKey {
    /// `200`.
    Exact(u16),
    /// `2XX`.
    Class(u16),
    /// `default`.
    Default,
}

impl StatusKey {
    /// Reads `200`, `2XX` (any case) or `default`; `None` for anything else.
    pub fn parse(key: &str) -> Option<Self> {
        let b = key.as_bytes();
        match b {
            _ if key == "default" => Some(Self::Default),
            [d, x1, x2]
                if (b'1'..=b'5').contains(d) && x1.eq_ignore_ascii_case(&b'x') && x2.eq_ignore_ascii_case(&b'x') =>
            {
                Some(Self::Class(u16::from(d - b'0')))
            }
            _ => key.parse::<u16>().ok().filter(|s| (100..600).contains(s)).map(Self::Exact),
        }
    }
}

/// Bodies up to this size get every problem listed; a larger one that breaks its schema
/// gets the first. jsonschema builds every error before it hands out the first, so listing
/// them for a megabyte of `[0,0,...]` against `items: {type: string}` would make half a
/// million errors for one request.
const LIST_ALL_UP_TO: usize = 64 * 1024;

/// Validates `value` with `schema`, adding each error under `base` (a pointer prefix): all
/// of them (up to [`MAX_PROBLEMS`]) when `all`, else the first.
pub fn collect(schema: &Validator, value: &Value, base: &str, all: bool, problems: &mut Vec<Problem>) {
    // Valid is the common case, and the check that allocates nothing.
    if schema.is_valid(value) {
        return;
    }
    let mut push = |e: jsonschema::ValidationError<'_>| {
        let at = e.instance_path().to_string();
        problems.push(Problem::new(format!("{base}{at}"), e.kind().keyword(), e.to_string()));
    };
    if !all {
        if let Err(e) = schema.validate(value) {
            push(e);
        }
        return;
    }
    for e in schema.iter_errors(value).take(MAX_PROBLEMS) {
        push(e);
    }
    problems.truncate(MAX_PROBLEMS);
}

/// Checks a JSON body against `schema`: parse errors and schema errors as problems. An
/// object with the same key twice is not JSON here: parsers disagree on which one counts
/// (serde_json keeps the last, others the first), so a body checked with one value could
/// reach the service with the other.
pub fn check_json_body(schema: Option<&Validator>, body: &[u8], problems: &mut Vec<Problem>) {
    let value = match parse_strict(body) {
        Ok(v) => v,
        Err(e) => {
            problems.push(Problem::new("/body".into(), "json", format!("the body is not JSON: {e}")));
            return;
        }
    };
    if let Some(schema) = schema {
        collect(schema, &value, "/body", body.len() <= LIST_ALL_UP_TO, problems);
    }
}

/// Parses JSON, refusing an object that names a key twice.
pub fn parse_strict(body: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A JSON value without duplicate keys (serde_json's depth limit still applies).
struct Strict;

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key {key:?} is given twice")));
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A percent-encoded path segment as text (bytes that are not UTF-8 become U+FFFD).
pub fn decode_component(v: &str) -> String {
    percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()
}

/// A name as one JSON pointer segment (`~` and `/` escaped, RFC 6901).
pub fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Compiles a schema, `Err` with the crate's message.
pub fn compile_schema(schema: &Value, draft: jsonschema::Draft) -> Result<Arc<Validator>, String> {
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .build(schema)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// A schema for name-value pairs (the query, headers or path parameters), with the shape
/// each named property gives its value.
pub type PairsSchema = (Arc<Validator>, Vec<(String, Shape)>);

/// A contract made of JSON Schemas for every request (`schemas`).
#[derive(Debug)]
pub struct Inline {
    /// The body's schema; a body is then required.
    pub body: Option<Arc<Validator>>,
    /// The query's, with the shapes its properties give.
    pub query: Option<PairsSchema>,
    /// The headers'.
    pub headers: Option<PairsSchema>,
    /// The path parameters'.
    pub path: Option<PairsSchema>,
}

impl Inline {
    /// Compiles the `schemas` of a `validate` plugin; `Err` lists each bad one with its
    /// field path (relative to `schemas`).
    pub fn compile(s: &portico_config::contract::Schemas) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut one = |field: &str, src: &Option<portico_config::contract::SchemaSource>| {
            let lower = field == "headers";
            let src = src.as_ref()?;
            let doc = match src {
                portico_config::contract::SchemaSource::File { file } => {
                    match portico_config::contract::read_document(file) {
                        Ok(v) => v,
                        Err(e) => {
                            errors.push((format!("{field}.file"), e));
                            return None;
                        }
                    }
                }
                portico_config::contract::SchemaSource::Inline(v) => v.clone(),
            };
            // Header names are matched in lower case: so are the schema's.
            let doc = if lower { lowercase_properties(doc) } else { doc };
            match compile_schema(&doc, jsonschema::Draft::Draft202012) {
                Ok(v) => Some((v, doc)),
                Err(e) => {
                    errors.push((field.to_owned(), format!("not a valid JSON Schema: {e}")));
                    None
                }
            }
        };
        let shapes = |doc: &Value| -> Vec<(String, Shape)> {
            doc.get("properties")
                .and_then(Value::as_object)
                .map(|props| props.iter().map(|(k, v)| (k.clone(), Shape::of(v))).collect())
                .unwrap_or_default()
        };
        let body = one("body", &s.body).map(|(v, _)| v);
        let query = one("query", &s.query).map(|(v, d)| (v, shapes(&d)));
        let headers = one("headers", &s.headers).map(|(v, d)| {
            let lower = shapes(&d).into_iter().map(|(k, s)| (k.to_ascii_lowercase(), s)).collect();
            (v, lower)
        });
        let path = one("path", &s.path).map(|(v, d)| (v, shapes(&d)));
        if errors.is_empty() { Ok(Self { body, query, headers, path }) } else { Err(errors) }
    }

    /// Checks a request's parameters against the query, header and path schemas.
    pub fn check_params(&self, req: RequestParts<'_>, problems: &mut Vec<Problem>) {
        if let Some((schema, shapes)) = &self.query {
            let mut pairs: Vec<(String, String)> = Vec::new();
            if let Some(q) = req.query {
                pairs = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            }
            let object = as_object(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), shapes);
            collect(schema, &object, "/query", true, problems);
        }
        if let Some((schema, shapes)) = &self.headers {
            let pairs = req.headers.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
            collect(schema, &as_object(pairs, shapes), "/headers", true, problems);
        }
        if let Some((schema, shapes)) = &self.path {
            let pairs = req.path_params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            collect(schema, &as_object(pairs, shapes), "/path", true, problems);
        }
    }
}

/// A schema's `properties` names and `required` entries in lower case (a headers schema).
fn lowercase_properties(mut doc: Value) -> Value {
    if let Some(Value::Object(props)) = doc.get_mut("properties") {
        let lowered = std::mem::take(props).into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        *props = lowered;
    }
    if let Some(Value::Array(required)) = doc.get_mut("required") {
        for r in required.iter_mut() {
            if let Value::String(name) = r {
                *name = name.to_ascii_lowercase();
            }
        }
    }
    doc
}

/// Name-value pairs as an object, each value shaped as its property says: an array takes
/// every value of its name; anything else given more than once becomes the array of its
/// values, for the schema to refuse (one value checked, another used, is not checked).
fn as_object<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, shapes: &[(String, Shape)]) -> Value {
    let mut grouped: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        grouped.entry(k).or_default().push(v);
    }
    let object = grouped
        .into_iter()
        .map(|(k, values)| {
            let shape = shapes.iter().find(|(name, _)| name == k).map_or(Shape::String, |(_, s)| *s);
            let value = match shape {
                Shape::Array(_) => shape.value(&values, None),
                _ if values.len() > 1 => Value::Array(values.iter().map(|v| shape.value(&[v], None)).collect()),
                _ => shape.value(&values, None),
            };
            (k.to_owned(), value)
        })
        .collect();
    Value::Object(object)
}

/// The methods an OpenAPI path item may define operations for.
pub const METHODS: [(&str, Method); 8] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameter_text_becomes_the_json_its_schema_expects() {
        let int = Shape::of(&json!({"type": "integer"}));
        assert_eq!(int.value(&["42"], None), json!(42));
        assert_eq!(int.value(&["4x"], None), json!("4x"), "left as text for the schema to refuse");
        assert_eq!(Shape::of(&json!({"type": "number"})).value(&["2.5"], None), json!(2.5));
        assert_eq!(Shape::of(&json!({"type": ["boolean", "null"]})).value(&["true"], None), json!(true));
        let tags = Shape::of(&json!({"type": "array", "items": {"type": "integer"}}));
        assert_eq!(tags.value(&["1", "2"], None), json!([1, 2]));
        assert_eq!(tags.value(&["1,2,x", "3"], Some(',')), json!([1, 2, "x", 3]));
        assert_eq!(tags.value(&["1| 2"], Some('|')), json!([1, 2]));
    }

    #[test]
    fn problems_carry_a_pointer_and_the_rule_broken() {
        let schema = compile_schema(
            &json!({"type": "object", "required": ["name"], "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}}}}),
            jsonschema::Draft::Draft202012,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut problems = Vec::new();
        check_json_body(Some(&schema), br#"{"items": [{"qty": 0}]}"#, &mut problems);
        let mut found: Vec<(&str, &str)> = problems.iter().map(|p| (p.pointer.as_str(), p.rule.as_str())).collect();
        found.sort_unstable();
        assert_eq!(found, [("/body", "required"), ("/body/items/0/qty", "minimum")]);
        let mut problems = Vec::new();
        check_json_body(Some(&schema), b"{not json", &mut problems);
        assert_eq!(problems[0].rule, "json");
        let mut problems = Vec::new();
        check_json_body(Some(&schema), br#"{"name": "a", "items": [{"qty": 1, "qty": -5}]}"#, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].rule == "json" && problems[0].message.contains("twice"), "{problems:?}");
    }

    #[test]
    fn a_large_body_that_breaks_its_schema_everywhere_gets_its_first_problem() {
        let schema =
            compile_schema(&json!({"type": "array", "items": {"type": "string"}}), jsonschema::Draft::Draft202012)
                .unwrap_or_else(|e| panic!("{e}"));
        let big = format!("[{}0]", "0,".repeat(100_000));
        let mut problems = Vec::new();
        check_json_body(Some(&schema), big.as_bytes(), &mut problems);
        assert_eq!(problems.len(), 1);
        let small = format!("[{}0]", "0,".repeat(100));
        let mut problems = Vec::new();
        check_json_body(Some(&schema), small.as_bytes(), &mut problems);
        assert_eq!(problems.len(), MAX_PROBLEMS);
    }

    #[test]
    fn an_answer_takes_the_exact_status_then_its_class_then_default() {
        assert_eq!(StatusKey::parse("201"), Some(StatusKey::Exact(201)));
        assert_eq!(StatusKey::parse("4xx"), Some(StatusKey::Class(4)));
        assert_eq!(StatusKey::parse("default"), Some(StatusKey::Default));
        for bad in ["6XX", "20", "2X", "OK", "700"] {
            assert_eq!(StatusKey::parse(bad), None, "{bad}");
        }
        let v = |t: &str| {
            compile_schema(&json!({"const": t}), jsonschema::Draft::Draft202012).unwrap_or_else(|e| panic!("{e}"))
        };
        let op = Operation {
            id: "x".into(),
            params: Vec::new(),
            body: None,
            responses: vec![
                (StatusKey::Default, v("default")),
                (StatusKey::Class(2), v("2XX")),
                (StatusKey::Exact(201), v("201")),
            ],
        };
        let which = |status| op.response_schema(status).map(|s| s.is_valid(&json!("201")));
        assert_eq!(which(201), Some(true));
        assert_eq!(which(200), Some(false));
        assert!(op.response_schema(200).is_some_and(|s| s.is_valid(&json!("2XX"))));
        assert!(op.response_schema(500).is_some_and(|s| s.is_valid(&json!("default"))));
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let p = Problem::new("/body".into(), "type", "é".repeat(300));
        assert!(p.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(p.message.ends_with('…'));
    }

    #[test]
    fn body_types_match_the_most_specific_range() {
        let spec = BodySpec { required: true, media: vec![("application/json".into(), None), ("text/*".into(), None)] };
        assert!(spec.for_type(Some("application/json; charset=utf-8")).is_some());
        assert!(spec.for_type(Some("text/plain")).is_some());
        assert!(spec.for_type(Some("application/xml")).is_none());
        assert!(spec.for_type(None).is_none());
    }
}
