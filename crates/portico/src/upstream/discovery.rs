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
        let mut last_good = LastGood::default();
        loop {
            let Some(up) = weak.upgrade() else { return };
            let (list, failed, valid_for) = resolve_all(&up, &resolver, d.dns.srv, &mut last_good).await;
            if let Some(e) = failed {
                tracing::warn!(upstream = %up.name, error = %e, "DNS resolution failed; keeping the last good targets");
            }
            let key: BTreeSet<(String, String, u32)> =
                list.iter().map(|(a, h, w)| (a.to_string(), h.to_str().unwrap_or("").to_owned(), *w)).collect();
            if last.as_ref() != Some(&key) {
                tracing::info!(upstream = %up.name, targets = list.len(), "DNS discovery updated targets");
                up.replace_targets(list);
                last = Some(key);
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

/// The last good answer per name, used for that name alone when its lookup fails, so
/// one failing name does not freeze the others.
#[derive(Default)]
struct LastGood {
    srv: std::collections::HashMap<String, Vec<(String, u16, u32)>>,
    ips: std::collections::HashMap<String, Vec<IpAddr>>,
}

/// An authoritative "no such name / no records" answer: the name is gone, and so are its
/// targets.
fn is_gone(e: &hickory_resolver::net::NetError) -> bool {
    e.is_nx_domain() || e.is_no_records_found()
}

/// Resolves every target. Returns the targets, the failures (a name that could not be
/// resolved keeps its last good answer), and how long the answers stay valid.
async fn resolve_all(
    up: &Upstream,
    resolver: &TokioResolver,
    srv: bool,
    last_good: &mut LastGood,
) -> (Vec<(Authority, HeaderValue, u32)>, Option<String>, Duration) {
    let mut out = Vec::new();
    let mut failures = Vec::new();
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
                    let mut found = Vec::new();
                    for r in lookup.answers() {
                        if let RData::SRV(s) = &r.data {
                            let name = s.target.to_utf8().trim_end_matches('.').to_owned();
                            found.push((name, s.port, u32::from(s.weight).clamp(1, 1000)));
                        }
                    }
                    last_good.srv.insert(host.clone(), found.clone());
                    named.extend(found);
                }
                Err(e) if is_gone(&e) => {
                    last_good.srv.remove(&host);
                }
                Err(e) => {
                    failures.push(format!("SRV {host}: {e}"));
                    named.extend(last_good.srv.get(&host).cloned().unwrap_or_default());
                }
            }
        } else {
            named.push((host.clone(), port, t.weight));
        }
        for (name, port, weight) in named {
            let ips: Vec<IpAddr> = match resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => {
                    valid_for = valid_for.min(ips.valid_until().saturating_duration_since(now));
                    let ips: Vec<IpAddr> = ips.iter().collect();
                    last_good.ips.insert(name.clone(), ips.clone());
                    ips
                }
                Err(e) if is_gone(&e) => {
                    last_good.ips.remove(&name);
                    Vec::new()
                }
                Err(e) => {
                    failures.push(format!("{name}: {e}"));
                    last_good.ips.get(&name).cloned().unwrap_or_default()
                }
            };
            let Ok(host_header) = HeaderValue::from_str(&format!("{name}:{port}")) else { continue };
            for ip in ips {
                if let Ok(a) = SocketAddr::new(ip, port).to_string().parse::<Authority>() {
                    out.push((a, host_header.clone(), weight));
                }
            }
        }
    }
    if failures.is_empty() {
        (out, None, valid_for)
    } else {
        // Try again soon.
        (out, Some(failures.join("; ")), Duration::ZERO)
    }
}
