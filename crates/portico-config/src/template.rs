//! Path templates: `/users/{id}`, `/files/{*rest}`.
//!
//! Used both to match (`match.path`) and to build (`rewrite.path`). The syntax is the one
//! the router's radix tree (matchit) understands, checked here with precise messages.

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
}
