//! What the gateway itself must know of gRPC (over HTTP/2) to proxy it: which requests are
//! gRPC, the `grpc-timeout` deadline (read, honoured, and sent on with the time left), and
//! the gateway's own errors answered as gRPC statuses in a trailers-only response rather
//! than as JSON (gRPC over HTTP/2, "Responses": `:status 200`, `content-type`,
//! `grpc-status`, `grpc-message`, no body).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version, header};

use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};

/// `grpc-timeout`.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-status`.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request is gRPC: HTTP/2 with `content-type: application/grpc` (or
/// `application/grpc+proto`, `+json`, ...). gRPC-Web (`application/grpc-web`) is not.
#[inline]
pub fn is_grpc(version: Version, headers: &HeaderMap) -> bool {
    if version != Version::HTTP_2 {
        return false;
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return false };
    let b = ct.as_bytes();
    let base = b"application/grpc";
    b.len() >= base.len()
        && b[..base.len()].eq_ignore_ascii_case(base)
        && matches!(b.get(base.len()), None | Some(b'+' | b';'))
}

/// The deadline a `grpc-timeout` value asks for: 1 to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`); `None` when it is not one.
pub fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    let (digits, unit) = b.split_at(b.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A deadline as a `grpc-timeout` value: the finest unit whose count fits in 8 digits.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let (n, unit) = if d.as_micros() <= MAX {
        (d.as_micros(), 'u')
    } else if d.as_millis() <= MAX {
        (d.as_millis(), 'm')
    } else if u128::from(d.as_secs()) <= MAX {
        (u128::from(d.as_secs()), 'S')
    } else {
        ((u128::from(d.as_secs()) / 60).min(MAX), 'M')
    };
    HeaderValue::try_from(format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0m"))
}

/// Whether an upstream's answer says the upstream failed: a 5xx, or for a gRPC call a
/// trailers-only answer whose status is the service's failure (UNKNOWN, DEADLINE_EXCEEDED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS). Statuses about the call itself (INVALID_ARGUMENT,
/// NOT_FOUND, UNIMPLEMENTED, PERMISSION_DENIED, ...) are the caller's, and never count
/// against the upstream; nor does DEADLINE_EXCEEDED when the client's own deadline was the
/// one in force (`client_deadline`). A status in trailers after messages is not seen here.
#[inline]
pub fn upstream_failed<B>(res: &Response<B>, grpc_call: bool, client_deadline: bool) -> bool {
    if res.status().is_server_error() {
        return true;
    }
    grpc_call
        && res.headers().get(&GRPC_STATUS).is_some_and(|v| match v.as_bytes() {
            b"4" => !client_deadline,
            b => matches!(b, b"2" | b"13" | b"14" | b"15"),
        })
}

/// Whether an upstream's answer is a trailers-only gRPC answer (no message: the service did
/// not start on the call) with one of `statuses` (by name).
pub fn retryable<B: http_body::Body>(res: &Response<B>, statuses: &[String]) -> bool {
    let Some(code) =
        res.headers().get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
    else {
        return false;
    };
    let Some(name) = portico_config::GRPC_STATUSES.get(code) else { return false };
    res.body().is_end_stream() && statuses.iter().any(|s| s == name)
}

/// One gRPC message: the 5-byte prefix (not compressed, the length) and `payload`.
pub fn message(payload: &[u8]) -> bytes::Bytes {
    let mut b = Vec::with_capacity(5 + payload.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    b.extend_from_slice(payload);
    b.into()
}

/// A `grpc.health.v1.HealthCheckRequest` for `service`, encoded: field 1, a string.
///
/// Written by hand rather than with a protobuf crate: one field out and one in are the
/// whole of the health protocol, and the gateway has no other use for protobuf yet.
pub fn health_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + service.len());
    if !service.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of the `grpc.health.v1.HealthCheckResponse` in a call's body
/// (one message, with its prefix): `1` is `SERVING`. `None` when the body is not one
/// well-formed message (a compressed message included).
pub fn health_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let mut msg = rest.get(4..)?;
    if flag != 0 || msg.len() != len {
        return None;
    }
    // proto3 leaves out a field at its default: no field 1 is status 0 (UNKNOWN).
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 2) => {
                let n = usize::try_from(varint(&mut msg)?).ok()?;
                msg = msg.get(n..)?;
            }
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

/// The gRPC status code (and its name) of a gateway error.
pub fn status_of(e: &GatewayError) -> (u8, &'static str) {
    match e.kind {
        ErrorKind::ClientAborted => (1, "CANCELLED"),
        ErrorKind::BadRequest(_) | ErrorKind::ContractViolation(_) | ErrorKind::UnsupportedMediaType => {
            (3, "INVALID_ARGUMENT")
        }
        ErrorKind::RequestTimeout
        | ErrorKind::ClientDeadline
        | ErrorKind::ConnectTimeout(_)
        | ErrorKind::UpstreamTimeout(_) => (4, "DEADLINE_EXCEEDED"),
        ErrorKind::Forbidden(_) => (7, "PERMISSION_DENIED"),
        ErrorKind::RateLimited { .. }
        | ErrorKind::ConcurrencyLimited(_)
        | ErrorKind::PayloadTooLarge
        | ErrorKind::HeadersTooLarge
        | ErrorKind::UriTooLong => (8, "RESOURCE_EXHAUSTED"),
        ErrorKind::NotFound | ErrorKind::MethodNotAllowed(_) | ErrorKind::UnknownOperation | ErrorKind::Retired(_) => {
            (12, "UNIMPLEMENTED")
        }
        ErrorKind::ConnectFailed
        | ErrorKind::BadResponse
        | ErrorKind::NoTarget
        | ErrorKind::UpstreamMaxInFlight
        | ErrorKind::RouteMaxInFlight
        | ErrorKind::CircuitOpen(_)
        | ErrorKind::KeysUnavailable
        | ErrorKind::RevocationUnavailable
        | ErrorKind::RateLimitUnavailable
        | ErrorKind::BrokerUnavailable
        | ErrorKind::NotCached => (14, "UNAVAILABLE"),
        ErrorKind::Unauthorized(..) => (16, "UNAUTHENTICATED"),
    }
}

/// A gateway error as a gRPC answer: `200`, `content-type: application/grpc`, the status and
/// its message (percent-encoded as the protocol asks), the request ID; no body, so the
/// fields are the trailers (a trailers-only response).
pub fn error_response(e: &GatewayError, request_id: &HeaderValue, request_id_name: &HeaderName) -> Response<Body> {
    let (code, _) = status_of(e);
    let mut res = Response::new(Body::Empty);
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    let message: String = percent_encoding::utf8_percent_encode(e.public_message(), &MESSAGE).collect();
    if let Ok(v) = HeaderValue::try_from(message) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    if let Some(retry) = e.retry_after() {
        h.insert(header::RETRY_AFTER, retry);
    }
    h.insert(request_id_name.clone(), request_id.clone());
    res
}

/// What `grpc-message` percent-encodes: everything outside printable ASCII, and `%`.
const MESSAGE: percent_encoding::AsciiSet = percent_encoding::CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_by_version_and_content_type() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            m
        };
        assert!(is_grpc(Version::HTTP_2, &h("application/grpc")));
        assert!(is_grpc(Version::HTTP_2, &h("application/grpc+proto")));
        assert!(is_grpc(Version::HTTP_2, &h("Application/GRPC; charset=utf-8")));
        assert!(!is_grpc(Version::HTTP_2, &h("application/grpc-web")));
        assert!(!is_grpc(Version::HTTP_2, &h("application/json")));
        assert!(!is_grpc(Version::HTTP_11, &h("application/grpc")));
        assert!(!is_grpc(Version::HTTP_2, &HeaderMap::new()));
    }

    #[test]
    fn timeouts_are_read_and_written_in_every_unit() {
        let p = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("3S"), Some(Duration::from_secs(3)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(p("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S", " 1S", "1 S"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(encode_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(encode_timeout(Duration::from_secs(200)), "200000m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000)), "200000S");
        for d in [Duration::from_micros(7), Duration::from_millis(123_456), Duration::from_secs(9_000_000)] {
            let back = parse_timeout(&encode_timeout(d)).unwrap();
            assert!(back <= d && d - back < Duration::from_secs(60), "{d:?} -> {back:?}");
        }
    }

    #[test]
    fn health_messages_are_written_and_read() {
        assert_eq!(health_request(""), Vec::<u8>::new());
        assert_eq!(health_request("a.B"), b"\x0a\x03a.B");
        let m = |payload: &[u8]| message(payload).to_vec();
        assert_eq!(health_status(&m(b"\x08\x01")), Some(1));
        assert_eq!(health_status(&m(b"\x08\x02")), Some(2));
        assert_eq!(health_status(&m(b"")), Some(0), "proto3: the default left out");
        // Unknown fields of every wire type are passed over.
        assert_eq!(health_status(&m(b"\x10\x05\x1a\x02hi\x08\x01\x25abcd")), Some(1));
        assert_eq!(health_status(&m(b"\x08")), None, "cut short");
        assert_eq!(health_status(b"\x00\x00\x00\x00\x05\x08\x01"), None, "length does not match");
        assert_eq!(health_status(b"\x01\x00\x00\x00\x02\x08\x01"), None, "compressed");
        assert_eq!(health_status(b""), None);
        assert_eq!(health_status(&m(b"\x0b")), None, "a group: not in proto3");
    }

    #[test]
    fn errors_become_trailers_only_answers_with_their_status() {
        let id = HeaderValue::from_static("req-1");
        let name = HeaderName::from_static("x-request-id");
        let res = error_response(&GatewayError::new(ErrorKind::Forbidden("not allowed")), &id, &name);
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "7");
        assert_eq!(res.headers()["grpc-message"], "not allowed");
        assert_eq!(res.headers()["x-request-id"], "req-1");
        let res = error_response(&GatewayError::new(ErrorKind::CircuitOpen(Duration::from_secs(3))), &id, &name);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert!(res.headers().contains_key("retry-after"));
        assert_eq!(status_of(&GatewayError::new(ErrorKind::UpstreamTimeout(Duration::ZERO))).0, 4);
        assert_eq!(status_of(&GatewayError::new(ErrorKind::NotFound)).0, 12);
        assert_eq!(status_of(&GatewayError::new(ErrorKind::Unauthorized(crate::error::Challenge::Bearer, "x"))).0, 16);
    }
}
