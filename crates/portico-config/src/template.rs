//! Path templates: `/users/{id}`, `/files/{*rest}`; path regexes: `^/v(?<v>[12])/x$`.
//!
//! Templates are used both to match (`match.path`) and to build (`rewrite.path`). The syntax
//! is the one the router's radix tree (matchit) understands, checked here with precise
//! messages. Regexes (`match.regex`) are compiled here once for validation and for the
//! router, so both take the same decision.

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Literal text between slashes.
    Literal(String),
    /// `{name}`: exactly one segment.
    Param(String),
    /// `{*name}`: the rest of the path, which may contain slashes.
    CatchAll(String),
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
}

impl PathTemplate {
    /// Parses a template, with a user-facing message on error.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("{s:?} must start with '/'"));
        }
        if s.contains(['?', '#']) {
            return Err(format!("{s:?}: a path has no query or fragment"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = s[1..].split('/').collect();
        let mut seen = std::collections::HashSet::new();
        for (i, part) in parts.iter().enumerate() {
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (catch_all, name) = match inner.strip_prefix('*') {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!("{s:?}: parameter {{{inner}}} needs a name of letters, digits and '_'"));
                }
                if !seen.insert(name.to_owned()) {
                    return Err(format!("{s:?}: parameter {{{name}}} appears twice"));
                }
                if catch_all {
                    if i + 1 != parts.len() {
                        return Err(format!("{s:?}: {{*{name}}} captures the rest of the path and must be last"));
                    }
                    Segment::CatchAll(name.to_owned())
                } else {
                    Segment::Param(name.to_owned())
                }
            } else if part.contains(['{', '}']) {
                return Err(format!("{s:?}: a parameter must be a whole segment, like /users/{{id}}"));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(seg);
        }
        Ok(Self { raw: s.to_owned(), segments })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The segments after the leading `/`.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Names of the captured parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) | Segment::CatchAll(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// True when the template has no parameters.
    pub fn is_literal(&self) -> bool {
        self.params().next().is_none()
    }
}

/// A compiled `match.regex`: anchored at both ends, its named groups are path parameters.
#[derive(Clone, Debug)]
pub struct PathRegex {
    regex: regex::Regex,
}

impl PathRegex {
    /// Compiles `s`, with a user-facing message on error. `s` must be written with `^` and
    /// `$`; it is compiled as `^(?:s)$`, so a top-level `|` cannot unanchor it.
    pub fn parse(s: &str) -> Result<Self, String> {
        // First as written, so that the regex crate's message points into the user's text.
        let written = regex::Regex::new(s).map_err(|e| e.to_string())?;
        if !s.starts_with('^') || !ends_with_unescaped_dollar(s) {
            return Err(format!(
                "{s:?} must start with '^' and end with '$': a regex matches the whole path (for a prefix, end it with \".*$\")"
            ));
        }
        for name in written.capture_names().flatten() {
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{s:?}: capture name {name:?} is not a parameter name (letters, digits and '_')"));
            }
        }
        let regex = regex::Regex::new(&Self::anchored(s)).map_err(|e| e.to_string())?;
        Ok(Self { regex })
    }

    /// The pattern the router compiles for `s`: anchored at both ends.
    pub fn anchored(s: &str) -> String {
        format!("^(?:{s})$")
    }

    /// The compiled, anchored regex.
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }

    /// Names of the captured parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.regex.capture_names().flatten()
    }
}

/// Whether `s` ends with a `$` that is not escaped (`\$` is a literal dollar).
fn ends_with_unescaped_dollar(s: &str) -> bool {
    let Some(body) = s.strip_suffix('$') else { return false };
    body.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_params_and_catch_all() {
        let t = PathTemplate::parse("/users/{id}/files/{*rest}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["id", "rest"]);
        assert!(PathTemplate::parse("/health").unwrap().is_literal());
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in ["users", "/a/{*rest}/b", "/a/{}", "/a/x{id}", "/a/{id}/{id}", "/a?x=1", "/a/{i-d}"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn regexes_are_anchored_and_name_parameters() {
        let r = PathRegex::parse("^/v(?<version>[12])/users/(?<id>[0-9]+)$").unwrap();
        assert_eq!(r.params().collect::<Vec<_>>(), ["version", "id"]);
        let caps = r.regex().captures("/v2/users/42").unwrap();
        assert_eq!((&caps["version"], &caps["id"]), ("2", "42"));
        assert!(!r.regex().is_match("/v2/users/42/x"));
        // A top-level `|` does not unanchor it: the whole path must match one branch.
        let alt = PathRegex::parse("^/a|/b$").unwrap();
        assert!(alt.regex().is_match("/a") && alt.regex().is_match("/b"));
        assert!(!alt.regex().is_match("/a/x") && !alt.regex().is_match("/x/b"));
        assert!(PathRegex::parse(r"^/\d+/\w+$").unwrap().regex().is_match("/12/ab_c"));
        assert!(PathRegex::parse("(?i)^/api$").is_err(), "flags go after the ^: ^(?i)/api$");
        assert!(PathRegex::parse("^(?i)/api$").unwrap().regex().is_match("/API"));
    }

    #[test]
    fn rejects_bad_regexes() {
        for (bad, why) in [
            ("/users/[0-9]+$", "must start with '^'"),
            ("^/users/[0-9]+", "must start with '^' and end with '$'"),
            (r"^/price\$", "end with '$'"),
            ("^/(?<a.b>x)$", r#"capture name "a.b" is not a parameter name"#),
            ("^/(x$", "unclosed group"),
            ("^/(?<id>x)/(?<id>y)$", "duplicate capture group name"),
        ] {
            let e = PathRegex::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(PathRegex::parse(r"^/price\\$").is_ok(), "an escaped backslash, then the anchor");
    }
}
