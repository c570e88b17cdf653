//! Client IP resolution and the forwarding headers (`X-Forwarded-*`, `Forwarded`), and
//! removal of hop-by-hop headers (RFC 9110 section 7.6.1).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client's IP: the peer, unless the peer is a trusted proxy, in which case the
/// right-most untrusted address of `X-Forwarded-For`. Returns `(client_ip, peer_trusted)`.
///
/// Elements are read from the raw bytes, right to left, so a client's junk on the left of
/// a value never hides the address its proxy appended. `ip:port` and `[v6]:port` are
/// accepted. When the right-most untrusted element is not an address, the client is
/// unknown: the unspecified address (`0.0.0.0`) is returned, never a trusted proxy's, so
/// allow lists refuse it and rate limits do not charge the proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> (IpAddr, bool) {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return (peer, false);
    }
    let mut client = peer;
    // Walk the chain from the right (nearest hop) and stop at the first untrusted address.
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for v in values.iter().rev() {
        for part in v.as_bytes().rsplit(|b| *b == b',') {
            let Some(ip) = parse_element(part) else {
                return (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), true);
            };
            client = ip.to_canonical();
            if !is_trusted(client, trusted) {
                return (client, true);
            }
        }
    }
    (client, true)
}

/// Removes the fields whose names are one of `names` spelled with `_` for `-`
/// (`X_Original_URL` for `X-Original-URL`): CGI-style servers (WSGI, PHP, nginx with
/// `underscores_in_headers`) read them as the same field.
#[inline]
pub fn remove_cgi_spellings(headers: &mut HeaderMap, names: &[HeaderName]) {
    // Usually no name has a `_`: checked here, inline, before any call.
    if headers.keys().any(|k| k.as_str().contains('_')) {
        remove_spelled(headers, names);
    }
}

#[inline(never)]
fn remove_spelled(headers: &mut HeaderMap, names: &[HeaderName]) {
    let spelled: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            name.contains('_')
                && names.iter().any(|s| {
                    s.as_str().len() == name.len()
                        && s.as_str().bytes().zip(name.bytes()).all(|(a, b)| a == b || (a == b'-' && b == b'_'))
                })
        })
        .cloned()
        .collect();
    for k in spelled {
        headers.remove(k);
    }
}

/// One `X-Forwarded-For` element: `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711`,
/// `[2001:db8::1]:4711`, with spaces around.
fn parse_element(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok())
}

/// The forwarding header values that depend only on the connection's peer, built once
/// per connection so requests only clone them (a reference count, no allocation).
#[derive(Clone, Debug)]
pub struct PeerHeaders {
    /// The peer's address.
    pub ip: IpAddr,
    /// `X-Forwarded-For` element: the peer's address.
    xff: HeaderValue,
    /// `Forwarded` element: `for=...;proto=...`.
    forwarded: HeaderValue,
    proto: &'static str,
}

impl PeerHeaders {
    /// Values for a peer reached over `proto` (`http` or `https`).
    pub fn new(peer: IpAddr, proto: &'static str) -> Self {
        let ip = peer.to_canonical();
        let text = ip.to_string();
        let forwarded = match ip {
            IpAddr::V4(_) => format!("for={text};proto={proto}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\";proto={proto}"),
        };
        Self {
            ip,
            // An IP address and a scheme name are always valid header values.
            xff: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded: HeaderValue::from_str(&forwarded).unwrap_or(HeaderValue::from_static("for=unknown")),
            proto,
        }
    }
}

/// The fields the gateway adds to a request it forwards (`X-Forwarded-For/-Proto/-Host`,
/// `Forwarded`, the request ID), kept apart from the client's fields until the upstream
/// head is written. The lean HTTP/1.1 client writes them after the client's fields;
/// hyper's client gets them inserted into the map ([`Added::insert_into`]). Kept apart,
/// they cost no map insertions, each of which hashes these long names byte by byte: a
/// measurable part of every request (docs/benchmarks.md).
///
/// The values are borrowed where they can be (the connection's, the client's host): a
/// clone of a shared value is an atomic reference count, twice per request.
#[derive(Debug, Clone)]
pub struct Added<'a> {
    /// The peer's address, or from a trusted peer the chain with it appended.
    xff: std::borrow::Cow<'a, HeaderValue>,
    /// Set only when the request has none.
    proto: Option<HeaderValue>,
    /// Set only when the request has none and the client named a host.
    host: Option<&'a HeaderValue>,
    /// Appended after any the request has (from a trusted peer).
    forwarded: &'a HeaderValue,
    /// The request ID, whose incoming copy the caller removed.
    request_id: Option<(&'a HeaderName, &'a HeaderValue)>,
}

/// Works out the forwarding fields for the upstream request and leaves in `headers` only
/// what they must follow.
///
/// From a trusted peer, the incoming values are kept and the peer is appended. From any
/// other peer, incoming copies are discarded first, so a client cannot forge its address.
pub fn forwarding<'a>(
    headers: &mut HeaderMap,
    peer: &'a PeerHeaders,
    peer_trusted: bool,
    host: Option<&'a HeaderValue>,
) -> Added<'a> {
    use std::borrow::Cow;
    if !peer_trusted {
        remove_present(
            headers,
            &[&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &header::FORWARDED, &X_REAL_IP],
        );
        // None of them is left: each is set.
        return Added {
            xff: Cow::Borrowed(&peer.xff),
            proto: Some(HeaderValue::from_static(peer.proto)),
            host,
            forwarded: &peer.forwarded,
            request_id: None,
        };
    }
    // Append to the chain, as one comma-separated value.
    let prev: Vec<&[u8]> = headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect();
    let xff = if prev.is_empty() {
        Cow::Borrowed(&peer.xff)
    } else {
        let mut joined = prev.join(&b", "[..]);
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(peer.xff.as_bytes());
        let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.xff.clone());
        headers.remove(&X_FORWARDED_FOR);
        Cow::Owned(value)
    };
    Added {
        xff,
        proto: (!headers.contains_key(&X_FORWARDED_PROTO)).then(|| HeaderValue::from_static(peer.proto)),
        host: host.filter(|_| !headers.contains_key(&X_FORWARDED_HOST)),
        forwarded: &peer.forwarded,
        request_id: None,
    }
}

impl<'a> Added<'a> {
    /// Adds the request ID (`name: value`); the request must not carry one of its own.
    #[must_use]
    pub fn with_request_id(self, name: &'a HeaderName, value: &'a HeaderValue) -> Self {
        Self { request_id: Some((name, value)), ..self }
    }

    /// The fields, in the order they are sent.
    pub fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            Some((&X_FORWARDED_FOR, &*self.xff)),
            self.proto.as_ref().map(|v| (&X_FORWARDED_PROTO, v)),
            self.host.map(|v| (&X_FORWARDED_HOST, v)),
            Some((&header::FORWARDED, self.forwarded)),
        ]
        .into_iter()
        .flatten()
        .chain(self.request_id)
    }

    /// Puts the fields into `headers` (the request [`forwarding`] was given), as sent.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            if name == header::FORWARDED {
                headers.append(name, value.clone());
            } else {
                headers.insert(name, value.clone());
            }
        }
    }

    /// The value `name` has in the request as sent upstream, given the client's fields
    /// that remain (`headers`): what `hash_on: header` reads.
    pub fn get<'h>(&'h self, headers: &'h HeaderMap, name: &str) -> Option<&'h HeaderValue> {
        let added = self.fields().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).map(|(_, v)| v);
        match added {
            // Appended: the client's first value comes first.
            Some(v) if name.eq_ignore_ascii_case("forwarded") => headers.get(header::FORWARDED).or(Some(v)),
            Some(v) => Some(v),
            None => headers.get(name),
        }
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` for the upstream request in
/// `headers` ([`forwarding`], inserted).
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: &PeerHeaders,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
) {
    forwarding(headers, peer, peer_trusted, host).insert_into(headers);
}

/// Removes the headers the client named in `Connection` (but `Upgrade`), and rewrites
/// `Connection` to just `upgrade` when it asked for one (else removes it). Run on the
/// request as received, before the gateway adds headers of its own: otherwise
/// `Connection: x-user-id` would make the later hop-by-hop pass delete the gateway's
/// identity headers.
pub fn drop_connection_listed(headers: &mut HeaderMap) {
    let Some(conn) = headers.get(header::CONNECTION) else { return };
    let mut upgrade = false;
    let named: Vec<HeaderName> = conn
        .as_bytes()
        .split(|b| *b == b',')
        .filter_map(|t| std::str::from_utf8(t).ok())
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| {
            let is_upgrade = n == header::UPGRADE;
            upgrade |= is_upgrade;
            !is_upgrade
        })
        .collect();
    for n in named {
        headers.remove(n);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
    }
}

/// Removes hop-by-hop headers: those named in `Connection`, and the fixed set. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (WebSocket handshakes).
/// `TE: trailers` is kept: gRPC needs it end to end.
///
/// One pass over the names finds which of the fixed set are there (usually none, or
/// just `Connection`), so absent ones cost no lookup.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let fixed: [&HeaderName; 7] = [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::TRAILER,
        &header::TE,
        &header::UPGRADE,
    ];
    let present = present_mask(headers, &fixed);
    if present & 1 != 0 {
        // `keep-alive` and `close` are the common values; neither names an extra header to
        // drop, so the usual case collects nothing (and allocates nothing).
        let named: Vec<HeaderName> = headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, name) in fixed.iter().enumerate().take(5) {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if present & (1 << 5) != 0 && headers.get(header::TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << 6) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Bit `i` set when `names[i]` is in `headers` (up to 64 names). A message holds a few
/// header names and usually none of these: one pass comparing names (an enum compare for
/// standard ones) is cheaper than hashing every absent name to look it up.
pub(crate) fn present_mask<N: std::borrow::Borrow<HeaderName>>(headers: &HeaderMap, names: &[N]) -> u64 {
    let mut mask = 0u64;
    for k in headers.keys() {
        for (i, n) in names.iter().enumerate().take(64) {
            if n.borrow() == k {
                mask |= 1 << i;
            }
        }
    }
    mask
}

/// Removes those of `names` that `headers` holds, looking up only those.
pub fn remove_present<N: std::borrow::Borrow<HeaderName>>(headers: &mut HeaderMap, names: &[N]) {
    if names.len() > 64 {
        for n in names {
            headers.remove(n.borrow());
        }
        return;
    }
    let mask = present_mask(headers, names);
    if mask == 0 {
        return;
    }
    for (i, n) in names.iter().enumerate() {
        if mask & (1 << i) != 0 {
            headers.remove(n.borrow());
        }
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_and_its_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        let (ip, trusted) = client_ip(peer, &h, &[net("10.0.0.0/8")]);
        assert_eq!((ip, trusted), (peer, false));
        set_forwarding_headers(
            &mut h,
            &PeerHeaders::new(peer, "http"),
            trusted,
            Some(&HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(h["forwarded"], "for=203.0.113.7;proto=http");
    }

    #[test]
    fn trusted_chain_yields_the_rightmost_untrusted_address() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 198.51.100.9, 10.0.0.2"));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let (ip, trusted) = client_ip(peer, &h, &[net("10.0.0.0/8")]);
        assert!(trusted);
        assert_eq!(ip.to_string(), "198.51.100.9");
        set_forwarding_headers(&mut h, &PeerHeaders::new(peer, "https"), trusted, None);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 198.51.100.9, 10.0.0.2, 10.0.0.1");
    }

    #[test]
    fn added_fields_are_read_as_sent() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.9"));
        h.insert("x-user-id", HeaderValue::from_static("u1"));
        let peer = PeerHeaders::new("10.0.0.1".parse().unwrap(), "http");
        let host = HeaderValue::from_static("api.test");
        let id = (HeaderName::from_static("x-request-id"), HeaderValue::from_static("r1"));
        let added = forwarding(&mut h, &peer, true, Some(&host)).with_request_id(&id.0, &id.1);
        // The joined chain replaces the client's; its proto stays; the host is added.
        assert!(h.get("x-forwarded-for").is_none());
        assert_eq!(added.get(&h, "X-Forwarded-For").unwrap(), "198.51.100.9, 10.0.0.1");
        assert_eq!(added.get(&h, "x-forwarded-proto").unwrap(), "https");
        assert_eq!(added.get(&h, "x-forwarded-host").unwrap(), "api.test");
        assert_eq!(added.get(&h, "forwarded").unwrap(), "for=198.51.100.9", "appended: the client's comes first");
        assert_eq!(added.get(&h, "x-request-id").unwrap(), "r1");
        assert_eq!(added.get(&h, "x-user-id").unwrap(), "u1");
        assert!(added.get(&h, "x-none").is_none());
        // Inserted, they are what set_forwarding_headers leaves.
        let mut inserted = h.clone();
        added.insert_into(&mut inserted);
        assert_eq!(inserted["x-forwarded-for"], "198.51.100.9, 10.0.0.1");
        assert_eq!(
            inserted.get_all("forwarded").iter().collect::<Vec<_>>(),
            ["for=198.51.100.9", "for=10.0.0.1;proto=http"]
        );
        assert_eq!(
            (inserted["x-forwarded-proto"].as_bytes(), inserted["x-request-id"].as_bytes()),
            (&b"https"[..], &b"r1"[..])
        );
        // An untrusted peer's copies are all replaced.
        let mut h2 = HeaderMap::new();
        h2.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let added = forwarding(&mut h2, &peer, false, None);
        assert!(h2.is_empty());
        assert_eq!(added.get(&h2, "x-forwarded-proto").unwrap(), "http");
        assert!(added.get(&h2, "x-forwarded-host").is_none());
    }

    #[test]
    fn ipv6_is_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        set_forwarding_headers(&mut h, &PeerHeaders::new("::1".parse().unwrap(), "http"), false, None);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn junk_left_of_the_proxys_entry_does_not_hide_the_client() {
        let trusted = [net("10.0.0.0/8")];
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap());
        assert_eq!(client_ip(peer, &h, &trusted).0, "203.0.113.9".parse::<IpAddr>().unwrap());
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7:4711, [2001:db8::1]:80"));
        assert_eq!(client_ip(peer, &h, &trusted).0, "2001:db8::1".parse::<IpAddr>().unwrap());
        // The proxy itself passed junk: the client is unknown, never the proxy.
        h.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(client_ip(peer, &h, &trusted).0, "0.0.0.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connection_cannot_name_headers_the_gateway_adds_later() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-user-id, Upgrade, keep-alive"));
        h.insert("x-user-id", HeaderValue::from_static("forged"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        drop_connection_listed(&mut h);
        assert!(h.get("x-user-id").is_none());
        assert_eq!(h["connection"], "upgrade");
        h.insert("x-user-id", HeaderValue::from_static("gateway"));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["x-user-id"], "gateway");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));

        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers"));
        assert!(wants_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone_and_in_company() {
        let fixed = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "trailer", "te", "upgrade"];
        for (i, name) in fixed.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert("x-keep", HeaderValue::from_static("1"));
            h.append(*name, HeaderValue::from_static("gzip"));
            h.append(*name, HeaderValue::from_static("again"));
            // And every later one of the set, so each position in the mask is exercised.
            for later in &fixed[i + 1..] {
                h.insert(*later, HeaderValue::from_static("x"));
            }
            remove_hop_by_hop(&mut h, false);
            assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-keep"], "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn only_present_names_are_removed() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("h"));
        let names = [X_FORWARDED_FOR.clone(), HeaderName::from_static("x-a"), header::HOST, header::ACCEPT];
        remove_present(&mut h, &names);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-b"]);
        // Past 64 names, every one is looked up.
        let many: Vec<HeaderName> =
            (0..70).map(|i| HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap()).collect();
        h.insert("x-69", HeaderValue::from_static("1"));
        remove_present(&mut h, &many);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-b"]);
    }
}
