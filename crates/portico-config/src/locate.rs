//! Maps config paths (`routes[2].match.path`) to YAML positions and back.
//!
//! The typed model carries no positions, so the file is parsed a second time into a small
//! tree of mapping keys and sequence items, each with the line and column where its value
//! starts. That costs a few microseconds per kilobyte and only runs when loading config.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A line and column, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

#[derive(Debug, Default)]
enum Node {
    Map(Vec<(Spanned<KeyString>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    #[default]
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyString>>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key, kept as text.
#[derive(Debug)]
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.to_owned()))
            }
        }
        // As text, the way the config's maps read their keys: `y` is "y", not true.
        d.deserialize_str(V)
    }
}

/// Positions of every value in a YAML document, by config path.
#[derive(Debug, Default)]
pub struct Locator {
    entries: Vec<(String, Position)>,
    /// Where the key of each mapping entry starts, by the entry's path.
    keys: Vec<(String, Position)>,
}

impl Locator {
    /// Indexes `src`. A document that does not parse gives an empty locator.
    pub fn new(src: &str) -> Self {
        let mut locator = Self::default();
        if let Ok(root) = serde_saphyr::from_str::<Spanned<Node>>(src) {
            walk(&root, String::new(), &mut locator);
        }
        locator
    }

    /// Where the key of the mapping entry at `path` starts (`upstrem` in `upstrem: x`), for
    /// problems with the key itself, such as an unknown field.
    pub fn find_key(&self, path: &str) -> Option<Position> {
        self.keys.iter().find(|(k, _)| k == path).map(|(_, pos)| *pos)
    }

    /// Where the value at `path` starts; falls back to the nearest ancestor that exists.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some((_, pos)) = self.entries.iter().find(|(k, _)| k == p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The path of the value the parser's error at `pos` is about. An error about a key (an
    /// unknown field, a second key in a one-key enum mapping) is reported at the key, so its
    /// value is the first one at or after `pos` on that line; other errors are reported at
    /// the value itself or inside it.
    pub fn path_for_error(&self, pos: Position, message: &str) -> Option<&str> {
        if is_about_a_key(message) {
            let same_line = self
                .entries
                .iter()
                .filter(|(_, p)| p.line == pos.line && p.column >= pos.column)
                .min_by_key(|(_, p)| p.column);
            if let Some((k, _)) = same_line {
                return Some(k);
            }
        }
        self.path_at(pos)
    }

    /// The path of the value that starts closest before `pos` (for errors that carry a
    /// position but no path).
    pub fn path_at(&self, pos: Position) -> Option<&str> {
        self.entries.iter().filter(|(_, p)| *p <= pos).max_by_key(|(k, p)| (*p, k.len())).map(|(k, _)| k.as_str())
    }
}

/// Whether the parser's `message` is about a mapping key rather than a value: an unknown
/// field, or a second key in a one-key enum mapping (`{ cors: {}, jwt: {} }`).
pub(crate) fn is_about_a_key(message: &str) -> bool {
    ["unknown field", "expected end of mapping after enum variant"].iter().any(|m| message.contains(m))
}

fn position(loc: serde_saphyr::Location) -> Position {
    Position { line: loc.line(), column: loc.column() }
}

fn walk(node: &Spanned<Node>, path: String, out: &mut Locator) {
    if !path.is_empty() {
        out.entries.push((path.clone(), position(node.referenced)));
    }
    match &node.value {
        Node::Map(entries) => {
            for (key, child) in entries {
                let k = &key.value.0;
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                out.keys.push((p.clone(), position(key.referenced)));
                walk(child, p, out);
            }
        }
        Node::Seq(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, format!("{path}[{i}]"), out);
            }
        }
        Node::Scalar => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "version: 1\nroutes:\n  - name: a\n    match:\n      path: /x\n  - name: b\n    match: { prefix: /y }\n";

    #[test]
    fn finds_nested_paths() {
        let l = Locator::new(DOC);
        assert_eq!(l.find("routes[0].match.path"), Some(Position { line: 5, column: 13 }));
        assert_eq!(l.find("routes[1].name").map(|p| p.line), Some(6));
        assert_eq!(l.find("routes[1].match.prefix").map(|p| p.line), Some(7));
        // A missing leaf falls back to its parent.
        assert_eq!(l.find("routes[1].match.path").map(|p| p.line), Some(7));
    }

    #[test]
    fn an_unknown_key_maps_to_its_own_path() {
        let l = Locator::new("a:\n  known: 1\n  unknwn: 2\n");
        assert_eq!(l.path_for_error(Position { line: 3, column: 3 }, "unknown field `unknwn`"), Some("a.unknwn"));
    }

    #[test]
    fn finds_keys_as_well_as_values() {
        let l = Locator::new(DOC);
        assert_eq!(l.find_key("routes[0].match.path"), Some(Position { line: 5, column: 7 }));
        assert_eq!(l.find_key("routes[1].match.prefix"), Some(Position { line: 7, column: 14 }));
        assert_eq!(l.find_key("routes[1]"), None, "a sequence item has no key");
        let l = Locator::new("upstreams:\n  y: { targets: [] }\n  200: {}\n");
        assert_eq!(l.find("upstreams.y.targets").map(|p| p.line), Some(2), "a key is text, not a YAML 1.1 boolean");
        assert_eq!(l.find("upstreams.200").map(|p| p.line), Some(3));
    }

    #[test]
    fn maps_a_position_back_to_a_path() {
        let l = Locator::new(DOC);
        assert_eq!(l.path_at(Position { line: 5, column: 14 }), Some("routes[0].match.path"));
    }
}
