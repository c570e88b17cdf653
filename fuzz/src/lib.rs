//! Reference implementations the differential fuzz targets compare Portico's codec with.
//! Written from the RFC grammar, as plainly as possible, and sharing no code with the
//! gateway: a disagreement is a question about one of the two, answered in
//! docs/fuzzing.md.

/// `OWS = *( SP / HTAB )` (RFC 9110 section 5.6.3).
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Why [`content_length`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthError {
    /// An element is not `1*DIGIT` within `u64`.
    Invalid,
    /// Two elements differ.
    Conflicting,
}

/// One `Content-Length` element: `1*DIGIT` (RFC 9110 section 8.6), as a `u64`.
pub fn one_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u128 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u128::from(b - b'0');
        if n > u128::from(u64::MAX) {
            return None;
        }
    }
    u64::try_from(n).ok()
}

/// The length several `Content-Length` field values give (RFC 9110 section 8.6, RFC 9112
/// section 6.3 item 5): every comma-separated element, OWS trimmed, must be digits and all
/// must be equal. Elements are read in order, and the first problem met is reported.
pub fn content_length(values: &[&[u8]]) -> Result<Option<u64>, LengthError> {
    let mut found = None;
    for v in values {
        for part in v.split(|&b| b == b',') {
            let n = one_length(trim_ows(part)).ok_or(LengthError::Invalid)?;
            match found {
                Some(m) if m != n => return Err(LengthError::Conflicting),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// `tchar` (RFC 9110 section 5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the reference chunked decoder made of a whole input.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunked {
    /// A complete body: its data, and where it ended in the input.
    Complete(Vec<u8>, usize),
    /// Valid so far; the input ended before the body did.
    Incomplete,
    /// Not the chunked coding: the offset where it went wrong.
    Invalid(usize),
}

/// A cursor over the input; `None` from a read means the input ended.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cur<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }
}

/// One step's result: `Err(None)` = incomplete, `Err(Some(at))` = invalid at `at`.
type Step<T> = Result<T, Option<usize>>;

fn expect(c: &mut Cur<'_>, want: u8) -> Step<()> {
    match c.peek() {
        None => Err(None),
        Some(b) if b == want => {
            c.at += 1;
            Ok(())
        }
        Some(_) => Err(Some(c.at)),
    }
}

fn crlf(c: &mut Cur<'_>) -> Step<()> {
    expect(c, b'\r')?;
    expect(c, b'\n')
}

fn skip_ws(c: &mut Cur<'_>) {
    while matches!(c.peek(), Some(b' ' | b'\t')) {
        c.at += 1;
    }
}

/// `[ chunk-ext ] CRLF` after a chunk size: optional whitespace, then either the CRLF or
/// `;` and extensions of visible bytes, spaces and tabs up to it. The extensions'
/// grammar (RFC 9112 section 7.1.1) is not checked, as the codec does not check it: it
/// ignores them all (a recipient must ignore unknown extensions) and ends the line at the
/// CRLF alone, refusing control bytes, so a quoted string cannot hide a line end.
fn chunk_ext_crlf(c: &mut Cur<'_>) -> Step<()> {
    skip_ws(c);
    match c.peek() {
        None => return Err(None),
        Some(b'\r') => return crlf(c),
        Some(b';') => c.at += 1,
        Some(_) => return Err(Some(c.at)),
    }
    loop {
        match c.peek() {
            None => return Err(None),
            Some(b'\r') => return crlf(c),
            Some(b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => c.at += 1,
            Some(_) => return Err(Some(c.at)),
        }
    }
}

/// A trailer line and its CRLF: any bytes but CR and LF. The field syntax (RFC 9110
/// section 5) is not checked, as the codec does not check it: the gateway drops trailer
/// fields (RFC 9112 section 7.1.2 lets a recipient discard them), so only where each line
/// ends can make two parsers disagree.
fn trailer_line_crlf(c: &mut Cur<'_>) -> Step<()> {
    loop {
        match c.peek() {
            None => return Err(None),
            Some(b'\r') => return crlf(c),
            Some(b'\n') => return Err(Some(c.at)),
            Some(_) => c.at += 1,
        }
    }
}

/// The chunked transfer coding (RFC 9112 section 7.1): `1*HEXDIG` sizes, CRLF line ends
/// only (no bare CR or LF anywhere), the CRLF after each chunk's data, the final CRLF. No
/// limits: those are the codec's business.
pub fn chunked(input: &[u8]) -> Chunked {
    let mut c = Cur { b: input, at: 0 };
    let mut data = Vec::new();
    let run = |c: &mut Cur<'_>, data: &mut Vec<u8>| -> Step<()> {
        loop {
            let start = c.at;
            let mut size: u128 = 0;
            while let Some(d) = c.peek().and_then(|b| (b as char).to_digit(16)) {
                size = size.saturating_mul(16).saturating_add(u128::from(d));
                c.at += 1;
            }
            if c.peek().is_none() {
                return Err(None);
            }
            if c.at == start {
                return Err(Some(c.at));
            }
            chunk_ext_crlf(c)?;
            if size == 0 {
                break;
            }
            let left = c.b.len() - c.at;
            if (left as u128) < size {
                return Err(None);
            }
            let n = size as usize;
            data.extend_from_slice(&c.b[c.at..c.at + n]);
            c.at += n;
            crlf(c)?;
        }
        // trailer-section CRLF
        loop {
            match c.peek() {
                None => return Err(None),
                Some(b'\r') => return crlf(c),
                Some(_) => trailer_line_crlf(c)?,
            }
        }
    };
    match run(&mut c, &mut data) {
        Ok(()) => Chunked::Complete(data, c.at),
        Err(None) => Chunked::Incomplete,
        Err(Some(at)) => Chunked::Invalid(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_decoder_reads_the_rfc_examples() {
        let body = b"5;a=b;c=\"d\\\"e\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        assert_eq!(chunked(body), Chunked::Complete(b"hello world".to_vec(), body.len() - 4));
        assert_eq!(chunked(b"5\r\nhel"), Chunked::Incomplete);
        assert!(matches!(chunked(b"5\nhello\r\n0\r\n\r\n"), Chunked::Invalid(1)));
        assert!(matches!(chunked(b"0\r\nx\n\r\n"), Chunked::Invalid(_)));
        assert_eq!(content_length(&[b"5, 5", b"5"]), Ok(Some(5)));
        assert_eq!(content_length(&[b"+5"]), Err(LengthError::Invalid));
    }
}
