//! Client IP resolution through trusted proxies (`forwarded::client_ip`, right to left
//! over `X-Forwarded-For`) and the forwarding fields the gateway sends upstream
//! (`forwarded::forwarding`), on arbitrary field values, peers and trusted ranges.
//!
//! Checked: no panic. An untrusted peer is the client, and none of its forwarding fields
//! survive. From a trusted peer, the client is the unspecified address (an element that is
//! not an address), or an element of the chain that is not trusted, or, when every element
//! is trusted, the left-most one (the peer without a chain); the chain sent upstream is the
//! one received with the peer appended.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderValue, header};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use portico::forwarded::{PeerHeaders, client_ip, forwarding};

#[derive(Arbitrary, Debug)]
struct Input {
    peer: Peer,
    trusted: Vec<(Peer, u8)>,
    /// `X-Forwarded-For` values, then other forwarding fields.
    xff: Vec<Vec<u8>>,
    others: Vec<(u8, Vec<u8>)>,
    host: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Peer {
    fn ip(self) -> IpAddr {
        match self {
            Peer::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Peer::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

const OTHERS: [&str; 4] = ["x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"];

fuzz_target!(|input: Input| {
    let trusted: Vec<IpNet> =
        input.trusted.iter().filter_map(|&(p, len)| IpNet::new(p.ip(), len % 129).ok().map(|n| n.trunc())).collect();
    let mut headers = HeaderMap::new();
    for v in &input.xff {
        let Ok(v) = HeaderValue::from_bytes(v) else { return };
        headers.append("x-forwarded-for", v);
    }
    for (which, v) in &input.others {
        let Ok(v) = HeaderValue::from_bytes(v) else { return };
        headers.append(OTHERS[usize::from(*which) % OTHERS.len()], v);
    }
    let peer = input.peer.ip();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));

    let (client, peer_trusted) = client_ip(peer, &headers, &trusted);
    let canonical = peer.to_canonical();
    assert_eq!(peer_trusted, is_trusted(canonical));
    let elements: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(element)
        .collect();
    if !peer_trusted {
        assert_eq!(client, canonical, "an untrusted peer is the client");
    } else if client == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        // An element that is not an address, or one that is 0.0.0.0.
    } else if client == canonical && elements.is_empty() {
        // No chain: the trusted peer itself.
    } else {
        assert!(elements.contains(&client), "{client} is not in the chain {elements:?}");
        if is_trusted(client) {
            assert!(elements.iter().all(|&e| is_trusted(e)), "a trusted {client} before an untrusted element");
            assert_eq!(Some(&client), elements.first(), "all trusted: the left-most element");
        }
    }

    let peer_headers = PeerHeaders::new(peer, "http");
    let host = input.host.as_deref().and_then(|h| HeaderValue::from_bytes(h).ok());
    let received: Vec<HeaderValue> = headers.get_all("x-forwarded-for").iter().cloned().collect();
    let mut sent = headers.clone();
    forwarding(&mut sent, &peer_headers, peer_trusted, host.as_ref()).insert_into(&mut sent);
    let xff: Vec<&HeaderValue> = sent.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "one X-Forwarded-For sent");
    let peer_text = canonical.to_string();
    if peer_trusted && !received.is_empty() {
        let chain: Vec<&[u8]> = received.iter().map(HeaderValue::as_bytes).collect();
        let want = [chain.join(&b", "[..]), peer_text.into_bytes()].join(&b", "[..]);
        assert_eq!(xff[0].as_bytes(), &want[..]);
    } else {
        assert_eq!(xff[0].as_bytes(), peer_text.as_bytes());
    }
    if !peer_trusted {
        assert_eq!(sent.get_all(header::FORWARDED).iter().count(), 1, "only the gateway's Forwarded");
        assert!(sent.get("x-real-ip").is_none());
    }
});

/// One element as the reference reads it: an address, `v4:port`, `[v6]` or `[v6]:port`,
/// with spaces around.
fn element(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|i| i.to_canonical())
}
