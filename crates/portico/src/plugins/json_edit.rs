//! The JSON body changes of `request_body` and `response_body`: fields removed, renamed,
//! moved, set and added by dotted path, with templated values. Compiled once from the
//! config; applied to a parsed document.

use http::HeaderMap;
use portico_config::transform::{BodyTransform, body_path};
use serde_json::{Map, Value};

use super::hooks::{HookCtx, Template};

/// A dotted path, split (`items.0.id`: a segment of digits also indexes an array).
pub(crate) type Path = Box<[Box<str>]>;

/// A JSON value whose strings may be templates.
#[derive(Debug, Clone)]
enum Tmpl {
    /// Written as it is: no string in it has a placeholder.
    Plain(Value),
    /// A string with placeholders.
    Text(Template),
    Array(Vec<Tmpl>),
    Object(Vec<(String, Tmpl)>),
}

impl Tmpl {
    fn new(v: &Value) -> Self {
        if !has_placeholder(v) {
            return Tmpl::Plain(v.clone());
        }
        match v {
            Value::String(s) => Tmpl::Text(Template::new(s)),
            Value::Array(a) => Tmpl::Array(a.iter().map(Tmpl::new).collect()),
            Value::Object(o) => Tmpl::Object(o.iter().map(|(k, v)| (k.clone(), Tmpl::new(v))).collect()),
            other => Tmpl::Plain(other.clone()),
        }
    }

    /// The value for one message; `None` when a placeholder has no value here.
    fn render(&self, ctx: &HookCtx<'_>, headers: Option<&HeaderMap>, query: Option<&str>) -> Option<Value> {
        Some(match self {
            Tmpl::Plain(v) => v.clone(),
            Tmpl::Text(t) => Value::String(t.render(ctx, headers, query)?),
            Tmpl::Array(a) => Value::Array(a.iter().map(|t| t.render(ctx, headers, query)).collect::<Option<_>>()?),
            Tmpl::Object(o) => Value::Object(
                o.iter().map(|(k, t)| Some((k.clone(), t.render(ctx, headers, query)?))).collect::<Option<_>>()?,
            ),
        })
    }
}

/// Whether a string anywhere in `v` has a `{` or `}` (a placeholder, or an escaped brace:
/// either way the template renders it).
fn has_placeholder(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(['{', '}']),
        Value::Array(a) => a.iter().any(has_placeholder),
        Value::Object(o) => o.values().any(has_placeholder),
        _ => false,
    }
}

pub(crate) fn path(p: &str) -> Path {
    // Validation refused paths that do not split; such a one is taken as one key.
    body_path(p).map_or_else(|_| Box::from([Box::from(p)]), |s| s.into_iter().map(Box::from).collect())
}

/// The compiled changes.
#[derive(Debug, Clone)]
pub struct JsonEdit {
    /// The largest body read to be changed.
    pub max_size: u64,
    remove: Vec<Path>,
    rename: Vec<(Path, String)>,
    moves: Vec<(Path, Path)>,
    set: Vec<(Path, Tmpl)>,
    add: Vec<(Path, Tmpl)>,
    jq: Option<std::sync::Arc<portico_config::jq::Jq>>,
}

/// What the request carries for the templates (`None` in the response phase).
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// The request's headers.
    pub headers: Option<&'a HeaderMap>,
    /// The request's query.
    pub query: Option<&'a str>,
}

impl JsonEdit {
    /// Compiles a validated config.
    pub fn new(c: &BodyTransform) -> Self {
        Self {
            max_size: c.max_size.get(),
            remove: c.remove.iter().map(|p| path(p)).collect(),
            rename: c.rename.iter().map(|(p, to)| (path(p), to.clone())).collect(),
            moves: c.move_to.iter().map(|(p, to)| (path(p), path(to))).collect(),
            set: c.set.iter().map(|(p, v)| (path(p), Tmpl::new(v))).collect(),
            add: c.add.iter().map(|(p, v)| (path(p), Tmpl::new(v))).collect(),
            // Validation compiled it already.
            jq: c.jq.as_deref().and_then(|code| portico_config::jq::Jq::new(code).ok()).map(std::sync::Arc::new),
        }
    }

    /// Applies the changes in their order: remove, rename, move, set, add, then the jq
    /// expression. A change whose path does not lead anywhere (a missing parent, a parent
    /// that is not an object or an array) or whose template has no value is skipped; the jq
    /// expression failing on this document is an error.
    pub fn apply(&self, doc: &mut Value, ctx: &HookCtx<'_>, req: Request<'_>) -> Result<(), String> {
        for p in &self.remove {
            take(doc, p);
        }
        for (p, to) in &self.rename {
            rename(doc, p, to);
        }
        for (from, to) in &self.moves {
            if let Some(v) = take(doc, from) {
                put(doc, to, v, true);
            }
        }
        for (p, t) in &self.set {
            if let Some(v) = t.render(ctx, req.headers, req.query) {
                put(doc, p, v, true);
            }
        }
        for (p, t) in &self.add {
            if get(doc, p).is_none()
                && let Some(v) = t.render(ctx, req.headers, req.query)
            {
                put(doc, p, v, false);
            }
        }
        if let Some(jq) = &self.jq {
            *doc = jq.run(doc)?;
        }
        Ok(())
    }
}

/// The value at `path`.
pub(crate) fn get<'v>(doc: &'v Value, path: &[Box<str>]) -> Option<&'v Value> {
    get_by(doc, path.iter().map(|s| &**s))
}

/// The value at the path these segments make (a segment of digits also indexes an array).
pub(crate) fn get_by<'v, 's>(doc: &'v Value, segments: impl IntoIterator<Item = &'s str>) -> Option<&'v Value> {
    segments.into_iter().try_fold(doc, |v, seg| match v {
        Value::Object(o) => o.get(seg),
        Value::Array(a) => a.get(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

/// The value at `path`, to change.
fn get_mut<'v>(doc: &'v mut Value, path: &[Box<str>]) -> Option<&'v mut Value> {
    path.iter().try_fold(doc, |v, seg| match v {
        Value::Object(o) => o.get_mut(&**seg),
        Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Takes the value at `path` out of the document (an array element is removed, the
/// elements after it move up).
pub(crate) fn take(doc: &mut Value, path: &[Box<str>]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    match get_mut(doc, parent)? {
        // `shift_remove` keeps the other keys in their order.
        Value::Object(o) => o.shift_remove(&**last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok().filter(|&i| i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Renames the key at `path` to `to`, keeping its place among its siblings; a sibling
/// already named `to` is replaced.
pub(crate) fn rename(doc: &mut Value, path: &[Box<str>], to: &str) {
    let Some((last, parent)) = path.split_last() else { return };
    let Some(Value::Object(o)) = get_mut(doc, parent) else { return };
    if !o.contains_key(&**last) || **last == *to {
        return;
    }
    let old = std::mem::take(o);
    let mut renamed = Map::with_capacity(old.len());
    for (k, v) in old {
        if k == *to {
            continue;
        }
        let k = if k == **last { to.to_owned() } else { k };
        renamed.insert(k, v);
    }
    *o = renamed;
}

/// Puts `v` at `path`, creating the objects on the way when they are missing; with
/// `replace` false, only where there is nothing yet. An array element is only replaced
/// (an index past the end is skipped).
pub(crate) fn put(doc: &mut Value, path: &[Box<str>], v: Value, replace: bool) {
    let Some((last, parent)) = path.split_last() else {
        if replace {
            *doc = v;
        }
        return;
    };
    let mut at = doc;
    for seg in parent {
        at = match at {
            Value::Object(o) => o.entry(&**seg).or_insert_with(|| Value::Object(Map::new())),
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match at {
        Value::Object(o) if replace || !o.contains_key(&**last) => {
            o.insert(last.to_string(), v);
        }
        Value::Array(a) if replace => {
            if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *slot = v;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn edit(yaml: &str) -> JsonEdit {
        JsonEdit::new(&serde_saphyr::from_str::<BodyTransform>(yaml).unwrap())
    }

    #[test]
    fn changes_apply_in_order_and_keep_the_documents_key_order() {
        let e = edit(
            "{ remove: [secret, items.1], rename: { user.fullName: name }, move: { user.id: id },
               set: { meta.source: gateway, items.0.n: 9 }, add: { user.name: kept, user.role: member } }",
        );
        let mut doc = json!({
            "secret": "s", "user": { "id": 7, "fullName": "Ada", "email": "a@x" },
            "items": [{ "n": 1 }, { "n": 2 }, { "n": 3 }]
        });
        let id = HeaderValue::from_static("r1");
        e.apply(&mut doc, &HookCtx::new(&id), Request::default()).unwrap();
        let want = json!({
            "user": { "name": "Ada", "email": "a@x", "role": "member" },
            "items": [{ "n": 9 }, { "n": 3 }],
            "id": 7,
            "meta": { "source": "gateway" }
        });
        assert_eq!(doc, want);
        // The order of keys as the upstream wrote them, renamed in place.
        assert_eq!(serde_json::to_string(&doc["user"]).unwrap(), r#"{"name":"Ada","email":"a@x","role":"member"}"#);
    }

    #[test]
    fn paths_that_lead_nowhere_are_skipped() {
        let e =
            edit("{ remove: [a.b.c, list.9], rename: { x.y: z }, move: { nope: there }, set: { s.t: 1, list.5: 2 } }");
        let mut doc = json!({ "a": 1, "list": [0], "s": "text" });
        let before = doc.clone();
        let id = HeaderValue::from_static("r1");
        e.apply(&mut doc, &HookCtx::new(&id), Request::default()).unwrap();
        assert_eq!(doc, before);
        let mut scalar = json!(5);
        e.apply(&mut scalar, &HookCtx::new(&id), Request::default()).unwrap();
        assert_eq!(scalar, json!(5));
    }

    #[test]
    fn templated_values_render_per_message_or_are_skipped() {
        let e =
            edit("{ set: { who: { by: '{consumer}', id: '{request_id}', q: '{query.page}' }, literal: '{{not}}' } }");
        let id = HeaderValue::from_static("req-9");
        let mut doc = json!({});
        e.apply(&mut doc, &HookCtx::new(&id), Request { headers: None, query: Some("page=3") }).unwrap();
        // No consumer: the change that names it is skipped; the others are made.
        assert_eq!(doc, json!({ "literal": "{not}" }));
        let e = edit("{ set: { who: { id: '{request_id}', q: '{query.page}' } } }");
        let mut doc = json!({});
        e.apply(&mut doc, &HookCtx::new(&id), Request { headers: None, query: Some("page=3") }).unwrap();
        assert_eq!(doc, json!({ "who": { "id": "req-9", "q": "3" } }));
    }
}
