//! Authorization per route: who may call it, by consumer, group, role, scope and tenant.
//!
//! Order of checks: no identity (no credentials) is 401 unless `anonymous: true`; then
//! the deny lists (403), the allow lists (any one entry of `consumers`, `groups` or
//! `roles` suffices; all empty means any authenticated caller), every required scope, and
//! the tenant named by the request.

use http::{HeaderMap, HeaderName};

use super::hooks::{AccessCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::error::{Challenge, ErrorKind, GatewayError};
use crate::identity::Identity;
use crate::router::Params;

/// Where the request names its tenant.
#[derive(Debug)]
enum TenantFrom {
    Param(Box<str>),
    Subdomain,
    Header(HeaderName),
}

/// A compiled `authorize` plugin (a route with authentication and no `authorize` gets
/// the default: any authenticated caller).
#[derive(Debug, Default)]
pub struct Authorize {
    anonymous: bool,
    consumers: Box<[Box<str>]>,
    groups: Box<[Box<str>]>,
    roles: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
    deny_consumers: Box<[Box<str>]>,
    deny_groups: Box<[Box<str>]>,
    deny_roles: Box<[Box<str>]>,
    tenant: Option<TenantFrom>,
}

fn list(v: &[String]) -> Box<[Box<str>]> {
    v.iter().map(|s| s.as_str().into()).collect()
}

fn has(list: &[Box<str>], mut items: impl Iterator<Item = impl AsRef<str>>) -> bool {
    items.any(|i| list.iter().any(|l| **l == *i.as_ref()))
}

/// What the authorization check needs of the request.
#[derive(Debug)]
pub struct Subject<'a> {
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The host, without port.
    pub host: &'a str,
    /// Parameters captured by the route's path.
    pub params: &'a Params<'a, 'a>,
}

impl Authorize {
    /// Compiles the plugin config (validated).
    pub fn new(cfg: &portico_config::Authorize) -> Self {
        Self {
            anonymous: cfg.anonymous,
            consumers: list(&cfg.consumers),
            groups: list(&cfg.groups),
            roles: list(&cfg.roles),
            scopes: list(&cfg.scopes),
            deny_consumers: list(&cfg.deny.consumers),
            deny_groups: list(&cfg.deny.groups),
            deny_roles: list(&cfg.deny.roles),
            tenant: cfg.tenant.as_ref().and_then(|t| match t {
                portico_config::TenantFrom::Param(p) => Some(TenantFrom::Param(p.as_str().into())),
                portico_config::TenantFrom::Subdomain => Some(TenantFrom::Subdomain),
                portico_config::TenantFrom::Header(h) => {
                    HeaderName::from_bytes(h.as_bytes()).ok().map(TenantFrom::Header)
                }
            }),
        }
    }

    /// Allows or refuses the caller. `challenge` is the 401 challenge of the route's
    /// authentication.
    pub fn check(&self, id: Option<&Identity>, req: &Subject<'_>, challenge: Challenge) -> Result<(), GatewayError> {
        let forbid = |m| Err(GatewayError::new(ErrorKind::Forbidden(m)));
        let Some(id) = id else {
            if self.anonymous {
                return Ok(());
            }
            return Err(GatewayError::new(ErrorKind::Unauthorized(challenge, "credentials required")));
        };
        // Consumers are matched by the consumer an identity maps to, never by a token's
        // subject alone: an identity provider may let users pick their subject.
        let consumer = id.consumer.as_ref().map(|c| &*c.id);
        if has(&self.deny_consumers, consumer.into_iter())
            || has(&self.deny_groups, id.groups())
            || has(&self.deny_roles, id.roles())
        {
            return forbid("caller is denied on this route");
        }
        let open = self.consumers.is_empty() && self.groups.is_empty() && self.roles.is_empty();
        if !open
            && !has(&self.consumers, consumer.into_iter())
            && !has(&self.groups, id.groups())
            && !has(&self.roles, id.roles())
        {
            return forbid("caller is not allowed on this route");
        }
        if !self.scopes.iter().all(|s| id.scopes().any(|have| have == &**s)) {
            return forbid("token lacks a required scope");
        }
        if let Some(from) = &self.tenant {
            let named = match from {
                TenantFrom::Param(p) => req.params.get(p),
                TenantFrom::Subdomain => req.host.split('.').next().filter(|_| req.host.contains('.')),
                TenantFrom::Header(h) => req.headers.get(h).and_then(|v| v.to_str().ok()),
            };
            match (named, id.tenant()) {
                // Exact: tenant IDs may be case-sensitive upstream.
                (Some(want), Some(have)) if want == have => {}
                _ => return forbid("caller belongs to another tenant"),
            }
        }
        Ok(())
    }
}

impl Hooks for Authorize {
    fn kind(&self) -> &'static str {
        "authorize"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, ..Phases::default() }
    }

    async fn access(&self, req: &RequestView<'_>, cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        let subject = Subject { headers: req.headers, host: req.host, params: req.params };
        self.check(state.identity.as_ref(), &subject, cx.challenge).map_err(|e| state.refuse(e))?;
        Ok(Verdict::Continue)
    }
}
