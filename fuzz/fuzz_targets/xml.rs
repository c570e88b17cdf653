//! The `xml` plugin's reader over any bytes (an XML request body is the client's): it
//! never panics, refuses what it cannot read with an error, and what it reads writes back
//! as XML that reads as the same document (the mapping of docs/plugins.md#xml holds both
//! ways).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::plugins::xml::{to_json, to_xml};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = to_json(data) else { return };
    let serde_json::Value::Object(root) = &doc else { panic!("a document reads as an object: {doc}") };
    assert_eq!(root.len(), 1, "one root element: {doc}");
    let Some(inner) = root.values().next() else { return };
    // Names XML allows that the writer refuses (`a:b`, with a colon) are an error there.
    let Ok(xml) = to_xml(inner, "root") else { return };
    let again = to_json(xml.as_bytes()).unwrap_or_else(|e| panic!("{xml:?} was written and does not read: {e}"));
    assert_eq!(again["root"], *inner, "{xml:?}");
});
