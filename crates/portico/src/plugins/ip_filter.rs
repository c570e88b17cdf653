//! Client address allow and deny lists. The address is the client IP as resolved through
//! `client_ip.trusted_proxies`; IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are
//! compared as IPv4.

use std::net::IpAddr;

use ipnet::IpNet;

use super::hooks::{AccessCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::error::{ErrorKind, GatewayError};

/// A compiled `ip_filter`.
#[derive(Debug)]
pub struct IpFilter {
    allow: Box<[IpNet]>,
    deny: Box<[IpNet]>,
}

impl IpFilter {
    /// Compiles the plugin config.
    pub fn new(cfg: &portico_config::IpFilter) -> Self {
        Self { allow: cfg.allow.iter().map(IpNet::trunc).collect(), deny: cfg.deny.iter().map(IpNet::trunc).collect() }
    }

    /// 403 unless `ip` may pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), GatewayError> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let denied = self.deny.iter().any(|n| n.contains(&ip));
        let allowed = self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip));
        if denied || !allowed {
            return Err(GatewayError::new(ErrorKind::Forbidden("client address not allowed")));
        }
        Ok(())
    }
}

impl Hooks for IpFilter {
    fn kind(&self) -> &'static str {
        "ip_filter"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, ..Phases::default() }
    }

    async fn access(&self, req: &RequestView<'_>, _cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        self.check(req.client_ip).map_err(|e| state.refuse(e))?;
        Ok(Verdict::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        IpFilter::new(&portico_config::IpFilter {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let f = filter(&["10.0.0.0/8", "2001:db8::/32"], &["10.1.0.0/16"]);
        let ok = |s: &str| f.check(s.parse().unwrap()).is_ok();
        assert!(ok("10.2.3.4"));
        assert!(!ok("10.1.2.3"));
        assert!(!ok("192.0.2.1"));
        assert!(ok("2001:db8::1"));
        assert!(!ok("2001:db9::1"));
        assert!(ok("::ffff:10.2.3.4"));
        assert!(!ok("::ffff:10.1.2.3"));
        let deny_only = filter(&[], &["192.0.2.0/24"]);
        assert!(deny_only.check("198.51.100.1".parse().unwrap()).is_ok());
        assert!(deny_only.check("192.0.2.9".parse().unwrap()).is_err());
    }
}
