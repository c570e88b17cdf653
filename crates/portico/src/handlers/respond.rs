//! The `respond` handler: a fixed response from the config (maintenance pages, mocks, the
//! 410 of a retired API), answered by the gateway without an upstream. Built once at load;
//! each answer shares the body's bytes and copies the header map.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::Body;

/// A compiled `respond`.
#[derive(Debug)]
pub struct Respond {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Respond {
    /// Compiles what validation accepted (headers that do not parse are left out).
    pub fn new(c: &portico_config::Respond) -> Self {
        let mut headers = HeaderMap::new();
        for (n, v) in &c.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
                headers.append(n, v);
            }
        }
        Self {
            status: StatusCode::from_u16(c.status).unwrap_or(StatusCode::OK),
            headers,
            body: Bytes::from(c.body.clone()),
        }
    }

    /// The answer to one request.
    pub fn response(&self) -> Response<Body> {
        let body = if self.body.is_empty() { Body::Empty } else { Body::Full(Some(self.body.clone())) };
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        if self.body.is_empty() {
            res.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_configured_one() {
        let c: portico_config::Respond = serde_saphyr::from_str(
            "status: 410\nheaders: { content-type: application/json, sunset: 'Sat, 01 Jan 2028 00:00:00 GMT' }\nbody: '{\"error\":\"gone\"}'\n",
        )
        .unwrap();
        let r = Respond::new(&c);
        for _ in 0..2 {
            let res = r.response();
            assert_eq!(res.status(), 410);
            assert_eq!(res.headers()["content-type"], "application/json");
            assert_eq!(res.headers()["sunset"], "Sat, 01 Jan 2028 00:00:00 GMT");
            let Body::Full(Some(b)) = res.body() else { panic!("a full body") };
            assert_eq!(&b[..], br#"{"error":"gone"}"#);
        }
        let empty = Respond::new(&serde_saphyr::from_str("status: 204\n").unwrap()).response();
        assert!(matches!(empty.body(), Body::Empty));
    }
}
