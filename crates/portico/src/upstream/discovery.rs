//! DNS service discovery: a background task per upstream resolves each target whose host
//! is a name (A/AAAA, or SRV when configured) and replaces the upstream's targets with the
//! answers, without a reload. It re-resolves when the records' TTL runs out (bounded by
//! `min_interval` and `max_interval`); when resolution fails, the last good answer stays.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use http::HeaderValue;
use http::uri::Authority;
use portico_config::DnsDiscovery;
use portico_config::validate::check_target_url;

use super::Upstream;

/// Starts discovery for `up` if it has `discovery` configured.
pub fn spawn(up: &Arc<Upstream>) {
    let Some(d) = up.definition.discovery.clone() else { return };
    let resolver = match build_resolver(&d.dns) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(upstream = %up.name, error = %e, "cannot start DNS discovery");
            let _ = up.resolved.send(true);
            return;
        }
    };
    let weak = Arc::downgrade(up);
    tokio::spawn(async move {
        let mut last: Option<BTreeSet<(String, String, u32)>> = None;
        loop {
            let Some(up) = weak.upgrade() else { return };
            let (result, valid_for) = resolve_all(&up, &resolver, d.dns.srv).await;
            match result {
                Ok(list) => {
                    let key: BTreeSet<(String, String, u32)> =
                        list.iter().map(|(a, h, w)| (a.to_string(), h.to_str().unwrap_or("").to_owned(), *w)).collect();
                    if last.as_ref() != Some(&key) {
                        tracing::info!(upstream = %up.name, targets = list.len(), "DNS discovery updated targets");
                        up.replace_targets(list);
                        last = Some(key);
                    }
                }
                Err(e) => {
                    tracing::warn!(upstream = %up.name, error = %e, "DNS resolution failed; keeping the last good targets");
                }
            }
            let _ = up.resolved.send(true);
            drop(up);
            let wait = valid_for.clamp(d.dns.min_interval.get(), d.dns.max_interval.get());
            tokio::time::sleep(wait).await;
        }
    });
}

fn build_resolver(d: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut builder = if d.nameservers.is_empty() {
        Resolver::builder_tokio().map_err(|e| format!("reading the system resolver config: {e}"))?
    } else {
        let servers = d
            .nameservers
            .iter()
            .filter_map(|ns| {
                let addr: SocketAddr =
                    ns.parse().ok().or_else(|| Some(SocketAddr::new(ns.parse::<IpAddr>().ok()?, 53)))?;
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                Some(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]))
            })
            .collect();
        Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// Resolves every target. Returns the targets and how long the answers stay valid.
async fn resolve_all(
    up: &Upstream,
    resolver: &TokioResolver,
    srv: bool,
) -> (Result<Vec<(Authority, HeaderValue, u32)>, String>, Duration) {
    let mut out = Vec::new();
    let mut valid_for = Duration::from_secs(3600);
    let now = std::time::Instant::now();
    for t in &up.definition.targets {
        let Ok(hostport) = check_target_url(&t.url) else { continue };
        let Ok(authority) = hostport.parse::<Authority>() else { continue };
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().to_owned();
        if super::is_ip_host(&host) {
            if let Ok(h) = HeaderValue::from_str(authority.as_str()) {
                out.push((authority, h, t.weight));
            }
            continue;
        }
        let mut named: Vec<(String, u16, u32)> = Vec::new();
        if srv {
            match resolver.srv_lookup(host.as_str()).await {
                Ok(lookup) => {
                    valid_for = valid_for.min(lookup.valid_until().saturating_duration_since(now));
                    for r in lookup.answers() {
                        if let RData::SRV(s) = &r.data {
                            let name = s.target.to_utf8().trim_end_matches('.').to_owned();
                            named.push((name, s.port, u32::from(s.weight).clamp(1, 1000)));
                        }
                    }
                }
                Err(e) => return (Err(format!("SRV {host}: {e}")), Duration::ZERO),
            }
        } else {
            named.push((host.clone(), port, t.weight));
        }
        for (name, port, weight) in named {
            match resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => {
                    valid_for = valid_for.min(ips.valid_until().saturating_duration_since(now));
                    let host_header = HeaderValue::from_str(&format!("{name}:{port}")).ok();
                    for ip in ips.iter() {
                        let addr = SocketAddr::new(ip, port).to_string();
                        if let (Ok(a), Some(h)) = (addr.parse::<Authority>(), host_header.clone()) {
                            out.push((a, h, weight));
                        }
                    }
                }
                Err(e) => return (Err(format!("{name}: {e}")), Duration::ZERO),
            }
        }
    }
    (Ok(out), valid_for)
}
