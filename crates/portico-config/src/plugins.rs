//! The config of plugins (per route and global), consumers, JWT providers, identity
//! headers and the audit log.
//!
//! A plugin list is written as a YAML sequence of one-key maps (`- jwt: { provider: main }`).
//! The order in the file does not matter: plugins always run in the fixed order of
//! docs/plugins.md. A route's plugin of some kind replaces the global one of that kind.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

/// One plugin, by kind.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Plugin {
    /// Allow or deny client addresses by CIDR (403).
    IpFilter(IpFilter),
    /// Cross-origin resource sharing: preflights answered at the gateway, response headers.
    Cors(Cors),
    /// Authenticate with a JWT checked against a provider of `jwt_providers`.
    Jwt(JwtAuth),
    /// Authenticate with an API key of a consumer.
    ApiKey(ApiKeyAuth),
    /// Authenticate with the client certificate verified by the listener's
    /// `tls.client_auth` (mTLS).
    Mtls(MtlsAuth),
    /// Allow or deny by consumer, group, role, scope or tenant (403).
    Authorize(Authorize),
    /// Check requests against an API contract (an OpenAPI document or JSON Schemas): 400
    /// with every problem found, 404/405 for unknown operations, 415 for a body type the
    /// contract does not take.
    Validate(crate::contract::Validate),
    /// Rate limits per client, consumer, tenant, route... (429).
    RateLimit(crate::ratelimit::RateLimit),
    /// Most requests in flight at once per client, consumer or tenant (429 or 503).
    ConcurrencyLimit(crate::ratelimit::ConcurrencyLimit),
    /// Security response headers (HSTS, `X-Content-Type-Options`, ...) and removal of
    /// internal response headers (`Server`, `X-Powered-By`).
    SecurityHeaders(SecurityHeaders),
    /// Change the request's headers before it goes upstream: remove, rename, set, add,
    /// append, with templated values.
    RequestHeaders(crate::transform::HeaderTransform),
    /// Change the response's headers before they reach the client.
    ResponseHeaders(crate::transform::HeaderTransform),
    /// Change the request's query parameters before it goes upstream: remove, rename,
    /// set, add, with templated values.
    Query(crate::transform::QueryTransform),
    /// Change a JSON request body before it goes upstream: remove, rename, move, set,
    /// add fields, with templated values.
    RequestBody(crate::transform::BodyTransform),
    /// Change a JSON response body before it reaches the client.
    ResponseBody(crate::transform::BodyTransform),
    /// Compress response bodies (gzip) for clients that accept it, as they stream.
    Compression(Compression),
    /// Answer `GET` and `HEAD` from stored upstream responses (RFC 9111), one upstream
    /// request for many concurrent misses, stale answers when the upstream fails.
    Cache(crate::cache::Cache),
    /// XML request bodies to JSON going up; JSON answers to XML (always, or when the
    /// client's `Accept` prefers it), or XML answers to JSON, coming down.
    Xml(Xml),
}

impl Plugin {
    /// The plugin's kind, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Plugin::IpFilter(_) => "ip_filter",
            Plugin::Cors(_) => "cors",
            Plugin::Jwt(_) => "jwt",
            Plugin::ApiKey(_) => "api_key",
            Plugin::Mtls(_) => "mtls",
            Plugin::Authorize(_) => "authorize",
            Plugin::RateLimit(_) => "rate_limit",
            Plugin::ConcurrencyLimit(_) => "concurrency_limit",
            Plugin::SecurityHeaders(_) => "security_headers",
            Plugin::RequestHeaders(_) => "request_headers",
            Plugin::ResponseHeaders(_) => "response_headers",
            Plugin::Query(_) => "query",
            Plugin::RequestBody(_) => "request_body",
            Plugin::ResponseBody(_) => "response_body",
            Plugin::Compression(_) => "compression",
            Plugin::Xml(_) => "xml",
            Plugin::Validate(_) => "validate",
            Plugin::Cache(_) => "cache",
        }
    }
}

/// Client address filter. The client address is the one resolved through
/// `client_ip.trusted_proxies`. `deny` wins over `allow`; with a non-empty `allow`, only
/// listed addresses get through.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IpFilter {
    /// Only these networks are let through (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7/32`).
    /// Empty: every address not denied.
    #[schemars(with = "Vec<String>")]
    pub allow: Vec<ipnet::IpNet>,
    /// These networks get 403.
    #[schemars(with = "Vec<String>")]
    pub deny: Vec<ipnet::IpNet>,
}

/// CORS. Preflight requests (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
/// are answered by the gateway and never reach the upstream.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// Allowed origins: exact (`https://app.example.com`), with one wildcard label
    /// (`https://*.example.com`), or `*` for any origin (not with `credentials`).
    pub origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive). Empty: the ones asked
    /// for are allowed.
    pub headers: Vec<String>,
    /// Response headers the browser lets scripts read, besides the CORS-safelisted ones.
    pub expose_headers: Vec<String>,
    /// Allow credentials (cookies, `Authorization`): `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(String::from).to_vec(),
            headers: Vec::new(),
            expose_headers: Vec::new(),
            credentials: false,
            max_age: Duration::from_secs(600),
        }
    }
}

/// JWT authentication on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// The provider (a key of `jwt_providers`) whose keys and rules check the token.
    pub provider: String,
}

/// API-key authentication on a route: the key is looked up among the consumers' keys.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyAuth {
    /// Request header that carries the key.
    pub header: Option<String>,
    /// Query parameter that carries the key, when the header is absent. Off by default:
    /// keys in URLs end up in logs and browser histories.
    pub query: Option<String>,
}

impl Default for ApiKeyAuth {
    fn default() -> Self {
        Self { header: Some("x-api-key".into()), query: None }
    }
}

/// mTLS authentication on a route: the caller is the consumer that lists the client
/// certificate's subject or one of its SANs in `mtls_subjects`, else the subject itself.
/// Requests over connections without a verified client certificate carry no credential
/// here (another authentication plugin may still succeed).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MtlsAuth {
    /// Refuse (401) a certificate that no consumer lists, instead of taking its subject
    /// as the user ID.
    pub consumers_only: bool,
}

/// Authorization. With an authentication plugin on the route and no `anonymous: true`, a
/// request without credentials gets 401. Every given condition must hold, else 403.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Authorize {
    /// Let requests without credentials through (as anonymous). Credentials that are
    /// present are still checked: a bad token still gets 401.
    pub anonymous: bool,
    /// The caller must be one of these consumers, or in one of `groups`, or have one of
    /// `roles` (any one of the three lists suffices). All empty: any authenticated caller.
    pub consumers: Vec<String>,
    /// See `consumers`.
    pub groups: Vec<String>,
    /// See `consumers`.
    pub roles: Vec<String>,
    /// The caller's token must carry every one of these scopes (`scope` or `scp` claim).
    pub scopes: Vec<String>,
    /// Callers denied whatever else holds: consumers, groups or roles listed here get 403.
    pub deny: DenyList,
    /// The caller's tenant must equal the tenant named by the request.
    pub tenant: Option<TenantFrom>,
}

/// Who is denied.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DenyList {
    /// Consumer IDs.
    pub consumers: Vec<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
}

/// Where the request names its tenant.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TenantFrom {
    /// A parameter captured by the route's path template (`/tenants/{tenant}/...`) or
    /// by a named group of its `match.regex`.
    Param(String),
    /// The first label of the host (`acme.api.example.com` names `acme`).
    Subdomain,
    /// A request header.
    Header(String),
}

/// JSON and XML, converted by the mapping of docs/plugins.md#xml.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Xml {
    /// `to_json`: an XML request body (`application/xml`, `text/xml`, `+xml`) goes up as
    /// JSON. Not given: request bodies go as they are.
    pub request: Option<XmlRequest>,
    /// `to_xml`: every JSON answer becomes XML; `by_accept`: only for a client whose
    /// `Accept` prefers `application/xml` or `text/xml` to `application/json`; `to_json`:
    /// an XML answer becomes JSON. Not given: answers go as they are.
    pub response: Option<XmlResponse>,
    /// The root element a JSON answer is written under.
    pub root: String,
    /// The largest body read to be converted (a larger request: 413; answer: 502).
    pub max_size: ByteSize,
}

impl Default for Xml {
    fn default() -> Self {
        Self { request: None, response: None, root: "response".into(), max_size: ByteSize::mib(1) }
    }
}

/// What `xml` does to request bodies.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XmlRequest {
    /// XML bodies go up as JSON.
    ToJson,
}

/// What `xml` does to answers.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XmlResponse {
    /// JSON answers become XML.
    ToXml,
    /// JSON answers become XML for clients whose `Accept` prefers XML.
    ByAccept,
    /// XML answers become JSON.
    ToJson,
}

/// Response compression: a handler's answer is gzip-compressed as it streams when the
/// client accepts gzip (`Accept-Encoding`), its media type is one of `content_types`, it
/// is not encoded already, its declared length is at least `min_size`, and it does not say
/// `Cache-Control: no-transform`. Such a response gets `Vary: Accept-Encoding` whether it
/// is compressed or not.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Compression {
    /// A body that declares a smaller length is sent as it is: compressing it saves little.
    /// A body of unknown length is compressed.
    pub min_size: ByteSize,
    /// The gzip level, from 1 (fastest) to 9 (smallest). The default is nginx's, 1: on
    /// JSON it gives most of what 6 gives for less than half the CPU (docs/benchmarks.md).
    pub level: u32,
    /// The media types compressed: exact (`application/json`), every subtype of a type
    /// (`text/*`), or a structured syntax suffix (`+json`). Parameters such as `charset`
    /// are ignored. `text/event-stream` is best left out: compression holds back what a
    /// client waits for between events only until the upstream pauses, but holds it.
    pub content_types: Vec<String>,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            min_size: ByteSize::kib(1),
            level: 1,
            content_types: [
                "text/html",
                "text/plain",
                "text/css",
                "text/csv",
                "text/xml",
                "text/javascript",
                "application/javascript",
                "application/json",
                "application/xml",
                "image/svg+xml",
                "+json",
                "+xml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Security headers on every response of the routes it applies to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security` max-age, sent on TLS listeners only. `0s` turns it off.
    pub hsts_max_age: Duration,
    /// Add `includeSubDomains` to HSTS.
    pub hsts_include_subdomains: bool,
    /// Add `preload` to HSTS.
    pub hsts_preload: bool,
    /// Send `X-Content-Type-Options: nosniff`.
    pub content_type_options: bool,
    /// `X-Frame-Options` value (`DENY`, `SAMEORIGIN`); empty: not sent.
    pub frame_options: String,
    /// `Referrer-Policy` value; empty: not sent.
    pub referrer_policy: String,
    /// `Content-Security-Policy` value; not sent when absent.
    pub content_security_policy: Option<String>,
    /// Response headers removed before the answer leaves (they tell attackers what runs
    /// behind the gateway).
    pub remove: Vec<String>,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        Self {
            hsts_max_age: Duration::from_secs(31_536_000),
            hsts_include_subdomains: false,
            hsts_preload: false,
            content_type_options: true,
            frame_options: "DENY".into(),
            referrer_policy: "no-referrer".into(),
            content_security_policy: None,
            remove: ["server", "x-powered-by", "x-aspnet-version", "x-aspnetmvc-version"].map(String::from).to_vec(),
        }
    }
}

/// A JWT issuer and how its tokens are checked.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Required `iss` claim.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Keys given in the config. Each pins its algorithm.
    #[serde(default)]
    pub keys: Vec<JwtKey>,
    /// A JWKS endpoint: fetched at start, refreshed in the background, refreshed early for
    /// an unknown `kid` (at most once per `min_refresh_interval`), and served from the last
    /// good set while the endpoint is down (for at most `max_stale`).
    #[serde(default)]
    pub jwks: Option<Jwks>,
    /// Algorithms accepted for JWKS keys that do not name one (`alg`); keys whose type
    /// does not fit an algorithm here are not used.
    #[serde(default = "default_jwks_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Claims that must be present (besides `exp`, `iss` and `aud`, always required).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Where the token is read from.
    #[serde(default)]
    pub token: TokenSource,
    /// Longest token accepted; longer ones get 401 without being parsed.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: ByteSize,
    /// Tokens already verified are remembered, up to this many, until they expire or the
    /// key set changes: a client reusing its token costs a lookup instead of a signature
    /// check. `0` turns the cache off.
    #[serde(default = "default_token_cache")]
    pub token_cache_size: u32,
    /// The claim that names the caller (the user ID).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim whose value is a consumer ID: the caller then is that consumer too (its
    /// groups, roles, tenant and plan apply). Off by default: turn it on only for an
    /// identity provider whose users cannot choose that claim's value.
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// The claim with the caller's roles (a string or an array of strings).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim with the caller's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim with the caller's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// More claims forwarded upstream, claim name to header name (`email: X-User-Email`).
    /// These headers are always stripped from client requests first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Refuse revoked tokens: a `jti` or subject deny-list shared by every instance through
    /// the top-level `redis` (see docs/auth.md#revocation). Absent: no revocation check.
    #[serde(default)]
    pub revocation: Option<Revocation>,
}

/// The revocation check of a JWT provider. It runs after the signature and claims checks
/// succeed; its answers are cached in the process for `cache_ttl`, and every instance drops
/// a cached answer as soon as a revocation is published.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Revocation {
    /// How long an answer from Redis (revoked or not) is reused without asking again. It
    /// bounds how stale a check can be when a change notice is lost. `0s`: ask every time.
    /// At most 1m.
    pub cache_ttl: Duration,
    /// What a request gets when Redis cannot answer in time: `deny` (503, fail closed) or
    /// `allow` (let the otherwise valid token through). Either way it is logged once per
    /// outage and counted.
    pub on_error: RevocationOnError,
    /// Time allowed for one check. Default: `redis.timeout`.
    pub timeout: Option<Duration>,
}

impl Default for Revocation {
    fn default() -> Self {
        Self { cache_ttl: Duration::from_secs(2), on_error: RevocationOnError::Deny, timeout: None }
    }
}

/// What an unanswerable revocation check does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RevocationOnError {
    /// Refuse with 503 "credentials cannot be checked right now" (fail closed).
    #[default]
    Deny,
    /// Accept the token as not revoked (fail open).
    Allow,
}

fn default_jwks_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token() -> ByteSize {
    ByteSize::kib(8)
}

fn default_token_cache() -> u32 {
    10_000
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_tenant_claim() -> String {
    "tenant".into()
}

/// JWS algorithms.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// A key given in the config. Give exactly one of `secret`, `pem`, `pem_file` and `jwk`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// Key ID: a token naming a `kid` is checked only with the key of that ID.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key checks; the token's `alg` must equal it.
    pub alg: JwtAlgorithm,
    /// HMAC secret (HS256/384/512), at least 32 bytes. Use `${VAR}` to keep it out of the file.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519), inline.
    #[serde(default)]
    pub pem: Option<String>,
    /// A file holding a PEM public key.
    #[serde(default)]
    pub pem_file: Option<String>,
    /// A public JWK, as a map (`{ kty: EC, crv: P-256, x: ..., y: ... }`).
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub jwk: Option<serde_json::Value>,
}

/// A JWKS endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Jwks {
    /// `https://` (or `http://` on loopback and private networks) URL of the key set.
    pub url: String,
    /// Fetch again this often, so rotated keys are known before tokens use them.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: Duration,
    /// A token with an unknown `kid` triggers a fetch, but at most once in this time, so
    /// random `kid`s cannot make the gateway hammer the identity provider.
    #[serde(default = "default_jwks_min_refresh")]
    pub min_refresh_interval: Duration,
    /// While the endpoint fails, keep using the last good key set for at most this long
    /// after it was fetched.
    #[serde(default = "default_jwks_max_stale")]
    pub max_stale: Duration,
    /// Time allowed for one fetch.
    #[serde(default = "default_jwks_timeout")]
    pub timeout: Duration,
    /// PEM file of CA certificates for an `https://` URL. Default: the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Largest key-set document accepted.
    #[serde(default = "default_jwks_max_bytes")]
    pub max_bytes: ByteSize,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_max_stale() -> Duration {
    Duration::from_secs(86_400)
}

fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_jwks_max_bytes() -> ByteSize {
    ByteSize::kib(512)
}

/// Where a token is read from, in this order: header, cookie, query parameter.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSource {
    /// Header with the token; with `scheme`, the value is `<scheme> <token>`.
    pub header: Option<String>,
    /// Authorization scheme before the token (case-insensitive); empty: the whole value.
    pub scheme: String,
    /// Cookie with the token.
    pub cookie: Option<String>,
    /// Query parameter with the token.
    pub query: Option<String>,
}

impl Default for TokenSource {
    fn default() -> Self {
        Self { header: Some("authorization".into()), scheme: "Bearer".into(), cookie: None, query: None }
    }
}

/// A named caller of the API.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Unique ID: forwarded as the user ID, logged as `userId`, used by authorization.
    pub id: String,
    /// Groups the consumer belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Roles of the consumer.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The consumer's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The consumer's plan (rate limits per plan).
    #[serde(default)]
    pub plan: Option<String>,
    /// API keys, stored as SHA-256 digests (`portico hash-key` prints one). Add and
    /// revoke keys with a reload.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Client certificates that are this consumer (with the `mtls` plugin): a subject as
    /// RFC 4514 text (`CN=billing,O=Example`) or a SAN (`DNS:billing.internal`,
    /// `URI:spiffe://example.org/billing`, `email:ops@example.com`).
    #[serde(default)]
    pub mtls_subjects: Vec<String>,
}

/// One API key of a consumer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// SHA-256 of the key, 64 hex digits.
    pub sha256: String,
    /// A label for logs ("ci-2026"); the key itself is never logged.
    #[serde(default)]
    pub name: Option<String>,
}

/// Headers that carry the caller's identity to upstreams. Client copies of every one of
/// them are removed from every request, on every route, whether it authenticates or not.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    /// The caller's ID (the consumer ID or the token's subject).
    pub user_id: String,
    /// The caller's roles, comma-separated.
    pub roles: String,
    /// The caller's tenant.
    pub tenant: String,
    /// The consumer's plan.
    pub plan: String,
    /// More headers to remove from client requests (headers your services trust).
    pub strip: Vec<String>,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            user_id: "x-user-id".into(),
            roles: "x-user-role".into(),
            tenant: "x-tenant-id".into(),
            plan: "x-consumer-plan".into(),
            strip: Vec::new(),
        }
    }
}

/// The audit log: one JSON line for every refused authentication or authorization (who,
/// what, why; never the credential).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditLog {
    /// Write the audit log at all.
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub output: String,
    /// Lines waiting to be written; past it lines are dropped and counted in
    /// `gateway_audit_log_dropped_total`.
    pub queue_size: usize,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self { enabled: true, output: "stderr".into(), queue_size: 4096 }
    }
}

/// The plugins that apply to a route: its own, and the global ones of kinds it does not
/// set itself.
pub fn effective<'a>(global: &'a [Plugin], route: &'a [Plugin]) -> Vec<&'a Plugin> {
    let mut out: Vec<&Plugin> = route.iter().collect();
    for g in global {
        if !route.iter().any(|r| r.kind() == g.kind()) {
            out.push(g);
        }
    }
    out
}

fn header_ok(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// Checks the plugin-related parts of a config.
pub(crate) fn check(config: &crate::Config, err: &mut impl FnMut(String, String)) {
    check_list("plugins", &config.plugins, config, None, err);
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}].plugins");
        check_list(&p, &r.plugins, config, Some(r), err);
        let all = effective(&config.plugins, &r.plugins);
        // Answers are checked as the upstream sent them; these change them before.
        let checks_answers =
            all.iter().any(|p| matches!(p, Plugin::Validate(v) if v.responses == crate::contract::ResponseCheck::Log));
        let reshapes = all.iter().find_map(|p| match p {
            Plugin::ResponseBody(_) | Plugin::Compression(_) => Some(p.kind()),
            Plugin::Xml(x) if x.response.is_some() => Some(p.kind()),
            _ => None,
        });
        if let (true, Some(kind)) = (checks_answers, reshapes) {
            err(
                p.clone(),
                format!(
                    "validate with responses: log checks the upstream's answers, which {kind} changes first: not both on one route"
                ),
            );
        }
        let authenticates = all.iter().any(|p| matches!(p, Plugin::Jwt(_) | Plugin::ApiKey(_) | Plugin::Mtls(_)));
        if let Some(j) = r.plugins.iter().position(|p| matches!(p, Plugin::Authorize(_)))
            && !authenticates
        {
            err(
                format!("{p}[{j}].authorize"),
                "authorize needs an authentication plugin (jwt, api_key or mtls) on the route or globally".into(),
            );
        } else if let Some(g) = config.plugins.iter().position(|p| matches!(p, Plugin::Authorize(_)))
            && !authenticates
            && !r.plugins.iter().any(|p| matches!(p, Plugin::Authorize(_)))
        {
            err(
                format!("routes[{i}].plugins"),
                format!(
                    "the global authorize (plugins[{g}]) applies here, but this route has no authentication plugin (jwt, api_key or mtls): it would let every request through"
                ),
            );
        }
    }
    for (name, jp) in &config.jwt_providers {
        let p = format!("jwt_providers.{name}");
        check_provider(&p, jp, err);
        if let Some(r) = &jp.revocation {
            check_revocation(&format!("{p}.revocation"), r, config.redis.is_some(), err);
        }
    }
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut digests: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut subjects: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (i, c) in config.consumers.iter().enumerate() {
        let p = format!("consumers[{i}]");
        if c.id.trim().is_empty() {
            err(format!("{p}.id"), "must not be empty".into());
        } else if c.id.len() > 256 || c.id.chars().any(|ch| ch.is_control()) {
            err(format!("{p}.id"), "must be at most 256 characters without control characters".into());
        } else if let Some(first) = ids.insert(c.id.as_str(), i) {
            err(format!("{p}.id"), format!("duplicate consumer id {:?} (also consumers[{first}])", c.id));
        }
        if let Some(plan) = &c.tenant
            && plan.trim().is_empty()
        {
            err(format!("{p}.tenant"), "must not be empty when given".into());
        }
        for (j, m) in c.mtls_subjects.iter().enumerate() {
            if m.trim().is_empty() {
                err(format!("{p}.mtls_subjects[{j}]"), "must not be empty".into());
            } else if let Some(other) = subjects.insert(m.clone(), p.clone()) {
                err(format!("{p}.mtls_subjects[{j}]"), format!("{m:?} is also listed by {other}"));
            }
        }
        for (j, k) in c.api_keys.iter().enumerate() {
            let kp = format!("{p}.api_keys[{j}].sha256");
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                err(kp, "must be 64 hex digits: the SHA-256 of the key (portico hash-key prints it)".into());
            } else if let Some(other) = digests.insert(k.sha256.to_ascii_lowercase(), p.clone()) {
                err(kp, format!("this key is also a key of {other}"));
            }
        }
    }
    let ih = &config.identity_headers;
    let mut seen = std::collections::HashSet::new();
    for (field, h) in [("user_id", &ih.user_id), ("roles", &ih.roles), ("tenant", &ih.tenant), ("plan", &ih.plan)] {
        if !header_ok(h) {
            err(format!("identity_headers.{field}"), format!("{h:?} is not a valid header name"));
        } else if !seen.insert(h.to_ascii_lowercase()) {
            err(format!("identity_headers.{field}"), format!("{h:?} is used twice"));
        } else if h.eq_ignore_ascii_case(&config.request_id.header) {
            err(format!("identity_headers.{field}"), format!("{h:?} is the request ID header (request_id.header)"));
        }
    }
    for (i, h) in ih.strip.iter().enumerate() {
        if !header_ok(h) {
            err(format!("identity_headers.strip[{i}]"), format!("{h:?} is not a valid header name"));
        }
    }
    crate::ratelimit::check_plans(config, err);
    crate::tenants::check(config, err);
    if config.audit_log.output.trim().is_empty() {
        err("audit_log.output".into(), "must be stdout, stderr or a file path".into());
    }
    if config.audit_log.queue_size == 0 {
        err("audit_log.queue_size".into(), "must be at least 1".into());
    }
}

/// The level is gzip's, and every media type is one the plugin can match.
fn check_compression(pp: &str, c: &Compression, err: &mut impl FnMut(String, String)) {
    if !(1..=9).contains(&c.level) {
        err(format!("{pp}.level"), format!("{} is not a gzip level (1 to 9)", c.level));
    }
    if c.content_types.is_empty() {
        err(format!("{pp}.content_types"), "give at least one media type".into());
    }
    for (i, t) in c.content_types.iter().enumerate() {
        let ok = match t.split_once('/') {
            _ if t.starts_with('+') => t.len() > 1 && !t[1..].contains(['/', '+', ' ', ';']),
            Some((ty, sub)) => {
                let token = |s: &str| {
                    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(ty) && (sub == "*" || token(sub))
            }
            None => false,
        };
        if !ok {
            err(
                format!("{pp}.content_types[{i}]"),
                format!("{t:?} is not a media type (type/subtype, type/*, or +suffix)"),
            );
        }
    }
}

fn check_list(
    p: &str,
    list: &[Plugin],
    config: &crate::Config,
    route: Option<&crate::Route>,
    err: &mut impl FnMut(String, String),
) {
    for (i, plugin) in list.iter().enumerate() {
        let kind = plugin.kind();
        let pp = format!("{p}[{i}].{kind}");
        if let Some(first) = list.iter().position(|o| o.kind() == kind)
            && first < i
        {
            err(pp.clone(), format!("{kind} is listed twice (also {p}[{first}])"));
        }
        match plugin {
            Plugin::IpFilter(f) => {
                if f.allow.is_empty() && f.deny.is_empty() {
                    err(pp, "give allow or deny networks".into());
                }
            }
            Plugin::Cors(c) => check_cors(&pp, c, err),
            Plugin::Jwt(j) => {
                if !config.jwt_providers.contains_key(&j.provider) {
                    let known: Vec<&str> = config.jwt_providers.keys().map(String::as_str).collect();
                    let known = if known.is_empty() {
                        "none are defined".into()
                    } else {
                        format!("defined: {}", known.join(", "))
                    };
                    err(format!("{pp}.provider"), format!("unknown jwt provider {:?} ({known})", j.provider));
                }
            }
            Plugin::ApiKey(a) => {
                if a.header.is_none() && a.query.is_none() {
                    err(pp.clone(), "give header or query".into());
                }
                if let Some(h) = &a.header
                    && !header_ok(h)
                {
                    err(format!("{pp}.header"), format!("{h:?} is not a valid header name"));
                }
                if let Some(q) = &a.query
                    && q.is_empty()
                {
                    err(format!("{pp}.query"), "must not be empty".into());
                }
            }
            Plugin::Mtls(_) => {}
            Plugin::Validate(v) => crate::contract::check(&pp, v, err),
            Plugin::Cache(c) => {
                crate::cache::check(&pp, c, config.redis.is_some(), err);
                if let Some(r) = route
                    && (r.respond.is_some() || r.publish.is_some())
                {
                    err(
                        pp.clone(),
                        "cache needs a route that proxies or aggregates (respond and publish answer themselves)".into(),
                    );
                }
            }
            Plugin::RequestHeaders(t) => crate::transform::check_headers(&pp, t, route, true, err),
            Plugin::ResponseHeaders(t) => crate::transform::check_headers(&pp, t, route, false, err),
            Plugin::Query(q) => crate::transform::check_query(&pp, q, route, err),
            Plugin::RequestBody(t) => crate::transform::check_body(&pp, t, route, true, err),
            Plugin::ResponseBody(t) => crate::transform::check_body(&pp, t, route, false, err),
            Plugin::Compression(c) => check_compression(&pp, c, err),
            Plugin::Xml(x) => {
                if x.request.is_none() && x.response.is_none() {
                    err(pp.clone(), "give request or response".into());
                }
                let mut chars = x.root.chars();
                let name = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
                    && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !name {
                    err(format!("{pp}.root"), format!("{:?} is not an XML element name", x.root));
                }
                if x.max_size.get() == 0 {
                    err(format!("{pp}.max_size"), "must be more than 0".into());
                }
            }
            Plugin::RateLimit(r) => crate::ratelimit::check_rate_limit(&pp, r, config, err),
            Plugin::ConcurrencyLimit(c) => crate::ratelimit::check_concurrency(&pp, c, err),
            Plugin::Authorize(a) => {
                match &a.tenant {
                    Some(TenantFrom::Param(name)) => {
                        let captures = route.is_some_and(|r| r.matcher.params().contains(name));
                        if route.is_some() && !captures {
                            err(format!("{pp}.tenant.param"), format!("the route's path does not capture {{{name}}}"));
                        }
                    }
                    Some(TenantFrom::Header(h)) if !header_ok(h) => {
                        err(format!("{pp}.tenant.header"), format!("{h:?} is not a valid header name"));
                    }
                    _ => {}
                }
                for (j, s) in a.scopes.iter().enumerate() {
                    if s.is_empty() || s.contains(' ') {
                        err(format!("{pp}.scopes[{j}]"), format!("{s:?} is not a scope (no spaces)"));
                    }
                }
            }
            Plugin::SecurityHeaders(s) => {
                for (field, v) in [("frame_options", &s.frame_options), ("referrer_policy", &s.referrer_policy)] {
                    if http::HeaderValue::from_str(v).is_err() {
                        err(format!("{pp}.{field}"), "is not a valid header value".into());
                    }
                }
                if let Some(csp) = &s.content_security_policy
                    && (csp.is_empty() || http::HeaderValue::from_str(csp).is_err())
                {
                    err(format!("{pp}.content_security_policy"), "is not a valid header value".into());
                }
                for (j, h) in s.remove.iter().enumerate() {
                    if !header_ok(h) {
                        err(format!("{pp}.remove[{j}]"), format!("{h:?} is not a valid header name"));
                    }
                }
            }
        }
    }
}

/// Checks a CORS origin pattern: `scheme://host[:port]`, the host possibly starting with
/// `*.`.
fn origin_ok(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
        return false;
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    !host.is_empty() && !host.contains('*') && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

fn check_cors(pp: &str, c: &Cors, err: &mut impl FnMut(String, String)) {
    if c.origins.is_empty() {
        err(format!("{pp}.origins"), "list at least one origin (or \"*\")".into());
    }
    for (j, o) in c.origins.iter().enumerate() {
        if o == "*" {
            if c.credentials {
                err(format!("{pp}.origins[{j}]"), "\"*\" cannot be used with credentials: list the origins".into());
            }
        } else if !origin_ok(o) {
            err(
                format!("{pp}.origins[{j}]"),
                format!(
                    "{o:?} is not an origin: write scheme://host[:port], e.g. https://app.example.com or https://*.example.com"
                ),
            );
        }
    }
    for (j, m) in c.methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
            err(format!("{pp}.methods[{j}]"), format!("{m:?} is not an upper-case HTTP method"));
        }
    }
    for (field, list) in [("headers", &c.headers), ("expose_headers", &c.expose_headers)] {
        for (j, h) in list.iter().enumerate() {
            if !header_ok(h) {
                err(format!("{pp}.{field}[{j}]"), format!("{h:?} is not a valid header name"));
            }
        }
    }
    // `*` is a valid header name, so it would be taken literally: a preflight would have
    // to ask for a header named `*`, and browsers read a credentialed `*` as a name too.
    if let Some(j) = c.headers.iter().position(|h| h == "*") {
        err(
            format!("{pp}.headers[{j}]"),
            "\"*\" is not a wildcard here: leave headers empty to allow the headers a preflight asks for".into(),
        );
    }
    if let Some(j) = c.expose_headers.iter().position(|h| h == "*")
        && c.credentials
    {
        err(
            format!("{pp}.expose_headers[{j}]"),
            "\"*\" exposes nothing with credentials (browsers take it as a header name): list the headers".into(),
        );
    }
}

fn check_provider(p: &str, jp: &JwtProvider, err: &mut impl FnMut(String, String)) {
    if jp.issuer.trim().is_empty() {
        err(format!("{p}.issuer"), "must not be empty".into());
    }
    if jp.audiences.is_empty() || jp.audiences.iter().any(|a| a.is_empty()) {
        err(format!("{p}.audiences"), "list at least one audience; tokens must be meant for this API".into());
    }
    if jp.keys.is_empty() && jp.jwks.is_none() {
        err(p.into(), "give keys or jwks".into());
    }
    if jp.algorithms.is_empty() {
        err(format!("{p}.algorithms"), "list at least one algorithm".into());
    }
    if jp.leeway.get() > std::time::Duration::from_secs(300) {
        err(format!("{p}.leeway"), "must be at most 5m".into());
    }
    if jp.max_token_bytes.get() < 256 || jp.max_token_bytes.get() > 64 * 1024 {
        err(format!("{p}.max_token_bytes"), "must be from 256B to 64KiB".into());
    }
    let t = &jp.token;
    if t.header.is_none() && t.cookie.is_none() && t.query.is_none() {
        err(format!("{p}.token"), "give header, cookie or query".into());
    }
    if let Some(h) = &t.header
        && !header_ok(h)
    {
        err(format!("{p}.token.header"), format!("{h:?} is not a valid header name"));
    }
    for (claim, h) in &jp.forward_claims {
        if !header_ok(h) {
            err(format!("{p}.forward_claims.{claim}"), format!("{h:?} is not a valid header name"));
        }
    }
    for (i, k) in jp.keys.iter().enumerate() {
        let kp = format!("{p}.keys[{i}]");
        let given = [k.secret.is_some(), k.pem.is_some(), k.pem_file.is_some(), k.jwk.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            err(kp.clone(), "give exactly one of secret, pem, pem_file and jwk".into());
            continue;
        }
        let hmac = matches!(k.alg, JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512);
        match (&k.secret, hmac) {
            (Some(_), false) => err(format!("{kp}.secret"), format!("{:?} needs a public key, not a secret", k.alg)),
            (None, true) => err(format!("{kp}.alg"), format!("{:?} needs a secret", k.alg)),
            (Some(s), true) if s.len() < 32 => {
                err(format!("{kp}.secret"), "must be at least 32 bytes (RFC 7518 section 3.2)".into());
            }
            _ => {}
        }
    }
    if let Some(j) = &jp.jwks {
        let jp_ = format!("{p}.jwks");
        match j.url.parse::<http::Uri>() {
            Ok(u) => match (u.scheme_str(), u.host()) {
                (Some("https"), Some(_)) => {}
                (Some("http"), Some(h)) if is_local(h) => {}
                (Some("http"), Some(_)) => err(
                    format!("{jp_}.url"),
                    "use https:// (plain http:// only to loopback or private addresses): keys fetched in the clear can be forged".into(),
                ),
                _ => err(format!("{jp_}.url"), format!("{:?} is not an http(s) URL", j.url)),
            },
            Err(e) => err(format!("{jp_}.url"), format!("invalid URL {:?}: {e}", j.url)),
        }
        if j.refresh_interval.get() < std::time::Duration::from_secs(1) {
            err(format!("{jp_}.refresh_interval"), "must be at least 1s".into());
        }
        if j.min_refresh_interval.get() > j.refresh_interval.get() {
            err(format!("{jp_}.min_refresh_interval"), "must be at most refresh_interval".into());
        }
        if j.timeout.get().is_zero() {
            err(format!("{jp_}.timeout"), "must be greater than 0s".into());
        }
        if j.max_stale.get() < j.refresh_interval.get() {
            err(format!("{jp_}.max_stale"), "must be at least refresh_interval".into());
        }
    }
}

fn check_revocation(p: &str, r: &Revocation, have_redis: bool, err: &mut impl FnMut(String, String)) {
    if !have_redis {
        err(p.into(), "revocation needs a top-level redis (the deny-list is shared through it)".into());
    }
    if r.cache_ttl.get() > std::time::Duration::from_secs(60) {
        err(format!("{p}.cache_ttl"), "must be at most 1m: it bounds how long a revoked token may still pass".into());
    }
    if let Some(t) = r.timeout
        && (t.get().is_zero() || t.get() > std::time::Duration::from_secs(10))
    {
        err(format!("{p}.timeout"), "must be greater than 0s and at most 10s".into());
    }
}

/// Loopback or private hosts, where plain HTTP to a key endpoint is tolerated.
fn is_local(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback() || a.is_private(),
        Ok(std::net::IpAddr::V6(a)) => a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => false,
    }
}
