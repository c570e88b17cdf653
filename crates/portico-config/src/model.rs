//! The raw config model: what the YAML file says, with defaults filled in.
//!
//! Every struct rejects unknown fields. Every field has a default that is safe in
//! production, documented here (the doc comments become the JSON Schema descriptions)
//! and in docs/config.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

/// A Portico configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of this file. Must be `1`. A file without it is rejected, which
    /// also keeps a half-written file (an editor's save in progress) from being applied.
    pub version: u32,
    /// Where Portico accepts client traffic. At least one listener is required.
    pub listeners: Vec<Listener>,
    /// The admin listener: `/health`, `/ready`, `/metrics`, `/upstreams` and `POST /revocations`.
    #[serde(default)]
    pub admin: Admin,
    /// Process-wide settings: worker threads and the shutdown drain timeout.
    #[serde(default)]
    pub runtime: Runtime,
    /// The JSON access log: one line per request.
    #[serde(default)]
    pub access_log: AccessLog,
    /// How the request ID is kept, generated and forwarded.
    #[serde(default)]
    pub request_id: RequestId,
    /// How the client IP is determined when Portico sits behind other proxies.
    #[serde(default)]
    pub client_ip: ClientIp,
    /// Named groups of backend targets that routes send traffic to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, matched by host, path, method, headers and query. Precedence is by
    /// specificity, not by order in the file (see docs/routing.md).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Plugins applied to every route (a route's own plugin of the same kind replaces
    /// the global one). They run in the fixed order of docs/plugins.md.
    #[serde(default)]
    pub plugins: Vec<crate::plugins::Plugin>,
    /// JWT issuers, by name, that `jwt` plugins refer to.
    #[serde(default)]
    pub jwt_providers: BTreeMap<String, crate::plugins::JwtProvider>,
    /// Named callers: API keys, groups, roles, tenant and plan.
    #[serde(default)]
    pub consumers: Vec<crate::plugins::Consumer>,
    /// Plans by name (`free`, `pro`): the rate limits of the consumers on them.
    #[serde(default)]
    pub plans: BTreeMap<String, crate::ratelimit::Plan>,
    /// Tenants: how a request's tenant is found, and each tenant's plan, limits and flags.
    #[serde(default)]
    pub tenants: crate::tenants::Tenants,
    /// Headers that carry the authenticated identity upstream (client copies removed).
    #[serde(default)]
    pub identity_headers: crate::plugins::IdentityHeaders,
    /// The audit log of refused authentications and authorizations.
    #[serde(default)]
    pub audit_log: crate::plugins::AuditLog,
    /// The Redis shared by every instance: revoked tokens, `store: redis` rate-limit counters
    /// and `tenants.redis` settings. Absent: nothing is shared, and the features that need it
    /// cannot be turned on. Changes only on restart.
    #[serde(default)]
    pub redis: Option<Redis>,
}

/// A listening socket for client traffic. Without `tls` it speaks HTTP/1.1 and cleartext
/// HTTP/2 (h2c with prior knowledge) on the same port; with `tls`, HTTP/1.1 and HTTP/2 over
/// TLS, chosen by ALPN.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// A unique name, used in logs and metrics.
    pub name: String,
    /// Address and port to bind, e.g. `0.0.0.0:8080` or `[::]:8080`.
    #[schemars(with = "String")]
    pub bind: SocketAddr,
    /// Accept HTTP/2 besides HTTP/1.1: cleartext with prior knowledge (h2c) on a plain
    /// listener, `h2` by ALPN on a TLS listener.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Per-connection and per-request limits.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Terminate TLS on this listener. Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// On a plain listener: answer every request with a redirect to `https://` on this
    /// port (301 for GET and HEAD, 308 otherwise), before routing. Absent: no redirect.
    #[serde(default)]
    pub redirect_https: Option<RedirectHttps>,
    /// What to do with a request path holding an escaped slash or backslash (`%2F`, `%5C`),
    /// which a service that decodes before it normalises reads as a separator. A route's
    /// own `escaped_slashes` overrides this for the requests it matches.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

/// What the gateway does with `%2F` and `%5C` (either case) in a request path
/// (docs/routing.md, "Escaped slashes"). Dot segments are refused whatever this says, also
/// when decoding (once or more) reveals them.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Answer 400: the gateway and the service could disagree on the path's segments.
    #[default]
    Reject,
    /// Answer 307 with `Location` set to the path with `%2F` and `%5C` decoded to `/`.
    UnescapeAndRedirect,
    /// Decode `%2F` and `%5C` to `/`, then route and forward the decoded path.
    UnescapeAndForward,
    /// Route and forward the path as it is (for IDs that hold slashes, as GitLab's
    /// `projects/group%2Fname` does).
    Keep,
}

/// TLS termination on a listener (rustls with the aws-lc-rs provider). Only rustls' safe
/// defaults are offered: TLS 1.3 and TLS 1.2 with AEAD cipher suites and forward secrecy;
/// rustls has no weak suites to turn off.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates with their keys. A client's SNI selects the one whose subject
    /// alternative names (DNS, `*.example.com` wildcards included) cover it; the first is
    /// used when the client sends no SNI or a name no certificate covers. At least one.
    pub certificates: Vec<CertificateFiles>,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Ask clients for a certificate (mutual TLS). Absent: clients are not asked.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// A certificate chain and its private key, as PEM files. Both files are watched: a change
/// on disk is loaded for new handshakes without a reload.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM file of the certificate chain, leaf first.
    pub cert: String,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client certificates (mutual TLS) on a listener.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// `required`: a handshake without a valid client certificate fails. `optional`:
    /// clients without a certificate are served too (one that presents an invalid
    /// certificate is still refused).
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// PEM file of the CA certificates that sign accepted client certificates.
    pub ca: String,
    /// Request header that carries the verified client certificate's subject (RFC 4514,
    /// `CN=alice,O=Example`) upstream. Any copy a client sends is removed on every
    /// listener, so only the gateway sets it.
    #[serde(default = "default_client_cert_header")]
    pub forward_header: String,
}

/// The header that carries the client certificate's subject upstream, by default.
pub const DEFAULT_CLIENT_CERT_HEADER: &str = "x-client-cert-subject";

fn default_client_cert_header() -> String {
    DEFAULT_CLIENT_CERT_HEADER.into()
}

/// Whether a client certificate is required.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// Clients must present a valid certificate.
    #[default]
    Required,
    /// Clients may present a certificate; when they do, it must be valid.
    Optional,
}

/// Redirect plain HTTP to HTTPS.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectHttps {
    /// Port of the HTTPS listener in the `Location` URL (443 is not written).
    pub port: u16,
}

impl Default for RedirectHttps {
    fn default() -> Self {
        Self { port: 443 }
    }
}

/// Limits that protect the gateway from slow, large or abusive clients.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Largest request body accepted. Larger bodies get 413 and are not read further.
    pub max_body: ByteSize,
    /// Largest total size of the request line and headers. Larger gets 431 (414 when the
    /// request line alone is longer).
    pub max_header_bytes: ByteSize,
    /// Most header fields in a request (each line counts, repeated names too). More gets
    /// 431, on every listener kind and protocol.
    pub max_header_fields: u32,
    /// Time allowed for a client to send a complete request head (slowloris protection).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Most client connections open at once on this listener. Further connections wait
    /// in the kernel's accept queue until one closes.
    pub max_connections: u32,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_body: ByteSize::mib(1),
            max_header_bytes: ByteSize::kib(16),
            max_header_fields: 100,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_concurrent_streams: 128,
        }
    }
}

/// The admin listener. Bind it to loopback or a private network only.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Serve the admin endpoints at all.
    pub enabled: bool,
    /// Address and port of the admin listener.
    #[schemars(with = "String")]
    pub bind: SocketAddr,
    /// When set, every admin endpoint but `/health` and `/ready` (which load balancers
    /// probe) requires `Authorization: Bearer <token>`. At least 16 characters; keep it
    /// out of the file with `${PORTICO_ADMIN_TOKEN}`.
    pub token: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Self { enabled: true, bind: SocketAddr::from(([127, 0, 0, 1], 9901)), token: None }
    }
}

/// The shared Redis: one server (`url`) or a Redis Cluster (`cluster`). One multiplexed
/// connection per instance (per node in a cluster; they reconnect by themselves) and one
/// subscriber connection for change notices.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// One server: `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS
    /// (server certificate checked against the system's roots, or `tls.ca`). Use `${VAR}`
    /// for the password, percent-encoded where it holds `/ ? # @ :`. Exactly one of `url`
    /// and `cluster` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes (`redis://` or `rediss://` URLs, all with the same
    /// scheme, no database number), from which the rest of the cluster and its slots are
    /// learnt; the slot map follows `MOVED` answers and resharding by itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// TLS settings for `rediss://` URLs: a private CA, a client certificate (Redis's
    /// `tls-auth-clients`). Absent: the system's roots, no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
    /// Time allowed for one command (a revocation check, a write, a rate-limit decision); a feature's own
    /// `timeout` may override it. Past it the command counts as failed.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
    /// Time allowed to open a connection (TCP, TLS and `AUTH`).
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout: Duration,
    /// Prefix of every key and channel Portico uses, so several gateways (or other
    /// programs) can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

/// TLS to Redis (files read once, at start).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM file of the CA certificates that sign the Redis servers' certificates, used
    /// instead of the system's roots.
    pub ca: Option<String>,
    /// PEM certificate chain presented to Redis. Needs `client_key`.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_redis_prefix() -> String {
    "portico:".into()
}

/// Process-wide settings. `worker_threads` changes only on restart (a reload logs that the
/// running value was kept); the others take effect on reload.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Worker threads serving traffic. `0` means one per CPU core.
    pub worker_threads: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.
    pub drain_timeout: Duration,
    /// Poll the config file for changes at this interval and reload when it changes.
    /// `0s` turns file watching off (SIGHUP still reloads).
    pub watch_interval: Duration,
    /// On SIGTERM/SIGINT, `/ready` answers 503 for this long before listeners stop
    /// accepting, so load balancers take the instance out first (e.g. `5s` behind a
    /// Kubernetes Service).
    pub shutdown_delay: Duration,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            drain_timeout: Duration::from_secs(30),
            watch_interval: Duration::from_secs(1),
            shutdown_delay: Duration::from_secs(0),
        }
    }
}

/// The access log: one JSON line per request, written by a background writer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// Write the access log at all.
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub output: String,
    /// Lines waiting to be written. When the queue is full, lines are dropped and counted
    /// in `gateway_access_log_dropped_total`; requests never wait for the log.
    pub queue_size: usize,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self { enabled: true, output: "stdout".into(), queue_size: 8192 }
    }
}

/// Request IDs: kept from the client when well formed, else generated; sent upstream and
/// back to the client.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestId {
    /// Header that carries the request ID.
    pub header: String,
    /// Keep an incoming ID when it is 1-128 characters of `[A-Za-z0-9._:-]`. When false,
    /// every request gets a new ID.
    pub trust_incoming: bool,
}

impl Default for RequestId {
    fn default() -> Self {
        Self { header: "x-request-id".into(), trust_incoming: true }
    }
}

/// Where the client IP comes from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIp {
    /// Peers whose `X-Forwarded-For` is believed, as CIDRs (`10.0.0.0/8`, `::1/128`).
    /// From any other peer, incoming `X-Forwarded-*` and `Forwarded` headers are
    /// replaced, not appended to.
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A named group of backend targets.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Backend targets. An upstream with none answers 503 (useful while a service is
    /// being set up; discovery will fill it in later).
    pub targets: Vec<Target>,
    /// How requests are spread over targets.
    #[serde(default)]
    pub balance: Balance,
    /// Protocol spoken to the targets: `http1`, or `http2` (cleartext, prior knowledge).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Timeouts toward this upstream.
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// The keep-alive connection pool to each target.
    #[serde(default)]
    pub pool: Pool,
    /// The request key for `balance: consistent_hash`.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Active health checks: a request to each target at an interval.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive health: targets that keep failing real requests are ejected for a while.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Retries of failed attempts, for requests that are safe to repeat. Off when absent.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Stops sending to an upstream whose error rate is too high, for a while.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Most requests in flight to this upstream at once (0: no limit). Past it, requests
    /// wait up to `queue_timeout` for a slot, then get 503.
    #[serde(default)]
    pub max_in_flight: u32,
    /// How long a request waits for a slot under `max_in_flight`.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// TLS toward `https://` targets.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Find targets in DNS instead of taking them as written.
    #[serde(default)]
    pub discovery: Option<Discovery>,
}

/// Service discovery.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// DNS: every target whose host is a name is resolved (A/AAAA, or SRV), and the
    /// answers become the targets; re-resolved as the records' TTLs run out.
    pub dns: DnsDiscovery,
}

/// DNS discovery settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsDiscovery {
    /// Treat each target's host as an SRV name (`_http._tcp.users.internal`): the SRV
    /// records give host, port and weight.
    pub srv: bool,
    /// Re-resolve at least this often, even when the TTL is longer.
    pub max_interval: Duration,
    /// Never re-resolve more often than this, even when the TTL is shorter.
    pub min_interval: Duration,
    /// Name servers, `ip` or `ip:port`. Default: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
}

impl Default for DnsDiscovery {
    fn default() -> Self {
        Self {
            srv: false,
            max_interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(1),
            nameservers: Vec::new(),
        }
    }
}

/// TLS toward an upstream's `https://` targets. Certificates are verified; there is no
/// switch to turn verification off.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates that sign the targets' certificates. Default: the
    /// system's trusted roots.
    pub ca: Option<String>,
    /// The name sent as SNI and checked against the targets' certificates. Default: each
    /// target's host.
    pub server_name: Option<String>,
    /// PEM certificate chain presented to the targets (mTLS). Needs `client_key`.
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

fn default_queue_timeout() -> Duration {
    Duration::from_millis(0)
}

/// Retry policy.
///
/// A request is retried only when repeating it is safe: its method is listed in
/// `methods` (or it carries an `Idempotency-Key` header and `idempotency_key` is on), or
/// the failure happened before the request reached the upstream (a refused connection).
/// Retries go to another target when there is one, after an exponential backoff with
/// full jitter, and only while the retry budget allows.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Attempts after the first (so `2` means at most three tries).
    pub attempts: u32,
    /// Base backoff: before retry n, wait a random time up to `backoff * 2^(n-1)`.
    pub backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// Retries stay under this share of requests over the last 10 seconds, so a failing
    /// upstream is not hammered with extra load.
    pub budget: crate::units::Percent,
    /// Retries allowed per second regardless of the budget, so low traffic can retry.
    pub min_per_second: u32,
    /// Methods that are safe to repeat.
    pub methods: Vec<String>,
    /// Also repeat any method that carries an `Idempotency-Key` header.
    pub idempotency_key: bool,
    /// Upstream answers that are retried, besides connection failures and timeouts.
    pub statuses: Vec<u16>,
    /// gRPC statuses that are retried (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, ...), whatever
    /// the call's method, when the upstream answered with that status and no message (a
    /// trailers-only answer: the service did not start on the call). Empty (the default):
    /// gRPC answers are never retried.
    pub grpc_statuses: Vec<String>,
    /// Request bodies up to this size are kept for replay; larger ones are not retried.
    pub max_body: ByteSize,
}

/// The gRPC status names, by code (0 to 16).
pub const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 2,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget: crate::units::Percent(20.0),
            min_per_second: 3,
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].map(String::from).to_vec(),
            idempotency_key: false,
            statuses: vec![502, 503, 504],
            grpc_statuses: Vec::new(),
            max_body: ByteSize::kib(64),
        }
    }
}

/// Circuit breaker per upstream: closed (normal), open (answer at once without calling
/// the upstream), half-open (let a few probes through to test recovery).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    /// Opens when failures (5xx, connection failures, timeouts) reach this share of
    /// requests in the window...
    pub error_rate: crate::units::Percent,
    /// ...and the window holds at least this many requests.
    pub min_requests: u32,
    /// Sliding window over which the error rate is measured.
    pub window: Duration,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes let through when half-open; all must succeed to close again.
    pub half_open_requests: u32,
    /// What to answer while open (default: 503 JSON error with `Retry-After`).
    pub fallback: Option<Fallback>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            error_rate: crate::units::Percent(50.0),
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 3,
            fallback: None,
        }
    }
}

/// A static response.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Status code.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// `Content-Type` of the body.
    #[serde(default = "default_fallback_type")]
    pub content_type: String,
}

fn default_fallback_status() -> u16 {
    503
}

fn default_fallback_type() -> String {
    "application/json".into()
}

/// What `consistent_hash` balancing hashes: the same key goes to the same target while
/// the target set is unchanged, and removing one of N targets moves only about 1/N of keys.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashOn {
    /// A request header's value (requests without it are spread at random).
    Header(String),
    /// A cookie's value (requests without it are spread at random).
    Cookie(String),
    /// The client IP (as resolved through trusted proxies).
    ClientIp,
    /// The request path.
    Path,
}

/// Active health checking.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Path requested with GET on each target.
    pub path: String,
    /// Time between checks of a target.
    pub interval: Duration,
    /// A check that takes longer fails.
    pub timeout: Duration,
    /// Statuses that count as healthy, as ranges: `["200-399"]`, `["200", "204"]`.
    pub expected_statuses: Vec<String>,
    /// Consecutive failed checks that mark a healthy target unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive passed checks that mark an unhealthy target healthy again.
    pub healthy_after: u32,
    /// Check with the gRPC health protocol (`grpc.health.v1.Health/Check`) instead of a GET
    /// of `path`: healthy when the target answers `SERVING` for this service. Needs
    /// `protocol: http2`.
    pub grpc: Option<GrpcHealth>,
}

/// `health_check.grpc`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcHealth {
    /// The service asked about (`orders.v1.Orders`); empty: the server as a whole.
    pub service: String,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            expected_statuses: vec!["200-399".into()],
            unhealthy_after: 3,
            healthy_after: 2,
            grpc: None,
        }
    }
}

/// Passive outlier ejection, from the outcome of real requests.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Consecutive failures (5xx answers, connect failures, timeouts) that eject a target.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each further ejection of the same target lasts
    /// this much longer (2x, 3x, ...), up to `max_ejection`.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Never eject more than this share of an upstream's targets at once.
    pub max_ejected_percent: crate::units::Percent,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: crate::units::Percent(50.0),
        }
    }
}

/// One backend target.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `http://host:port` or `https://host:port`. No path: use a route's `rewrite` for that.
    pub url: String,
    /// Relative share of requests, 1 to 1000.
    #[serde(default = "one")]
    pub weight: u32,
}

/// Load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin (as in nginx): weights are respected and the picks of
    /// a heavy target are interleaved with the others rather than sent in bursts.
    #[default]
    RoundRobin,
    /// Of two targets drawn at random, the one with fewer requests in flight per unit of
    /// weight ("power of two choices").
    LeastRequest,
    /// Of two targets drawn at random, the one with the lower peak-EWMA latency times
    /// (requests in flight + 1), per unit of weight (as Finagle and Linkerd do).
    PeakEwma,
    /// A hash ring over `hash_on`: the same key reaches the same target.
    ConsistentHash,
    /// Weighted random.
    Random,
}

/// Protocol toward an upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (h2c), multiplexed.
    Http2,
}

/// Timeouts toward an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// Time allowed to open a TCP connection to a target. Past it: 504.
    pub connect: Duration,
    /// Deadline for the whole request, all tries and backoffs included, until the
    /// response head arrives. Past it: 504, and the upstream connection is closed. A
    /// route's `timeout` overrides it.
    pub request: Duration,
    /// Time allowed for one try (`0s`: the whole `request` deadline). A route's
    /// `try_timeout` overrides it.
    #[serde(rename = "try")]
    pub per_try: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), request: Duration::from_secs(60), per_try: Duration::from_secs(0) }
    }
}

/// Keep-alive connection pool.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// Idle connections kept per target.
    pub max_idle_per_target: usize,
    /// An idle pooled connection is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Self { max_idle_per_target: 128, idle_timeout: Duration::from_secs(90) }
    }
}

/// A route: what requests it matches, where they go, how they are rewritten.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A unique name, used as the `route` label in metrics and logs.
    pub name: String,
    /// What the route matches.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// The upstream that serves the route (a key of `upstreams`). Give this, `split` or
    /// `respond`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Weighted shares over several upstreams (a canary: 95/5). Give this, `upstream` or
    /// `respond`.
    #[serde(default)]
    pub split: Vec<SplitShare>,
    /// With `split`: keep each client on one upstream by hashing this key, instead of
    /// choosing at random per request.
    #[serde(default)]
    pub sticky: Option<HashOn>,
    /// Send a copy of a share of requests to another upstream; its answers are discarded
    /// and never delay the client.
    #[serde(default)]
    pub mirror: Option<Mirror>,
    /// Hedged reads: a second try to another target when the first has not answered
    /// within a delay; the first answer wins and the other try is cancelled.
    #[serde(default)]
    pub hedge: Option<crate::hedge::Hedge>,
    /// Path rewriting before the request is sent upstream.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Send the client's `Host` header upstream. When false, `Host` is the target's
    /// `host:port`.
    #[serde(default)]
    pub preserve_host: bool,
    /// Overrides the upstream's `timeouts.request` for this route.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Overrides the upstream's `timeouts.try` for this route.
    #[serde(default)]
    pub try_timeout: Option<Duration>,
    /// Most requests in flight on this route at once (0: no limit). Past it, requests wait
    /// up to `queue_timeout` for a slot, then get 503.
    #[serde(default)]
    pub max_in_flight: u32,
    /// How long a request waits for a slot under `max_in_flight`.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// Feature flag to upstream: a request whose tenant has the flag goes to that upstream
    /// instead (`{ beta: orders-beta }`).
    #[serde(default)]
    pub flag_upstreams: BTreeMap<String, String>,
    /// Answer at the gateway with this fixed response instead of forwarding: maintenance
    /// pages, mocks, the 410 of a retired API. Give this, `upstream` or `split`. The
    /// route's plugins run as for any route (authentication, limits, response headers).
    #[serde(default)]
    pub respond: Option<Respond>,
    /// Answer with one JSON document made from several upstream calls (parallel unless
    /// one names another's result). Give this, `upstream`, `split` or `respond`.
    #[serde(default)]
    pub aggregate: Option<crate::aggregate::Aggregate>,
    /// Publish the request as an event on a Redis stream and answer 202 once Redis has it
    /// (docs/events.md). Give this, `upstream`, `split`, `respond` or `aggregate`.
    #[serde(default)]
    pub publish: Option<crate::events::Publish>,
    /// Overrides the listener's `escaped_slashes` for requests this route matches (as
    /// received, before any decoding).
    #[serde(default)]
    pub escaped_slashes: Option<EscapedSlashes>,
    /// The route is deprecated: `Deprecation`, `Sunset` and `Link` on every response, and
    /// from its `sunset` on the gateway answers 410 itself (docs/lifecycle.md).
    #[serde(default)]
    pub deprecated: Option<crate::lifecycle::Deprecated>,
    /// The route's plugins (authentication, authorization, CORS, ...). They run in the
    /// fixed order of docs/plugins.md, whatever their order here.
    #[serde(default)]
    pub plugins: Vec<crate::plugins::Plugin>,
}

/// A fixed response, answered by the gateway (the `respond` handler).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// Status code, 200 to 599.
    #[serde(default = "respond_status")]
    pub status: u16,
    /// Response headers (`content-type`, `location`, `sunset`, ...). `Content-Length` is
    /// the gateway's.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body, sent as written.
    #[serde(default)]
    pub body: String,
}

fn respond_status() -> u16 {
    200
}

/// One share of a split.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitShare {
    /// The upstream (a key of `upstreams`).
    pub upstream: String,
    /// Relative weight, 0 to 1000 (0 turns the share off).
    pub weight: u32,
}

/// Traffic mirroring (shadowing).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The shadow upstream (a key of `upstreams`).
    pub upstream: String,
    /// Share of requests copied.
    #[serde(default = "full_share")]
    pub percent: crate::units::Percent,
    /// Request bodies up to this size are copied; requests with larger (or streamed)
    /// bodies are not mirrored.
    #[serde(default = "mirror_max_body")]
    pub max_body: ByteSize,
    /// Most copies in flight at once; past it, copies are skipped (and counted in
    /// `gateway_mirror_skipped_total`), so a slow shadow cannot pile up work.
    #[serde(default = "mirror_max_in_flight")]
    pub max_in_flight: u32,
}

fn mirror_max_in_flight() -> u32 {
    64
}

fn full_share() -> crate::units::Percent {
    crate::units::Percent(100.0)
}

fn mirror_max_body() -> ByteSize {
    ByteSize::kib(64)
}

/// Match conditions of a route. All given conditions must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// Hosts: exact (`api.example.com`) or one leading wildcard label (`*.example.com`,
    /// which matches `a.example.com` but not `example.com`). Empty: any host.
    pub hosts: Vec<String>,
    /// Exact path or template: `/health`, `/users/{id}`, `/files/{*rest}`. `{name}`
    /// captures one segment; `{*name}` captures the rest and must come last.
    pub path: Option<String>,
    /// Path prefix on segment boundaries: `/api` matches `/api` and `/api/x`, not
    /// `/apix`. Exactly one of `path`, `prefix` and `regex` is required.
    pub prefix: Option<String>,
    /// Regular expression over the whole path (the `regex` crate's syntax, matched in
    /// linear time), written with `^` and `$`: `^/v(?<version>[12])/users/(?<id>[0-9]+)$`.
    /// Named captures are path parameters. Tried after exact paths and templates, before
    /// prefixes, in file order.
    pub regex: Option<String>,
    /// HTTP methods. Empty: any method.
    pub methods: Vec<String>,
    /// Header conditions.
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    pub query: Vec<ValueMatch>,
    /// Cookie conditions (`canary=1`).
    pub cookies: Vec<ValueMatch>,
    /// Listeners (by name) whose requests the route takes. Empty: every listener's.
    pub listeners: Vec<String>,
}

impl RouteMatch {
    /// The path parameters the route captures: a template's `{name}` and `{*name}`, a
    /// regex's named groups; none for a prefix, or for a path that does not parse.
    pub fn params(&self) -> Vec<String> {
        if let Some(path) = &self.path {
            crate::template::PathTemplate::parse(path)
                .map(|t| t.params().map(str::to_owned).collect())
                .unwrap_or_default()
        } else if let Some(re) = &self.regex {
            crate::template::PathRegex::parse(re).map(|r| r.params().map(str::to_owned).collect()).unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// The field that holds the route's path condition: `path`, `regex` or `prefix`.
    pub fn path_field(&self) -> &'static str {
        match (&self.path, &self.regex) {
            (Some(_), _) => "path",
            (None, Some(_)) => "regex",
            (None, None) => "prefix",
        }
    }
}

/// A condition on a header or query parameter. Give at most one of `value`, `prefix` and
/// `present`; with none, the condition is that the header or parameter is present.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// Header or parameter name (headers: case-insensitive).
    pub name: String,
    /// The value must equal this.
    #[serde(default)]
    pub value: Option<String>,
    /// The value must start with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `true`: must be present. `false`: must be absent.
    #[serde(default)]
    pub present: Option<bool>,
}

/// Path rewriting. Give one of `strip_prefix` and `path`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Remove this prefix from the path (`/api` turns `/api/users` into `/users`).
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Replace the path with this template; `{name}` inserts a captured parameter
    /// (`/v2/users/{id}`). The query string is kept.
    #[serde(default)]
    pub path: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}
