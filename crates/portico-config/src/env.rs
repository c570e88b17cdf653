//! `${VAR}` interpolation, so secrets stay out of the file.
//!
//! `${VAR}` is replaced by the variable's value; `${VAR:-default}` falls back to `default`
//! when the variable is unset or empty; `$${` writes a literal `${`. A missing variable
//! is an error that names it and its place in the file. Comments are left alone, so a
//! commented-out line never needs its variables set.

/// A reference to an unset environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingVar {
    /// The variable's name.
    pub name: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column of the `$`.
    pub column: usize,
}

/// Replaces `${VAR}` references in `src` using `lookup`. Returns every missing variable.
pub fn interpolate(src: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<MissingVar>> {
    if !src.contains('$') {
        return Ok(src.to_owned());
    }
    let mut out = String::with_capacity(src.len());
    let mut missing = Vec::new();
    for (line_no, line) in src.split_inclusive('\n').enumerate() {
        let comment_at = comment_start(line);
        let (body, comment) = line.split_at(comment_at);
        let mut rest = body;
        let mut col = 1;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            col += rest[..pos].chars().count();
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
                col += 3;
                continue;
            }
            if let Some(inner) = after.strip_prefix("${")
                && let Some(end) = inner.find('}')
            {
                let expr = &inner[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if valid {
                    match lookup(name).filter(|v| !v.is_empty() || default.is_none()) {
                        Some(v) => out.push_str(&v),
                        None => match default {
                            Some(d) => out.push_str(d),
                            None => missing.push(MissingVar { name: name.to_owned(), line: line_no + 1, column: col }),
                        },
                    }
                    let consumed = 2 + end + 1;
                    col += after[..consumed].chars().count();
                    rest = &after[consumed..];
                    continue;
                }
            }
            out.push('$');
            rest = &after[1..];
            col += 1;
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if missing.is_empty() { Ok(out) } else { Err(missing) }
}

/// Byte offset where a YAML comment starts on this line (or the line's length): a `#`
/// at the start or after whitespace, outside single or double quotes.
fn comment_start(line: &str) -> usize {
    let bytes = line.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' && q == b'"' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'"' || b == b'\'' {
                    quote = Some(b);
                } else if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
                    return i;
                }
            }
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_known_variables_and_defaults() {
        let out = interpolate("a: ${TOKEN}\nb: ${NOPE:-x}\nc: ${EMPTY:-y}\nd: $${TOKEN}\n", env).unwrap();
        assert_eq!(out, "a: s3cret\nb: x\nc: y\nd: ${TOKEN}\n");
    }

    #[test]
    fn reports_every_missing_variable_with_its_place() {
        let err = interpolate("a: 1\nb: ${ONE}\nc: x ${TWO}\n", env).unwrap_err();
        assert_eq!(
            err,
            vec![
                MissingVar { name: "ONE".into(), line: 2, column: 4 },
                MissingVar { name: "TWO".into(), line: 3, column: 6 },
            ]
        );
    }

    #[test]
    fn leaves_comments_and_lone_dollars_alone() {
        let out = interpolate("# ${GONE}\na: \"x#${TOKEN}\" # ${GONE}\nb: $5 ${not valid}\n", env).unwrap();
        assert_eq!(out, "# ${GONE}\na: \"x#s3cret\" # ${GONE}\nb: $5 ${not valid}\n");
    }
}
