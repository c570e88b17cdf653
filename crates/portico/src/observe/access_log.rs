//! The JSON access log: one line per request, written off the request path.
//!
//! Requests hand a small record to a bounded queue and move on; a dedicated thread turns
//! records into JSON and writes them. When the queue is full the record is dropped and
//! counted in `gateway_access_log_dropped_total`: a slow disk or a blocked stdout pipe
//! never slows a request.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

/// What is known about a finished request.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub start: SystemTime,
    /// The request ID.
    pub request_id: HeaderValue,
    /// Method.
    pub method: Method,
    /// Request URI as received (path and query are logged).
    pub uri: Uri,
    /// HTTP version.
    pub version: Version,
    /// Status sent.
    pub status: u16,
    /// Time to the response head.
    pub latency: Duration,
    /// The client IP (through trusted proxies).
    pub client_ip: IpAddr,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// The authenticated user, when there is one.
    pub user_id: Option<Arc<str>>,
    /// Requests left in the tightest rate limit, when one applies.
    pub rate_limit_remaining: Option<u64>,
    /// The matched route.
    pub route: Option<Arc<str>>,
    /// The upstream's name.
    pub backend_service: Option<Arc<str>>,
    /// Time spent waiting for the upstream's response head.
    pub backend_latency: Option<Duration>,
    /// Name of the listener.
    pub listener: Arc<str>,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Time from the request's arrival to the end of its response body (or its abort).
    pub duration: Duration,
    /// How the exchange ended: `complete`, `client_abort` or `upstream_abort`.
    pub completion: &'static str,
    /// An aggregate route's calls.
    pub calls: Option<Box<[CallLog]>>,
}

/// One call of an aggregate route, as the access log lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallLog {
    /// The call's name.
    #[serde(serialize_with = "text")]
    pub call: Arc<str>,
    /// Its upstream.
    #[serde(serialize_with = "text")]
    pub upstream: Arc<str>,
    /// `ok`, or why it failed (the reasons of docs/aggregate.md).
    pub outcome: &'static str,
    /// The upstream's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From sending the call to having its whole body, when it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    timestamp: String,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    protocol: &'static str,
    status_code: u16,
    latency_ms: f64,
    client_ip: IpAddr,
    user_agent: Option<&'a str>,
    user_id: Option<&'a str>,
    rate_limit_remaining: Option<u64>,
    route: Option<&'a str>,
    backend_service: Option<&'a str>,
    backend_latency_ms: Option<f64>,
    listener: &'a str,
    bytes_sent: u64,
    duration_ms: f64,
    completion: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    calls: Option<&'a [CallLog]>,
}

/// A shared string as JSON text (serde's `rc` feature is off).
fn text<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// Milliseconds with microseconds, as every duration of the line is written.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// A record that a [`LineLog`] writes as one JSON line.
pub trait JsonLine: Send + 'static {
    /// Appends the JSON line (with newline) to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

impl JsonLine for AccessRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        let line = Line {
            timestamp: humantime::format_rfc3339_millis(self.start).to_string(),
            request_id: self.request_id.to_str().unwrap_or(""),
            method: self.method.as_str(),
            path: self.uri.path(),
            query: self.uri.query(),
            protocol: protocol(self.version),
            status_code: self.status,
            latency_ms: ms(self.latency),
            client_ip: self.client_ip,
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            user_id: self.user_id.as_deref(),
            rate_limit_remaining: self.rate_limit_remaining,
            route: self.route.as_deref(),
            backend_service: self.backend_service.as_deref(),
            backend_latency_ms: self.backend_latency.map(ms),
            listener: &self.listener,
            bytes_sent: self.bytes_sent,
            duration_ms: ms(self.duration),
            completion: self.completion,
            calls: self.calls.as_deref(),
        };
        // Serializing plain strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut *out, &line).is_ok() {
            out.push(b'\n');
        }
    }
}

/// What the writer thread receives.
// Records are moved into the channel's preallocated slots; boxing them would add an
// allocation per request to save a few hundred bytes of queue memory.
#[allow(clippy::large_enum_variant)]
enum Msg<R> {
    Record(R),
    /// Write out everything queued before this, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// How often the writer thread wakes to drain the queue. Senders never wake it: at tens
/// of thousands of requests per second, a wake-up per line would cost more than the line.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// The sending side of a JSON line log (the access log, the audit log); cheap to clone.
#[derive(Debug)]
pub struct LineLog<R> {
    tx: Option<mpsc::Sender<Msg<R>>>,
    dropped: Counter,
}

/// The access log.
pub type AccessLog = LineLog<AccessRecord>;

impl<R> Clone for LineLog<R> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), dropped: self.dropped.clone() }
    }
}

impl<R> std::fmt::Debug for Msg<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Record(_) => "Record",
            Msg::Flush(_) => "Flush",
        })
    }
}

impl<R: JsonLine> LineLog<R> {
    /// An access log that writes nothing.
    pub fn disabled() -> Self {
        Self { tx: None, dropped: Counter::default() }
    }

    /// Starts the writer thread. `output` is `stdout`, `stderr` or a file path.
    pub fn start(output: &str, queue_size: usize, dropped: Counter) -> std::io::Result<Self> {
        Self::start_named(output, queue_size, dropped, "portico-access-log")
    }

    /// Starts the writer thread with a thread name.
    pub fn start_named(output: &str, queue_size: usize, dropped: Counter, thread: &str) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match output {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = mpsc::channel(queue_size.max(1));
        std::thread::Builder::new().name(thread.into()).spawn(move || writer(rx, sink))?;
        Ok(Self { tx: Some(tx), dropped })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record, or drops and counts it when the queue is full. Never waits.
    #[inline]
    pub fn log(&self, record: R) {
        if let Some(tx) = &self.tx
            && tx.try_send(Msg::Record(record)).is_err()
        {
            self.dropped.inc();
        }
    }

    /// Blocks until every record queued so far is written (at most `timeout`). For
    /// shutdown; call it off the async runtime.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        // A full queue drains within one DRAIN_INTERVAL unless the sink is stuck.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    #[allow(clippy::disallowed_methods)] // off the runtime, by contract
                    std::thread::sleep(DRAIN_INTERVAL);
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

fn writer<R: JsonLine>(mut rx: mpsc::Receiver<Msg<R>>, sink: Box<dyn Write + Send>) {
    use tokio::sync::mpsc::error::TryRecvError;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut buf = Vec::with_capacity(1024);
    let mut failing = false;
    loop {
        let mut ok = true;
        let mut wrote = false;
        let closed = loop {
            match rx.try_recv() {
                Ok(Msg::Record(rec)) => {
                    buf.clear();
                    rec.write_json(&mut buf);
                    ok &= out.write_all(&buf).is_ok();
                    wrote = true;
                }
                Ok(Msg::Flush(ack)) => {
                    ok &= out.flush().is_ok();
                    let _ = ack.try_send(());
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            ok &= out.flush().is_ok();
        }
        // A broken sink (closed pipe, full disk): keep draining so requests are never
        // held up; the lines are lost, as a full queue would lose them. Say so once per
        // outage, not once per line.
        if !ok && !failing {
            tracing::warn!("access log writes are failing; lines are being lost");
        } else if ok && failing && wrote {
            tracing::info!("access log writes recovered");
        }
        if wrote {
            failing = !ok;
        }
        if closed {
            return;
        }
        // This is the log's own thread, never a runtime worker.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(DRAIN_INTERVAL);
    }
}
