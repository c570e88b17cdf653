//! `validate`: requests checked against an API contract (an OpenAPI 3.0 or 3.1 document,
//! or JSON Schemas given inline or in files) before they go upstream.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::ByteSize;

/// The `validate` plugin.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// An OpenAPI 3.0 or 3.1 document (YAML or JSON file). The request's operation is
    /// found by its path and method; its parameters and JSON body are checked against it.
    #[serde(default)]
    pub openapi: Option<String>,
    /// Stripped from the request's path before it is looked up among the document's
    /// paths (the document says `/orders`, clients call `/api/orders`).
    #[serde(default)]
    pub base_path: Option<String>,
    /// A request that matches no operation of the document: `reject` answers 404 (no
    /// path) or 405 (a path, not that method); `pass` sends it on unchecked.
    #[serde(default)]
    pub unknown_operations: UnknownOperations,
    /// Without `openapi`: JSON Schemas for the parts of every request of the route.
    #[serde(default)]
    pub schemas: Option<Schemas>,
    /// The largest body read to be checked; a larger one is refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// `log`: answers of the upstream with a JSON body are checked against the document's
    /// response schemas too; a mismatch is logged and counted, the answer is not changed.
    #[serde(default)]
    pub responses: ResponseCheck,
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}

/// JSON Schemas for the parts of a request, each inline or in a file (`{file: path}`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schemas {
    /// The JSON body (required: a request without one is refused).
    #[serde(default)]
    pub body: Option<SchemaSource>,
    /// The query, as an object of its parameters (a parameter whose schema is an array
    /// takes every value; others the first). Values become numbers and booleans where the
    /// schema's `properties` say so.
    #[serde(default)]
    pub query: Option<SchemaSource>,
    /// The headers, as an object of lower-case names to values.
    #[serde(default)]
    pub headers: Option<SchemaSource>,
    /// The parameters the route's path captures, as an object.
    #[serde(default)]
    pub path: Option<SchemaSource>,
}

/// A schema written in the config, or the file it is in.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum SchemaSource {
    /// `{file: schemas/order.json}`: a JSON or YAML file.
    File {
        /// The file's path.
        file: String,
    },
    /// The schema itself (JSON Schema 2020-12 unless its `$schema` says otherwise).
    Inline(serde_json::Value),
}

/// What happens to a request that matches no operation.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownOperations {
    /// 404 for an unknown path, 405 (with `Allow`) for a known path and another method.
    #[default]
    Reject,
    /// Sent on, unchecked.
    Pass,
}

/// Whether answers are checked.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseCheck {
    /// Not checked.
    #[default]
    Off,
    /// Checked; mismatches are logged and counted, never answered.
    Log,
}

/// Checks a `validate` plugin (at `path`): one source of contract, a sane base path.
pub fn check(path: &str, v: &Validate, err: &mut impl FnMut(String, String)) {
    match (&v.openapi, &v.schemas) {
        (Some(_), Some(_)) => err(path.to_owned(), "give either openapi or schemas, not both".into()),
        (None, None) => err(path.to_owned(), "give openapi (a document) or schemas".into()),
        (Some(f), None) if f.trim().is_empty() => err(format!("{path}.openapi"), "must be a file path".into()),
        (None, Some(s)) => {
            if s.body.is_none() && s.query.is_none() && s.headers.is_none() && s.path.is_none() {
                err(format!("{path}.schemas"), "give at least one of body, query, headers, path".into());
            }
            if v.base_path.is_some() {
                err(format!("{path}.base_path"), "only with openapi".into());
            }
            if v.responses == ResponseCheck::Log {
                err(format!("{path}.responses"), "only with openapi (schemas has no response schemas)".into());
            }
        }
        _ => {}
    }
    if let Some(b) = &v.base_path
        && (!b.starts_with('/') || b.len() < 2 || b.ends_with('/') || b.contains(['?', '#', '{']))
    {
        err(format!("{path}.base_path"), format!("{b:?} must be a path such as /api (a leading /, no trailing /)"));
    }
    if v.max_body.get() == 0 {
        err(format!("{path}.max_body"), "must be more than 0".into());
    }
}

/// Reads a contract document or schema file (YAML or JSON: YAML reads both) into JSON.
pub fn read_document(path: &str) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_saphyr::from_str::<serde_json::Value>(&text).map_err(|e| format!("{path} is not YAML or JSON: {e}"))
}
