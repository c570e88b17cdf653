//! The audit log: one JSON line for every refused authentication (401) or authorization
//! (403), written off the request path like the access log. It says who (client address,
//! user agent, the caller when known), what (route, method, path) and why (the reason),
//! and never the credential itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method};
use serde::Serialize;

use super::access_log::{JsonLine, LineLog};

/// The audit log. Its writer thread starts with the first refusal: a gateway that never
/// refuses anyone (no authentication configured) never pays for it (a thread costs about
/// 2 MiB of allocator memory).
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Option<Arc<Lazy>>,
}

#[derive(Debug)]
struct Lazy {
    output: String,
    queue_size: usize,
    dropped: prometheus_client::metrics::counter::Counter,
    log: std::sync::OnceLock<LineLog<AuditRecord>>,
}

impl AuditLog {
    /// An audit log that writes nothing.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// An audit log to `output` (`stdout`, `stderr` or a file, which is opened here to
    /// report a bad path at start); the writer starts on first use.
    pub fn new(
        output: &str,
        queue_size: usize,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<Self> {
        if !matches!(output, "stdout" | "stderr") {
            std::fs::OpenOptions::new().create(true).append(true).open(output)?;
        }
        let lazy = Lazy { output: output.to_owned(), queue_size, dropped, log: std::sync::OnceLock::new() };
        Ok(Self { inner: Some(Arc::new(lazy)) })
    }

    /// Queues a record (starting the writer the first time), or drops and counts it.
    pub fn log(&self, record: AuditRecord) {
        let Some(lazy) = &self.inner else { return };
        let log = lazy.log.get_or_init(|| {
            LineLog::start_named(&lazy.output, lazy.queue_size, lazy.dropped.clone(), "portico-audit-log")
                .unwrap_or_else(|e| {
                    tracing::warn!(output = %lazy.output, error = %e, "cannot open the audit log; its lines are lost");
                    LineLog::disabled()
                })
        });
        log.log(record);
    }

    /// Writes out what is queued (at most `timeout`), if the writer ever started.
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Some(log) = self.inner.as_ref().and_then(|l| l.log.get()) {
            log.flush(timeout);
        }
    }
}

/// One refused request.
#[derive(Debug)]
pub struct AuditRecord {
    /// When it was refused.
    pub time: SystemTime,
    /// `authentication` (401) or `authorization` (403).
    pub event: &'static str,
    /// Status answered.
    pub status: u16,
    /// Why.
    pub reason: &'static str,
    /// The request ID.
    pub request_id: HeaderValue,
    /// The matched route.
    pub route: Arc<str>,
    /// Method.
    pub method: Method,
    /// Path as received (no query: it may carry a credential).
    pub path: Box<str>,
    /// The client IP (through trusted proxies).
    pub client_ip: IpAddr,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// The authenticated caller, when authentication succeeded (403).
    pub user_id: Option<Arc<str>>,
    /// How the caller authenticated or tried to: `jwt`, `api_key`, `mtls`, or none.
    pub credential: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    timestamp: String,
    audit: &'static str,
    status: u16,
    reason: &'static str,
    request_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    client_ip: IpAddr,
    user_agent: Option<&'a str>,
    user_id: Option<&'a str>,
    credential: Option<&'static str>,
}

impl JsonLine for AuditRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        let line = Line {
            timestamp: humantime::format_rfc3339_millis(self.time).to_string(),
            audit: self.event,
            status: self.status,
            reason: self.reason,
            request_id: self.request_id.to_str().unwrap_or(""),
            route: &self.route,
            method: self.method.as_str(),
            path: &self.path,
            client_ip: self.client_ip,
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            user_id: self.user_id.as_deref(),
            credential: self.credential,
        };
        if serde_json::to_writer(&mut *out, &line).is_ok() {
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_line_is_json_without_the_query() {
        let rec = AuditRecord {
            time: SystemTime::UNIX_EPOCH,
            event: "authentication",
            status: 401,
            reason: "token expired",
            request_id: HeaderValue::from_static("r1"),
            route: "users".into(),
            method: Method::GET,
            path: "/users/1".into(),
            client_ip: "192.0.2.1".parse().unwrap(),
            user_agent: Some(HeaderValue::from_static("curl/8")),
            user_id: None,
            credential: Some("jwt"),
        };
        let mut out = Vec::new();
        rec.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["audit"], "authentication");
        assert_eq!(v["reason"], "token expired");
        assert_eq!(v["path"], "/users/1");
        assert_eq!(v["credential"], "jwt");
        assert!(v["userId"].is_null());
    }
}
