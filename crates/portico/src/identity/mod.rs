//! Who the caller is: consumers (compiled from the config), the [`Identity`] an
//! authentication plugin establishes, and the identity headers sent upstream.
//!
//! Client copies of every identity header are removed from every request before anything
//! else looks at it, on every route, whether it authenticates or not: a client that sends
//! `X-User-ID: admin` never reaches an upstream with it.

pub mod revocation;
pub mod tenants;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use portico_config::{ConfigError, ConfigErrors};

/// A consumer, ready for request time.
#[derive(Debug)]
pub struct ConsumerInfo {
    /// The consumer ID.
    pub id: Arc<str>,
    /// `id` as a header value.
    pub id_header: Option<HeaderValue>,
    /// Groups.
    pub groups: Box<[Box<str>]>,
    /// Roles.
    pub roles: Box<[Box<str>]>,
    /// Roles as one comma-separated header value.
    pub roles_header: Option<HeaderValue>,
    /// Tenant.
    pub tenant: Option<Arc<str>>,
    /// Plan.
    pub plan: Option<Arc<str>>,
}

/// An API key's owner and label.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    /// The consumer.
    pub consumer: Arc<ConsumerInfo>,
    /// The key's label.
    pub name: Option<Arc<str>>,
    /// The key's SHA-256, kept to compare in constant time after the map lookup.
    pub digest: [u8; 32],
}

/// The consumers of a config.
#[derive(Debug, Default)]
pub struct Consumers {
    by_id: HashMap<Box<str>, Arc<ConsumerInfo>>,
    /// API keys by SHA-256. The map's hasher is keyed at random per process, so lookup
    /// timing tells nothing about the stored digests; the digest of the match is then
    /// compared in constant time.
    by_key: HashMap<[u8; 32], KeyOwner>,
    /// Consumers by client-certificate subject or SAN.
    by_cert: HashMap<Box<str>, Arc<ConsumerInfo>>,
}

impl Consumers {
    /// Compiles `consumers` (already validated).
    pub fn compile(list: &[portico_config::Consumer]) -> Result<Self, ConfigErrors> {
        let mut out = Consumers::default();
        let mut errors = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let roles_joined = c.roles.join(",");
            let info = Arc::new(ConsumerInfo {
                id: c.id.as_str().into(),
                id_header: HeaderValue::from_bytes(c.id.as_bytes()).ok(),
                groups: c.groups.iter().map(|g| g.as_str().into()).collect(),
                roles: c.roles.iter().map(|r| r.as_str().into()).collect(),
                roles_header: (!roles_joined.is_empty())
                    .then(|| HeaderValue::from_bytes(roles_joined.as_bytes()).ok())
                    .flatten(),
                tenant: c.tenant.as_deref().map(Into::into),
                plan: c.plan.as_deref().map(Into::into),
            });
            for (j, k) in c.api_keys.iter().enumerate() {
                let Some(digest) = parse_hex32(&k.sha256) else {
                    errors.push(ConfigError::new(
                        format!("consumers[{i}].api_keys[{j}].sha256"),
                        "must be 64 hex digits",
                    ));
                    continue;
                };
                let owner = KeyOwner { consumer: info.clone(), name: k.name.as_deref().map(Into::into), digest };
                out.by_key.insert(digest, owner);
            }
            for m in &c.mtls_subjects {
                out.by_cert.insert(m.as_str().into(), info.clone());
            }
            out.by_id.insert(c.id.as_str().into(), info);
        }
        if errors.is_empty() { Ok(out) } else { Err(ConfigErrors(errors)) }
    }

    /// The consumer with this ID.
    pub fn get(&self, id: &str) -> Option<&Arc<ConsumerInfo>> {
        self.by_id.get(id)
    }

    /// The consumer a client certificate subject or SAN names.
    pub fn by_certificate(&self, name: &str) -> Option<&Arc<ConsumerInfo>> {
        self.by_cert.get(name)
    }

    /// The owner of an API key.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&KeyOwner> {
        let digest = sha256(key);
        let owner = self.by_key.get(&digest)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(&owner.digest, &digest).ok()?;
        Some(owner)
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// What a verified token says about its bearer.
#[derive(Debug, Default)]
pub struct TokenFacts {
    /// Roles claim.
    pub roles: Vec<String>,
    /// Groups claim.
    pub groups: Vec<String>,
    /// Scopes (`scope`, space-separated, or `scp`).
    pub scopes: Vec<String>,
    /// Tenant claim.
    pub tenant: Option<String>,
    /// Claims forwarded as headers (`forward_claims`).
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// The token's `jti`, for revocation.
    pub jti: Option<String>,
    /// The token's `iat`, for revocation of a subject's older tokens.
    pub iat: Option<u64>,
    /// The other claims (rate-limit keys may name one).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The authenticated caller of one request.
#[derive(Debug)]
pub struct Identity {
    /// How the caller authenticated: `jwt`, `api_key` or `mtls`.
    pub method: &'static str,
    /// The user ID: the consumer's ID or the token's subject.
    pub user_id: Arc<str>,
    /// The consumer, when the caller is (or maps to) one.
    pub consumer: Option<Arc<ConsumerInfo>>,
    /// The token's facts, when authenticated by a token.
    pub token: Option<Arc<TokenFacts>>,
    /// The API key's label, when authenticated by a key.
    pub key_name: Option<Arc<str>>,
}

impl Identity {
    /// Groups, from the consumer and the token.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        let c = self.consumer.iter().flat_map(|c| c.groups.iter().map(|g| &**g));
        c.chain(self.token.iter().flat_map(|t| t.groups.iter().map(String::as_str)))
    }

    /// Roles, from the consumer and the token.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        let c = self.consumer.iter().flat_map(|c| c.roles.iter().map(|r| &**r));
        c.chain(self.token.iter().flat_map(|t| t.roles.iter().map(String::as_str)))
    }

    /// Scopes of the token.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.token.iter().flat_map(|t| t.scopes.iter().map(String::as_str))
    }

    /// The tenant: the token's claim, else the consumer's.
    pub fn tenant(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.tenant.as_deref()).or_else(|| self.consumer.as_ref()?.tenant.as_deref())
    }

    /// The consumer's plan.
    pub fn plan(&self) -> Option<&str> {
        self.consumer.as_ref()?.plan.as_deref()
    }
}

/// The bit of [`IdentityHeaders::lengths`] for a name.
fn length_bit(name: &str) -> u64 {
    1 << name.len().min(63)
}

/// The compiled `identity_headers`, plus every other header the gateway vouches for
/// (claims forwarded by JWT providers).
#[derive(Debug)]
pub struct IdentityHeaders {
    user_id: HeaderName,
    roles: HeaderName,
    tenant: HeaderName,
    plan: HeaderName,
    /// Everything removed from client requests, the four above included.
    strip: Box<[HeaderName]>,
    /// Bit `n` set when a name in `strip` is `n` bytes long (bit 63: 63 or more): a request
    /// with no field of such a length (and none with `_`) has nothing to strip.
    lengths: u64,
}

impl IdentityHeaders {
    /// Compiles the config's identity headers; `more` are other trusted header names.
    pub fn compile(
        cfg: &portico_config::IdentityHeaders,
        more: impl Iterator<Item = HeaderName>,
    ) -> Result<Self, ConfigErrors> {
        let name = |field: &str, v: &str| {
            HeaderName::from_bytes(v.as_bytes()).map_err(|_| {
                ConfigErrors(vec![ConfigError::new(format!("identity_headers.{field}"), "invalid header name")])
            })
        };
        let user_id = name("user_id", &cfg.user_id)?;
        let roles = name("roles", &cfg.roles)?;
        let tenant = name("tenant", &cfg.tenant)?;
        let plan = name("plan", &cfg.plan)?;
        let mut strip = vec![user_id.clone(), roles.clone(), tenant.clone(), plan.clone()];
        for (i, h) in cfg.strip.iter().enumerate() {
            strip.push(name(&format!("strip[{i}]"), h)?);
        }
        strip.extend(more);
        strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();
        let lengths = strip.iter().fold(0, |bits, n| bits | length_bit(n.as_str()));
        Ok(Self { user_id, roles, tenant, plan, strip: strip.into(), lengths })
    }

    /// Sets the tenant header (the tenant as `tenants.from` found it).
    pub fn set_tenant(&self, tenant: &str, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_bytes(tenant.as_bytes()) {
            headers.insert(&self.tenant, v);
        }
    }

    /// Removes client copies of every identity header.
    #[inline]
    pub fn strip(&self, headers: &mut HeaderMap) {
        // One pass over the request's names first: most requests have no field as long as
        // any identity header and none with `_`, and then no name is hashed (removing each
        // identity header by name cost about 150 instructions a request).
        if !headers.keys().any(|k| self.lengths & length_bit(k.as_str()) != 0 || k.as_str().contains('_')) {
            return;
        }
        crate::forwarded::remove_present(headers, &self.strip);
        // CGI-style servers read `X_User_ID` as `X-User-ID`: such spellings go too.
        crate::forwarded::remove_cgi_spellings(headers, &self.strip);
    }

    /// Every identity header the gateway removes from client requests and may set itself
    /// (the caller's ID, roles, tenant, plan, forwarded claims, certificate fields).
    pub fn names(&self) -> &[HeaderName] {
        &self.strip
    }

    /// Adds the caller's identity to the upstream request.
    pub fn apply(&self, id: &Identity, headers: &mut HeaderMap) {
        match id.consumer.as_ref().filter(|c| *c.id == *id.user_id).and_then(|c| c.id_header.clone()) {
            Some(v) => headers.insert(&self.user_id, v),
            None => match HeaderValue::from_bytes(id.user_id.as_bytes()) {
                Ok(v) => headers.insert(&self.user_id, v),
                Err(_) => None,
            },
        };
        let token_roles = id.token.as_ref().is_some_and(|t| !t.roles.is_empty());
        if !token_roles && let Some(v) = id.consumer.as_ref().and_then(|c| c.roles_header.clone()) {
            headers.insert(&self.roles, v);
        } else if token_roles {
            let joined = id.roles().collect::<Vec<_>>().join(",");
            if let Ok(v) = HeaderValue::from_bytes(joined.as_bytes()) {
                headers.insert(&self.roles, v);
            }
        }
        // The tenant header is set from the tenant `tenants.from` found: see `set_tenant`.
        if let Some(v) = id.plan().and_then(|p| HeaderValue::from_bytes(p.as_bytes()).ok()) {
            headers.insert(&self.plan, v);
        }
        if let Some(t) = &id.token {
            for (name, value) in &t.forward {
                headers.insert(name, value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumers() -> Consumers {
        let yaml = format!(
            "[{{ id: ci, roles: [deployer, reader], groups: [ops], tenant: acme, api_keys: [{{ sha256: {} }}] }}]",
            hex(&sha256(b"s3cret-key"))
        );
        let list: Vec<portico_config::Consumer> = serde_saphyr::from_str(&yaml).unwrap();
        Consumers::compile(&list).unwrap()
    }

    #[test]
    fn api_keys_are_found_by_digest_only() {
        let c = consumers();
        assert_eq!(&*c.by_api_key(b"s3cret-key").unwrap().consumer.id, "ci");
        assert!(c.by_api_key(b"s3cret-kez").is_none());
        assert!(c.by_api_key(b"").is_none());
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn identity_headers_replace_client_copies() {
        let cfg = portico_config::IdentityHeaders::default();
        let ih = IdentityHeaders::compile(&cfg, std::iter::once(HeaderName::from_static("x-user-email"))).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("admin"));
        h.insert("x-user-email", HeaderValue::from_static("forged@example.com"));
        h.insert("x-tenant-id", HeaderValue::from_static("other"));
        h.insert("x_user_id", HeaderValue::from_static("admin"));
        h.insert("x-user_role", HeaderValue::from_static("admin"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        ih.strip(&mut h);
        assert_eq!(h.len(), 1);
        let c = consumers();
        let consumer = c.get("ci").cloned();
        let id = Identity { method: "api_key", user_id: "ci".into(), consumer, token: None, key_name: None };
        ih.apply(&id, &mut h);
        ih.set_tenant(id.tenant().unwrap(), &mut h);
        assert_eq!(h["x-user-id"], "ci");
        assert_eq!(h["x-user-role"], "deployer,reader");
        assert_eq!(h["x-tenant-id"], "acme");
        assert!(h.get("x-user-email").is_none());
    }

    #[test]
    fn each_identity_header_alone_is_stripped_and_other_fields_kept() {
        let long = "x-".to_owned() + &"l".repeat(70);
        let cfg = portico_config::IdentityHeaders { strip: vec![long.clone()], ..Default::default() };
        let ih = IdentityHeaders::compile(&cfg, std::iter::empty()).unwrap();
        for name in ["x-user-id", "x-user-role", "x-tenant-id", "x-consumer-plan", long.as_str(), "X_TENANT_ID"] {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static("a.test"));
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("forged"));
            ih.strip(&mut h);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"], "{name}");
        }
        // Fields of the same lengths that are not identity headers stay.
        let mut h = HeaderMap::new();
        for name in ["x-other-1", "content-type", "x-unrelated", "x-a-b-c-d"] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        ih.strip(&mut h);
        assert_eq!(h.len(), 4);
    }
}
