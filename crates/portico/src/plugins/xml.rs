//! `xml`: JSON to XML and XML to JSON, for clients and services that speak different ones.
//!
//! Going up, an XML request body (`application/xml`, `text/xml`, any `+xml`) becomes JSON
//! for a JSON service (`request: to_json`). Coming down, a JSON answer becomes XML
//! (`response: to_xml`), or does so only for a client whose `Accept` prefers XML to JSON
//! (`response: by_accept`); an XML answer becomes JSON (`response: to_json`). Bodies are
//! held whole, up to `max_size`, as for the other body plugins.
//!
//! The mapping, both ways (docs/plugins.md#xml):
//! - an element is a key; its value is its text when it has neither attributes nor child
//!   elements (`<a>x</a>` is `{"a": "x"}`; `<a/>` is `{"a": null}`), else an object;
//! - an attribute is a key with `@` (`<a id="7">` is `{"a": {"@id": "7"}}`);
//! - text beside attributes or children is `#text`;
//! - repeated sibling elements are an array, in order;
//! - text is a string: XML says nothing of numbers, so none is guessed. Going to XML,
//!   numbers and booleans are written as text, `null` as an empty element.
//!
//! XML from outside is untrusted: only the five predefined entities and character
//! references are read (no DTD, no external entity, so no XXE and no entity expansion), and
//! nesting deeper than [`MAX_DEPTH`] is refused. Names that are not XML names are refused
//! going to XML.

use http::HeaderValue;
use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::{Map, Value};

use super::hooks::{HookCtx, Hooks, Phases, Whole, is_json};
use crate::error::{ErrorKind, GatewayError};

/// The deepest nesting read from XML.
pub const MAX_DEPTH: usize = 64;

/// A compiled `xml` plugin.
#[derive(Debug)]
pub struct Xml {
    request_to_json: bool,
    response: Option<portico_config::plugins::XmlResponse>,
    root: String,
    max_size: u64,
}

impl Xml {
    /// Compiles the plugin config (validated).
    pub fn new(c: &portico_config::plugins::Xml) -> Self {
        Self {
            request_to_json: c.request == Some(portico_config::plugins::XmlRequest::ToJson),
            response: c.response,
            root: c.root.clone(),
            max_size: c.max_size.get(),
        }
    }
}

/// Whether fields say the body is XML (`application/xml`, `text/xml`, any `+xml`), not
/// compressed.
pub fn is_xml(headers: &http::HeaderMap) -> bool {
    let encoded =
        headers.get(http::header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let Some(ct) = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let xml = essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml");
    xml && !encoded
}

/// Whether an `Accept` value prefers XML to JSON: the highest weight given to
/// `application/xml` or `text/xml` is above the one given to `application/json` (ranges
/// like `*/*` count for neither).
pub(crate) fn prefers_xml(accept: &HeaderValue) -> bool {
    let Ok(accept) = accept.to_str() else { return false };
    let (mut xml, mut json) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let ty = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        // Parameter names are case-insensitive (RFC 9110 section 5.6.6): `q=` or `Q=`.
        let q = parts
            .find_map(|p| {
                let p = p.trim();
                p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")).and_then(|q| q.trim().parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        match ty.as_str() {
            "application/xml" | "text/xml" => xml = xml.max(q),
            "application/json" => json = json.max(q),
            _ => {}
        }
    }
    xml > json
}

impl Hooks for Xml {
    fn kind(&self) -> &'static str {
        "xml"
    }

    fn phases(&self) -> Phases {
        Phases { request_body: self.request_to_json, response_body: self.response.is_some(), ..Phases::default() }
    }

    fn body_limit(&self) -> u64 {
        self.max_size
    }

    fn wants_body(&self, headers: &http::HeaderMap, request: bool, ctx: &HookCtx<'_>) -> bool {
        use portico_config::plugins::XmlResponse as R;
        match (request, self.response) {
            (true, _) => self.request_to_json && is_xml(headers),
            (false, Some(R::ToJson)) => is_xml(headers),
            (false, Some(R::ToXml)) => is_json(headers),
            (false, Some(R::ByAccept)) => is_json(headers) && ctx.accept.is_some_and(prefers_xml),
            (false, None) => false,
        }
    }

    fn request_body(&self, msg: &mut Whole<'_>, _ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        if !is_xml(msg.headers) {
            return Ok(());
        }
        let doc = to_json(&msg.body).map_err(|e| {
            tracing::debug!(error = %e, "request body is not XML");
            GatewayError::new(ErrorKind::BadRequest("request body is not valid XML"))
        })?;
        msg.body = doc.to_string().into();
        msg.content_type = Some(HeaderValue::from_static("application/json"));
        Ok(())
    }

    fn response_body(&self, msg: &mut Whole<'_>, _ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        let bad = |e: String| {
            tracing::debug!(error = %e, "response body could not be converted");
            GatewayError::new(ErrorKind::BadResponse)
        };
        if is_xml(msg.headers) {
            if self.response != Some(portico_config::plugins::XmlResponse::ToJson) {
                return Ok(());
            }
            let doc = to_json(&msg.body).map_err(bad)?;
            msg.body = doc.to_string().into();
            msg.content_type = Some(HeaderValue::from_static("application/json"));
            return Ok(());
        }
        let doc: Value = serde_json::from_slice(&msg.body).map_err(|e| bad(e.to_string()))?;
        msg.body = to_xml(&doc, &self.root).map_err(bad)?.into();
        msg.content_type = Some(HeaderValue::from_static("application/xml; charset=utf-8"));
        Ok(())
    }
}

/// An element being read: its attributes and children so far, and its text.
struct Open {
    name: String,
    fields: Map<String, Value>,
    text: String,
    children: bool,
}

impl Open {
    fn value(self) -> Value {
        let text = self.text.trim();
        if self.fields.is_empty() && !self.children {
            return if text.is_empty() { Value::Null } else { Value::String(text.to_owned()) };
        }
        let mut fields = self.fields;
        if !text.is_empty() {
            fields.insert("#text".into(), Value::String(text.to_owned()));
        }
        Value::Object(fields)
    }
}

/// Adds `value` under `name`: a second one makes an array.
fn add(fields: &mut Map<String, Value>, name: String, value: Value) {
    match fields.get_mut(&name) {
        None => {
            fields.insert(name, value);
        }
        Some(Value::Array(a)) => a.push(value),
        Some(first) => {
            let first = std::mem::take(first);
            fields.insert(name, Value::Array(vec![first, value]));
        }
    }
}

/// An XML document as JSON: `{"root": ...}` by the mapping in the module doc.
pub fn to_json(xml: &[u8]) -> Result<Value, String> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut top: Option<(String, Value)> = None;
    let open = |e: &quick_xml::events::BytesStart<'_>| -> Result<Open, String> {
        let mut fields = Map::new();
        for a in e.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let key = a.key.into_inner();
            if !read_name(key) {
                return Err(format!("{key:?} is not an XML name"));
            }
            let v = a.normalized_value(quick_xml::XmlVersion::default()).map_err(|e| e.to_string())?;
            chars_ok(&v)?;
            fields.insert(format!("@{key}"), Value::String(v.into_owned()));
        }
        let name = e.name().into_inner();
        if !read_name(name) {
            return Err(format!("{name:?} is not an XML name"));
        }
        Ok(Open { name: name.to_owned(), fields, text: String::new(), children: false })
    };
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| e.to_string())?;
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH}"));
                }
                if top.is_some() && stack.is_empty() {
                    return Err("more than one root element".into());
                }
                stack.push(open(&e)?);
            }
            Event::Empty(e) => {
                let el = open(&e)?;
                close(&mut stack, &mut top, el)?;
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("an end tag without its start")?;
                close(&mut stack, &mut top, el)?;
            }
            Event::Text(t) => text(&mut stack, &t)?,
            Event::CData(t) => text(&mut stack, &t)?,
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or_else(|| format!("unknown entity &{};", &*r))?
                        .to_owned(),
                };
                text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err("a DOCTYPE is not read".into()),
            Event::Eof => break,
            // Declarations, comments and processing instructions carry no data.
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    let (name, value) = top.ok_or("no root element")?;
    let mut m = Map::new();
    m.insert(name, value);
    Ok(Value::Object(m))
}

/// Whether a name read from XML is one: a letter, `_` or `:` first, then letters, digits,
/// `_`, `-`, `.` and `:` (the reader itself is lenient about names).
fn read_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Text holds only characters XML 1.0 allows: no control characters but tab, LF and CR.
fn chars_ok(t: &str) -> Result<(), String> {
    match t.chars().find(|&c| c < ' ' && !matches!(c, '\t' | '\n' | '\r')) {
        Some(c) => Err(format!("the character {c:?} is not allowed in XML")),
        None => Ok(()),
    }
}

/// Text read inside the open element (outside any, only whitespace is allowed).
fn text(stack: &mut [Open], t: &str) -> Result<(), String> {
    chars_ok(t)?;
    match stack.last_mut() {
        Some(open) => open.text.push_str(t),
        None if t.trim().is_empty() => {}
        None => return Err("text outside the root element".into()),
    }
    Ok(())
}

/// An element ends: its value goes into its parent, or is the document's.
fn close(stack: &mut [Open], top: &mut Option<(String, Value)>, el: Open) -> Result<(), String> {
    let name = el.name.clone();
    let value = el.value();
    match stack.last_mut() {
        Some(parent) => {
            parent.children = true;
            add(&mut parent.fields, name, value);
        }
        None if top.is_none() => *top = Some((name, value)),
        None => return Err("more than one root element".into()),
    }
    Ok(())
}

/// Whether `name` can be an XML element or attribute name (a conservative ASCII subset
/// with any non-ASCII letter: a letter or `_` first, then letters, digits, `_`, `-`, `.`).
fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("xml"))
}

/// A JSON document as XML under `<root>`, by the mapping in the module doc.
pub fn to_xml(doc: &Value, root: &str) -> Result<String, String> {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    element(&mut out, root, doc, 0)?;
    Ok(out)
}

fn element(out: &mut String, name: &str, v: &Value, depth: usize) -> Result<(), String> {
    if !xml_name(name) {
        return Err(format!("{name:?} is not an XML name"));
    }
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH}"));
    }
    if let Value::Array(items) = v {
        // Repeated elements of the same name.
        for item in items {
            element(out, name, item, depth + 1)?;
        }
        return Ok(());
    }
    out.push('<');
    out.push_str(name);
    let Value::Object(fields) = v else {
        match v {
            Value::Null => out.push_str("/>"),
            Value::String(s) => {
                chars_ok(s)?;
                out.push('>');
                out.push_str(&quick_xml::escape::escape(s.as_str()));
                close_tag(out, name);
            }
            other => {
                out.push('>');
                out.push_str(&other.to_string());
                close_tag(out, name);
            }
        }
        return Ok(());
    };
    for (k, a) in fields {
        if let Some(attr) = k.strip_prefix('@') {
            if !xml_name(attr) {
                return Err(format!("{attr:?} is not an XML name"));
            }
            let text = match a {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            chars_ok(&text)?;
            out.push(' ');
            out.push_str(attr);
            out.push_str("=\"");
            // Tabs and line ends as references: a reader would make them spaces.
            let escaped = quick_xml::escape::escape(text.as_str());
            out.push_str(&escaped.replace('\t', "&#9;").replace('\n', "&#10;").replace('\r', "&#13;"));
            out.push('"');
        }
    }
    out.push('>');
    for (k, child) in fields {
        if k.starts_with('@') {
            continue;
        }
        if k == "#text" {
            let text = match child {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            chars_ok(&text)?;
            out.push_str(&quick_xml::escape::escape(text.as_str()));
        } else {
            element(out, k, child, depth + 1)?;
        }
    }
    close_tag(out, name);
    Ok(())
}

fn close_tag(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xml_reads_as_the_documented_mapping() {
        let xml = br#"<?xml version="1.0"?>
            <order id="7" note="a &amp; b">
              <item>one</item>
              <item sku="x">two &lt;3 &#x41;</item>
              <empty/>
              <total>12.5</total>
              <![CDATA[raw <text>]]>
            </order>"#;
        assert_eq!(
            to_json(xml).unwrap(),
            json!({ "order": {
                "@id": "7", "@note": "a & b",
                "item": ["one", { "@sku": "x", "#text": "two <3 A" }],
                "empty": null,
                "total": "12.5",
                "#text": "raw <text>",
            }})
        );
    }

    #[test]
    fn hostile_or_broken_xml_is_refused() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        for bad in [
            &br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#[..],
            b"<x>&e;</x>",
            b"<a><b></a>",
            b"<a></a><b></b>",
            b"text",
            b"<a>",
            b"<a><@d/></a>",
            b"<a>\x00</a>",
            b"<a b=\"\x01\"/>",
            deep.as_bytes(),
        ] {
            assert!(to_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn json_writes_as_the_documented_mapping_and_reads_back() {
        let doc = json!({ "order": {
            "@id": "7",
            "item": ["one", { "@sku": "x", "#text": "two <3" }],
            "empty": null,
            "total": "12.5",
        }});
        let xml = to_xml(&doc, "response").unwrap();
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><response><order id="7"><item>one</item><item sku="x">two &lt;3</item><empty/><total>12.5</total></order></response>"#
        );
        assert_eq!(to_json(xml.as_bytes()).unwrap(), json!({ "response": doc }));
        // Numbers and booleans as text; names that are not XML names refused.
        assert_eq!(
            to_xml(&json!({ "n": 1, "b": true }), "r").unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><r><n>1</n><b>true</b></r>"#
        );
        assert!(to_xml(&json!({ "1st": 1 }), "r").is_err());
        assert!(to_xml(&json!({ "a b": 1 }), "r").is_err());
        assert!(to_xml(&json!({ "@x y": 1 }), "r").is_err());
        assert!(to_xml(&json!({ "a": "nul \u{0}" }), "r").is_err());
        // Line ends in an attribute survive the trip (a reader makes raw ones spaces).
        let doc = json!({ "a": { "@t": "one\ntwo\tthree" } });
        assert_eq!(to_json(to_xml(&doc, "r").unwrap().as_bytes()).unwrap(), json!({ "r": doc }));
    }

    #[test]
    fn accept_decides_by_weight() {
        let p = |v: &'static str| prefers_xml(&HeaderValue::from_static(v));
        assert!(p("application/xml"));
        assert!(p("text/xml, application/json;q=0.5"));
        assert!(!p("application/json, application/xml"));
        assert!(!p("application/json"));
        assert!(!p("*/*"));
        assert!(!p("application/xml;q=0.2, application/json;q=0.9"));
        assert!(!p("application/xml;Q=0.2, application/json;q=0.9"), "parameter names in any case");
    }
}
