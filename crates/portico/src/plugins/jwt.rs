//! JWT authentication: a provider's keys (from the config and from a JWKS endpoint), and
//! the check of a token against them.
//!
//! The algorithm is pinned per key, never taken from the token: a key given in the config
//! checks exactly its `alg`; a JWKS key checks its own `alg`, or, when it names none, the
//! provider's `algorithms` that fit its key type. Symmetric (`oct`) keys are never taken
//! from a JWKS document. `exp`, `iss` and `aud` are always required; `nbf` and `iat` are
//! checked when present; all with the provider's leeway.
//!
//! The JWKS is fetched at start and refreshed in the background every `refresh_interval`.
//! A token naming an unknown `kid` triggers one early fetch, at most once per
//! `min_refresh_interval` (single flight: concurrent requests wait for the same fetch).
//! When the endpoint fails, the last good key set keeps serving for up to `max_stale`
//! after it was fetched; a blip at the identity provider never turns valid tokens into 401s.
//!
//! With `revocation`, a token that passed every check is then looked up in the shared
//! deny-list ([`super::revocation`]): revoked → 401 "token revoked"; Redis unreachable →
//! 503 or pass, as `on_error` says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portico_config::{ConfigError, JwtAlgorithm};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::hooks::{AccessCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::error::{Challenge, ErrorKind, GatewayError};
use crate::identity::{Consumers, Identity, TokenFacts};

/// At most this many keys are tried for a token without `kid`.
const MAX_KEYS_TRIED: usize = 8;

/// A key and the validation rules that go with it.
pub(crate) struct Key {
    /// Whether it came from the JWKS (rather than the config).
    jwks: bool,
    kid: Option<Box<str>>,
    key: DecodingKey,
    validation: Validation,
}

impl Key {
    /// The key's ID and the algorithms it verifies (for the fuzz targets).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn describe(&self) -> (Option<&str>, &[Algorithm]) {
        (self.kid.as_deref(), &self.validation.algorithms)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algorithms", &self.validation.algorithms).finish()
    }
}

/// A fetched key set.
#[derive(Debug)]
struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
    /// SHA-256 of the document, to tell a changed set from the same one fetched again.
    digest: [u8; 32],
}

/// A JWT provider, ready to check tokens. Lives across reloads while its definition (and
/// the key files it names) stay the same, so its JWKS cache survives.
pub struct JwtProvider {
    /// Name (a key of `jwt_providers`).
    pub name: Arc<str>,
    /// The config it was built from.
    pub definition: portico_config::JwtProvider,
    /// Contents of the key files it names, to notice a change on reload.
    pub files: Vec<Vec<u8>>,
    static_keys: Vec<Key>,
    jwks: Option<Jwks>,
    header: Option<HeaderName>,
    scheme: Box<str>,
    cookie: Option<Box<str>>,
    query: Option<Box<str>>,
    max_token: usize,
    leeway: u64,
    required: Box<[Box<str>]>,
    forward: Box<[(Box<str>, HeaderName)]>,
    revocation: Option<crate::identity::revocation::RevocationCheck>,
    /// Tokens verified before, by their exact text. A cached token is still checked for
    /// revocation on every request: only the signature and claims checks are remembered.
    verified: Option<quick_cache::sync::Cache<Box<str>, Arc<Verified>>>,
}

/// A token that passed every check, remembered until its `exp` or a new key set.
#[derive(Debug)]
struct Verified {
    subject: Arc<str>,
    facts: Arc<TokenFacts>,
    exp: u64,
    /// The JWKS generation it was checked against: a new key set (a key withdrawn)
    /// invalidates it.
    generation: u64,
    /// Checked with a JWKS key: trusted only while that set is not older than `max_stale`.
    by_jwks: bool,
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider").field("name", &self.name).field("keys", &self.static_keys.len()).finish()
    }
}

/// The JWKS endpoint of a provider and its cache.
struct Jwks {
    url: Uri,
    settings: portico_config::Jwks,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    algorithms: Vec<Algorithm>,
    base: Validation,
    set: ArcSwapOption<KeySet>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last fetch started (0: never).
    last_attempt_ms: AtomicU64,
    /// Bumped whenever a new key set is stored.
    generation: AtomicU64,
    /// Held while a fetch runs: later callers wait for it instead of starting their own.
    fetching: tokio::sync::Mutex<()>,
    fetched: tokio::sync::watch::Sender<u64>,
    ok: Counter,
    failed: Counter,
    last_success: Gauge,
}

/// What checking a request's token found.
#[derive(Debug)]
pub enum Checked {
    /// The request carries no token for this provider.
    Absent,
    /// A valid token.
    Valid(Identity),
}

fn alg(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn invalid(reason: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::Unauthorized(Challenge::BearerInvalid, reason))
}

/// The public reason for a token that jsonwebtoken refused.
fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not valid yet",
        K::InvalidIssuer => "wrong token issuer",
        K::InvalidAudience => "wrong token audience",
        K::InvalidSignature => "invalid token signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => "token algorithm not allowed",
        K::MissingRequiredClaim(_) => "token lacks a required claim",
        K::InvalidKeyFormat => "token key unusable",
        _ => "malformed token",
    }
}

impl JwtProvider {
    /// Builds a provider from its (validated) config. Key files are read here.
    pub fn new(
        name: &str,
        def: &portico_config::JwtProvider,
        metrics: &crate::observe::Metrics,
    ) -> Result<Self, ConfigError> {
        let p = format!("jwt_providers.{name}");
        let base = base_validation(def);
        let mut static_keys = Vec::new();
        for (i, k) in def.keys.iter().enumerate() {
            let kp = format!("{p}.keys[{i}]");
            let a = alg(k.alg);
            let key = static_key(k, a).map_err(|m| ConfigError::new(kp.clone(), m))?;
            if key.family() != a.family() {
                return Err(ConfigError::new(format!("{kp}.alg"), format!("{:?} does not fit this key's type", k.alg)));
            }
            let mut validation = base.clone();
            validation.algorithms = vec![a];
            static_keys.push(Key { jwks: false, kid: k.kid.as_deref().map(Into::into), key, validation });
        }
        let jwks = match &def.jwks {
            None => None,
            Some(j) => {
                let url: Uri = j
                    .url
                    .parse()
                    .map_err(|e| ConfigError::new(format!("{p}.jwks.url"), format!("invalid URL: {e}")))?;
                let roots = crate::upstream::tls::root_store(j.ca.as_deref(), name)
                    .map_err(|m| ConfigError::new(format!("{p}.jwks.ca"), m))?;
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ConfigError::new(format!("{p}.jwks"), format!("TLS setup failed: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(j.timeout.get()));
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = Client::builder(TokioExecutor::new()).build(connector);
                let [ok, failed] = metrics.jwks_fetches(name);
                Some(Jwks {
                    url,
                    settings: j.clone(),
                    client,
                    algorithms: def.algorithms.iter().map(|a| alg(*a)).collect(),
                    base: base.clone(),
                    set: ArcSwapOption::empty(),
                    epoch: Instant::now(),
                    last_attempt_ms: AtomicU64::new(0),
                    generation: AtomicU64::new(0),
                    fetching: tokio::sync::Mutex::new(()),
                    fetched: tokio::sync::watch::channel(0).0,
                    ok,
                    failed,
                    last_success: metrics.jwks_last_success(name),
                })
            }
        };
        let t = &def.token;
        let header = match &t.header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ConfigError::new(format!("{p}.token.header"), "invalid header name"))?,
            ),
            None => None,
        };
        let mut forward = Vec::new();
        for (claim, h) in &def.forward_claims {
            let hn = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ConfigError::new(format!("{p}.forward_claims.{claim}"), "invalid header name"))?;
            forward.push((claim.as_str().into(), hn));
        }
        Ok(Self {
            name: name.into(),
            definition: def.clone(),
            files: files_fingerprint(def),
            static_keys,
            jwks,
            header,
            scheme: t.scheme.as_str().into(),
            cookie: t.cookie.as_deref().map(Into::into),
            query: t.query.as_deref().map(Into::into),
            max_token: usize::try_from(def.max_token_bytes.get()).unwrap_or(usize::MAX),
            leeway: def.leeway.get().as_secs(),
            required: def.required_claims.iter().map(|c| c.as_str().into()).collect(),
            forward: forward.into(),
            revocation: None,
            verified: (def.token_cache_size > 0).then(|| quick_cache::sync::Cache::new(def.token_cache_size as usize)),
        })
    }

    /// With a revocation check (after every other check succeeds).
    pub fn with_revocation(self, revocation: Option<crate::identity::revocation::RevocationCheck>) -> Self {
        Self { revocation, ..self }
    }

    /// Header names this provider vouches for (its `forward_claims`).
    pub fn forwarded_headers(&self) -> impl Iterator<Item = HeaderName> + '_ {
        self.forward.iter().map(|(_, h)| h.clone())
    }

    /// The token in a request, if any.
    fn token<'r>(&self, headers: &'r HeaderMap, uri: &'r Uri) -> Option<&'r str> {
        if let Some(h) = &self.header
            && let Some(v) = headers.get(h).and_then(|v| v.to_str().ok())
        {
            if self.scheme.is_empty() {
                return Some(v.trim());
            }
            if let Some((scheme, rest)) = v.split_once(' ')
                && scheme.eq_ignore_ascii_case(&self.scheme)
            {
                return Some(rest.trim());
            }
        }
        if let Some(name) = &self.cookie {
            for v in headers.get_all(http::header::COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=')
                        && k == &**name
                    {
                        return Some(val);
                    }
                }
            }
        }
        if let Some(name) = &self.query {
            for pair in uri.query().unwrap_or("").split('&') {
                if let Some((k, val)) = pair.split_once('=')
                    && k == &**name
                {
                    return Some(val);
                }
            }
        }
        None
    }

    /// Checks the request's token.
    pub async fn check(&self, headers: &HeaderMap, uri: &Uri, consumers: &Consumers) -> Result<Checked, GatewayError> {
        let Some(token) = self.token(headers, uri) else { return Ok(Checked::Absent) };
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        if token.len() > self.max_token {
            return Err(invalid("token too large"));
        }
        let generation = self.jwks.as_ref().map_or(0, |j| j.generation.load(Ordering::Relaxed));
        if let Some(cache) = &self.verified
            && let Some(v) = cache.get(token)
            && v.generation == generation
            && jsonwebtoken::get_current_timestamp() <= v.exp.saturating_add(self.leeway)
            && (!v.by_jwks || self.jwks.as_ref().is_some_and(|j| j.current().is_some()))
        {
            self.not_revoked(&v.subject, &v.facts).await?;
            return Ok(self.valid(v.subject.clone(), v.facts.clone(), consumers));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let mut refreshed = false;
        let (claims, by_jwks) = loop {
            match self.verify(token, &header) {
                Ok(found) => break found,
                Err(Lookup::NoKey { kid, set_missing }) => match &self.jwks {
                    Some(j) if !refreshed && (kid || set_missing) => {
                        refreshed = true;
                        j.refresh_for_unknown_kid().await;
                    }
                    Some(_) if set_missing => return Err(GatewayError::new(ErrorKind::KeysUnavailable)),
                    _ if kid => return Err(invalid("unknown token key")),
                    _ => return Err(invalid("token algorithm not allowed")),
                },
                Err(Lookup::Failed(e)) => return Err(e),
            }
        };
        let (subject, facts, exp) = self.facts(claims)?;
        if let Some(cache) = &self.verified {
            let v = Verified { subject: subject.clone(), facts: facts.clone(), exp, generation, by_jwks };
            cache.insert(token.into(), Arc::new(v));
        }
        self.not_revoked(&subject, &facts).await?;
        Ok(self.valid(subject, facts, consumers))
    }

    /// The revocation check, when the provider has one: the last check, after the
    /// signature and every claim passed (freshly or from the verified-token cache).
    async fn not_revoked(&self, subject: &str, facts: &TokenFacts) -> Result<(), GatewayError> {
        match &self.revocation {
            Some(r) => r.check(&self.name, facts.jti.as_deref(), subject, facts.iat).await,
            None => Ok(()),
        }
    }

    fn valid(&self, subject: Arc<str>, facts: Arc<TokenFacts>, consumers: &Consumers) -> Checked {
        let consumer = self
            .definition
            .consumer_claim
            .as_ref()
            .and_then(|c| facts.claims.get(c))
            .and_then(Value::as_str)
            .and_then(|id| consumers.get(id))
            .cloned();
        Checked::Valid(Identity { method: "jwt", user_id: subject, consumer, token: Some(facts), key_name: None })
    }

    /// The token's claims and whether a JWKS key verified it.
    fn verify(&self, token: &str, header: &jsonwebtoken::Header) -> Result<(Map<String, Value>, bool), Lookup> {
        // The JWKS set in force: none when never fetched or older than `max_stale`.
        let fetched = self.jwks.as_ref().and_then(|j| j.current());
        let all = self.static_keys.iter().chain(fetched.iter().flat_map(|s| s.keys.iter()));
        let mut tried = 0;
        let mut last_err = None;
        let mut kid_matched = false;
        for key in all {
            let fits = match (&header.kid, &key.kid) {
                (Some(want), Some(have)) => **have == **want,
                (Some(_), None) => false,
                (None, _) => true,
            };
            if !fits {
                continue;
            }
            if !key.validation.algorithms.contains(&header.alg) {
                // The named key exists but pins another algorithm: key confusion.
                kid_matched |= header.kid.is_some();
                continue;
            }
            tried += 1;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => return Ok((data.claims, key.jwks)),
                // A signature that does not match one of several candidate keys: try the
                // next. Any other failure is about the token itself.
                Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature && header.kid.is_none() => {
                    last_err = Some(e);
                }
                Err(e) => return Err(Lookup::Failed(invalid(reason(&e)))),
            }
            if tried >= MAX_KEYS_TRIED {
                break;
            }
        }
        match last_err {
            Some(e) => Err(Lookup::Failed(invalid(reason(&e)))),
            None if kid_matched => Err(Lookup::Failed(invalid("token algorithm not allowed"))),
            None => {
                Err(Lookup::NoKey { kid: header.kid.is_some(), set_missing: self.jwks.is_some() && fetched.is_none() })
            }
        }
    }

    /// What a verified token's claims say: subject, facts and `exp`.
    fn facts(&self, mut claims: Map<String, Value>) -> Result<(Arc<str>, Arc<TokenFacts>, u64), GatewayError> {
        for c in &*self.required {
            if claims.get(&**c).is_none_or(Value::is_null) {
                return Err(invalid("token lacks a required claim"));
            }
        }
        let mut iat = None;
        if let Some(v) = claims.get("iat") {
            let now = jsonwebtoken::get_current_timestamp();
            match v.as_f64() {
                Some(t) if t > (now + self.leeway) as f64 => return Err(invalid("token issued in the future")),
                Some(t) => iat = Some(t.max(0.0) as u64),
                None => return Err(invalid("malformed token")),
            }
        }
        // Present and numeric: jsonwebtoken required and checked it.
        let exp = claims.get("exp").and_then(Value::as_f64).map_or(0, |t| t.max(0.0) as u64);
        let subject = match claims.get(&self.definition.subject_claim) {
            // Forwarded in a header: no control characters (UTF-8 is sent as is).
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) => s.clone(),
            _ => return Err(invalid("token has no subject")),
        };
        let strings = |v: Option<Value>| -> Vec<String> {
            match v {
                Some(Value::String(s)) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_owned).collect(),
                Some(Value::Array(a)) => a.into_iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            }
        };
        let mut facts = TokenFacts {
            roles: strings(claims.remove(&self.definition.roles_claim)),
            groups: strings(claims.remove(&self.definition.groups_claim)),
            tenant: match claims.get(&self.definition.tenant_claim) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            },
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            iat,
            ..TokenFacts::default()
        };
        facts.scopes = match claims.get("scope") {
            Some(Value::String(s)) => s.split(' ').filter(|x| !x.is_empty()).map(str::to_owned).collect(),
            _ => strings(claims.remove("scp")),
        };
        for (claim, header) in &*self.forward {
            let text = match claims.get(&**claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_bytes(text.as_bytes()) {
                facts.forward.push((header.clone(), v));
            }
        }
        facts.claims = claims;
        Ok((subject.into(), Arc::new(facts), exp))
    }
}

enum Lookup {
    /// No key fits the token: it names an unknown `kid`, or the JWKS set is missing.
    NoKey {
        kid: bool,
        set_missing: bool,
    },
    Failed(GatewayError),
}

fn base_validation(def: &portico_config::JwtProvider) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = def.leeway.get().as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[def.issuer.as_str()]);
    v.set_audience(&def.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn static_key(k: &portico_config::JwtKey, a: Algorithm) -> Result<DecodingKey, String> {
    use jsonwebtoken::AlgorithmFamily as F;
    if let Some(secret) = &k.secret {
        return DecodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("unusable secret: {e}"));
    }
    if let Some(jwk) = &k.jwk {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).map_err(|e| format!("not a JWK: {e}"))?;
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err("a jwk key must be a public key; give HMAC secrets as secret".into());
        }
        return DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable JWK: {e}"));
    }
    let pem = match (&k.pem, &k.pem_file) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?,
        (None, None) => return Err("give secret, pem, pem_file or jwk".into()),
    };
    let parsed = match a.family() {
        F::Rsa => DecodingKey::from_rsa_pem(&pem),
        F::Ec => DecodingKey::from_ec_pem(&pem),
        F::Ed => DecodingKey::from_ed_pem(&pem),
        F::Hmac => return Err("HMAC algorithms take a secret".into()),
    };
    parsed.map_err(|e| format!("not a PEM public key for {a:?}: {e}"))
}

/// The contents of the key files a provider names.
pub fn files_fingerprint(def: &portico_config::JwtProvider) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> =
        def.keys.iter().filter_map(|k| k.pem_file.as_ref()).map(|p| std::fs::read(p).unwrap_or_default()).collect();
    if let Some(ca) = def.jwks.as_ref().and_then(|j| j.ca.as_ref()) {
        out.push(std::fs::read(ca).unwrap_or_default());
    }
    out
}

impl Jwks {
    /// The key set in force: the last good one, while it is not older than `max_stale`.
    fn current(&self) -> Option<Arc<KeySet>> {
        let set = self.set.load_full()?;
        (set.fetched.elapsed() <= self.settings.max_stale.get()).then_some(set)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// An unknown `kid`: fetch again unless a fetch started within `min_refresh_interval`;
    /// either way wait (bounded) for the fetch in progress, if any.
    async fn refresh_for_unknown_kid(&self) {
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        let cooldown = u64::try_from(self.settings.min_refresh_interval.get().as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || self.now_ms().saturating_sub(last) >= cooldown;
        let wait = self.settings.timeout.get() + Duration::from_millis(100);
        if due {
            let _ = tokio::time::timeout(wait, self.fetch_once(Some(last))).await;
        } else {
            // A fetch may be running: let it finish rather than failing the request early.
            let _ = tokio::time::timeout(wait, self.fetching.lock()).await;
        }
    }

    /// Fetches the key set, unless another caller fetched it since `seen` (single flight).
    async fn fetch_once(&self, seen: Option<u64>) {
        let _guard = self.fetching.lock().await;
        if let Some(seen) = seen
            && self.last_attempt_ms.load(Ordering::Relaxed) != seen
        {
            return;
        }
        self.last_attempt_ms.store(self.now_ms(), Ordering::Relaxed);
        match self.fetch().await {
            Ok(set) => {
                self.ok.inc();
                self.last_success.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                );
                tracing::debug!(url = %self.url, keys = set.keys.len(), "JWKS fetched");
                // Only a different key set invalidates the tokens verified with the old one:
                // the same document fetched again keeps them.
                let changed = self.set.load().as_ref().is_none_or(|old| old.digest != set.digest);
                self.set.store(Some(Arc::new(set)));
                if changed {
                    self.generation.fetch_add(1, Ordering::Relaxed);
                }
                self.fetched.send_modify(|n| *n += 1);
            }
            Err(e) => {
                self.failed.inc();
                let stale = self.set.load().as_ref().map(|s| s.fetched.elapsed());
                tracing::warn!(url = %self.url, error = %e, serving_keys_fetched_ago = ?stale, "JWKS fetch failed");
                self.fetched.send_modify(|n| *n += 1);
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let timeout = self.settings.timeout.get();
        let res = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| format!("request failed: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let max = usize::try_from(self.settings.max_bytes.get()).unwrap_or(usize::MAX);
        let body = tokio::time::timeout(timeout, Limited::new(res.into_body(), max).collect())
            .await
            .map_err(|_| "body too slow".to_owned())?
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let keys = keys_of_set(&body, &self.algorithms, &self.base)?;
        Ok(KeySet { keys, fetched: Instant::now(), digest: crate::identity::sha256(&body) })
    }
}

/// The usable signing keys of a JWKS document (what an identity provider serves): each
/// taking the provider's `algorithms` of its family, or its own `alg`. `Err` when the
/// document is not a JWK set or has no usable key.
pub(crate) fn keys_of_set(body: &[u8], algorithms: &[Algorithm], base: &Validation) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let keys: Vec<Key> = set.keys.iter().filter_map(|jwk| key_of(jwk, algorithms, base)).collect();
    if keys.is_empty() {
        return Err("no usable signing key in the set".into());
    }
    Ok(keys)
}

/// A usable key from a JWK, or `None` (encryption keys, symmetric keys, unknown types).
fn key_of(jwk: &Jwk, algorithms: &[Algorithm], base: &Validation) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm.map(Algorithm::try_from) {
        Some(Ok(a)) if a.family() == key.family() => vec![a],
        Some(_) => return None,
        None => algorithms.iter().copied().filter(|a| a.family() == key.family()).collect(),
    };
    if algorithms.is_empty() {
        return None;
    }
    let mut validation = base.clone();
    validation.algorithms = algorithms;
    Some(Key { jwks: true, kid: jwk.common.key_id.as_deref().map(Into::into), key, validation })
}

/// A compiled `jwt` plugin: the provider it names (shared with every route that names it,
/// and kept across reloads with its JWKS cache).
#[derive(Debug)]
pub struct JwtAuth(Arc<JwtProvider>);

impl JwtAuth {
    /// The plugin for `provider`.
    pub fn new(provider: Arc<JwtProvider>) -> Self {
        Self(provider)
    }
}

impl Hooks for JwtAuth {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, ..Phases::default() }
    }

    fn authenticates(&self) -> bool {
        true
    }

    fn challenge(&self) -> Option<Challenge> {
        Some(Challenge::Bearer)
    }

    async fn access(&self, req: &RequestView<'_>, cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        let found = self.0.check(req.headers, req.uri, cx.consumers).await.map(|c| match c {
            Checked::Absent => None,
            Checked::Valid(id) => Some(id),
        });
        state.authenticated(found, self.kind())
    }
}

/// Starts the background refresh of a provider's JWKS (stops when the provider is
/// dropped) and returns a receiver that changes after each fetch attempt.
pub fn spawn(p: &Arc<JwtProvider>) -> Option<tokio::sync::watch::Receiver<u64>> {
    let j = p.jwks.as_ref()?;
    let rx = j.fetched.subscribe();
    let weak: Weak<JwtProvider> = Arc::downgrade(p);
    tokio::spawn(async move {
        loop {
            let Some(p) = weak.upgrade() else { return };
            let Some(j) = &p.jwks else { return };
            let seen = j.last_attempt_ms.load(Ordering::Relaxed);
            j.fetch_once(Some(seen)).await;
            // After a failure, try again sooner than the regular refresh.
            let next = match j.set.load().as_ref() {
                Some(s) if s.fetched.elapsed() < Duration::from_secs(1) => j.settings.refresh_interval.get(),
                _ => j.settings.min_refresh_interval.get().min(j.settings.refresh_interval.get()),
            };
            drop(p);
            tokio::time::sleep(next.max(Duration::from_millis(200))).await;
        }
    });
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: &str) -> JwtProvider {
        let def: portico_config::JwtProvider = serde_saphyr::from_str(yaml).unwrap();
        JwtProvider::new("t", &def, &crate::observe::Metrics::new()).unwrap()
    }

    #[test]
    fn the_token_is_read_from_header_cookie_or_query() {
        let p = provider(
            "{ issuer: i, audiences: [a], keys: [{ alg: HS256, secret: 0123456789abcdef0123456789abcdef }], token: { header: authorization, scheme: Bearer, cookie: jwt, query: access_token } }",
        );
        let uri: Uri = "/x?a=1&access_token=qqq".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(p.token(&h, &uri), Some("qqq"));
        h.insert("cookie", HeaderValue::from_static("a=b; jwt=ccc"));
        assert_eq!(p.token(&h, &uri), Some("ccc"));
        h.insert("authorization", HeaderValue::from_static("bearer  hhh"));
        assert_eq!(p.token(&h, &uri), Some("hhh"));
        h.insert("authorization", HeaderValue::from_static("Basic xyz"));
        assert_eq!(p.token(&h, &uri), Some("ccc"));
    }
}
