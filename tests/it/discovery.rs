//! DNS service discovery against a real DNS server on loopback (a small authoritative
//! responder written for the test: A and SRV answers with a 1 s TTL, changeable, and able
//! to fail on demand).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::support::*;

#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<(u16, u16, String)>>, // weight, port, target
    /// SRV priority by target (10 when absent).
    priority: HashMap<String, u16>,
}

struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    fail: Arc<AtomicBool>,
}

impl TestDns {
    /// Starts the server on a thread of its own: `Gateway::start` blocks the test's
    /// runtime while the gateway already resolves names.
    async fn start() -> TestDns {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_sock.set_nonblocking(true).unwrap();
        let addr = std_sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let fail = Arc::new(AtomicBool::new(false));
        let (z, f) = (zone.clone(), fail.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let sock = UdpSocket::from_std(std_sock).unwrap();
                let mut buf = [0u8; 512];
                while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                    let answer = respond(&buf[..n], &z.lock().unwrap(), f.load(Ordering::SeqCst));
                    if let Some(answer) = answer {
                        let _ = sock.send_to(&answer, peer).await;
                    }
                }
            });
        });
        TestDns { addr, zone, fail }
    }

    fn set_a(&self, name: &str, ips: &[&str]) {
        self.zone.lock().unwrap().a.insert(name.into(), ips.iter().map(|i| i.parse().unwrap()).collect());
    }
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Answers one query: A (type 1) and SRV (type 33) from the zone, an empty answer for
/// other types of a known name, NXDOMAIN for unknown names, SERVFAIL when failing.
fn respond(q: &[u8], zone: &Zone, fail: bool) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while i < q.len() && q[i] != 0 {
        let len = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_lowercase());
        i += 1 + len;
    }
    let qname = labels.join(".");
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question_end = i + 5;
    let question = q.get(12..question_end)?;
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let mut rcode = 0u8;
    if fail {
        rcode = 2;
    } else if qtype == 1 && zone.a.contains_key(&qname) {
        for ip in &zone.a[&qname] {
            let mut rr = vec![0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4];
            rr.extend_from_slice(&ip.octets());
            answers.push(rr);
        }
    } else if qtype == 33 && zone.srv.contains_key(&qname) {
        for (weight, port, target) in &zone.srv[&qname] {
            let mut rdata = zone.priority.get(target).copied().unwrap_or(10).to_be_bytes().to_vec();
            rdata.extend_from_slice(&weight.to_be_bytes());
            rdata.extend_from_slice(&port.to_be_bytes());
            encode_name(target, &mut rdata);
            let mut rr = vec![0xc0, 0x0c, 0, 33, 0, 1, 0, 0, 0, 1];
            rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            rr.extend_from_slice(&rdata);
            answers.push(rr);
        }
    } else if !zone.a.contains_key(&qname) && !zone.srv.contains_key(&qname) {
        rcode = 3;
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]);
    out.extend_from_slice(&[0x81 | (q[2] & 0x01), 0x80 | rcode]);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for a in answers {
        out.extend_from_slice(&a);
    }
    Some(out)
}

#[tokio::test]
async fn targets_follow_dns_without_a_reload_and_survive_a_dns_outage() {
    // Two upstreams on one port, on two loopback addresses.
    let a = TestUpstream::start_at("a", "127.0.0.2:0").await;
    let port = a.addr.port();
    let b = TestUpstream::start_at("b", &format!("127.0.0.3:{port}")).await;
    let dns = TestDns::start().await;
    dns.set_a("svc.test", &["127.0.0.2"]);
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  svc:\n    targets: [{{ url: \"http://svc.test:{port}\" }}]\n    discovery: {{ dns: {{ nameservers: [\"{}\"], min_interval: 100ms, max_interval: 2s }} }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: svc }}\n",
        dns.addr
    )));
    let (s, h, body) = get(&gw.url("/x")).await;
    assert_eq!((s.as_u16(), h["x-upstream"].to_str().unwrap()), (200, "a"), "{body}");
    assert_eq!(json(&body)["headers"]["host"], format!("svc.test:{port}"), "Host keeps the service name");

    // A new address appears: traffic reaches it, no reload.
    dns.set_a("svc.test", &["127.0.0.2", "127.0.0.3"]);
    let deadline = Instant::now() + Duration::from_secs(6);
    while b.hits() == 0 {
        assert!(Instant::now() < deadline, "the new target never got traffic");
        get(&gw.url("/x")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("gateway_config_reloads_total{result=\"success\"}").await, 0.0);

    // DNS fails: the last good answer is kept.
    dns.fail.store(true, Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(get(&gw.url("/x")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.logged("keeping the last good targets").await, "{}", gw.stderr_text());

    // DNS is back, without `a`: it leaves the rotation.
    dns.set_a("svc.test", &["127.0.0.3"]);
    dns.fail.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (_, _, admin) = get(&gw.admin_url("/upstreams")).await;
        let targets = json(&admin)["upstreams"][0]["targets"].as_array().unwrap().len();
        if targets == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "a was never removed: {admin}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.reset_hits();
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/x")).await.1["x-upstream"], "b");
    }
    assert_eq!(a.hits(), 0);
    // Removed targets leave the metrics too.
    let gone = format!("gateway_upstream_target_healthy{{upstream=\"svc\",target=\"127.0.0.2:{port}\"}}");
    let (_, _, text) = get(&gw.admin_url("/metrics")).await;
    assert!(!text.contains(&gone), "{text}");

    // The name is deleted (NXDOMAIN): unlike a failure, its targets go.
    dns.zone.lock().unwrap().a.remove("svc.test");
    let deadline = Instant::now() + Duration::from_secs(6);
    while get(&gw.url("/x")).await.0 != 503 {
        assert!(Instant::now() < deadline, "a deleted name kept its targets");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn srv_records_give_hosts_ports_and_weights() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let dns = TestDns::start().await;
    dns.set_a("a.test", &["127.0.0.1"]);
    dns.set_a("b.test", &["127.0.0.1"]);
    dns.zone.lock().unwrap().srv.insert(
        "_http._tcp.svc.test".into(),
        vec![(3, a.addr.port(), "a.test".into()), (1, b.addr.port(), "b.test".into())],
    );
    let gw = Gateway::start_with_env(
        &config(&format!(
            "upstreams:\n  svc:\n    targets: [{{ url: \"http://_http._tcp.svc.test\" }}]\n    discovery: {{ dns: {{ srv: true, nameservers: [\"{}\"] }} }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: svc }}\n",
            dns.addr
        )),
        &[],
    );
    for _ in 0..40 {
        assert_eq!(get(&gw.url("/x")).await.0, 200, "{}", gw.stderr_text());
    }
    assert_eq!((a.hits(), b.hits()), (30, 10), "SRV weights 3:1, smooth round robin");
    let (_, _, body) = get(&gw.url("/x")).await;
    let host = json(&body)["headers"]["host"].as_str().unwrap().to_owned();
    assert!(host == format!("a.test:{}", a.addr.port()) || host == format!("b.test:{}", b.addr.port()), "{host}");
}

#[tokio::test]
async fn srv_priorities_are_not_used_every_record_takes_traffic() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let dns = TestDns::start().await;
    dns.set_a("a.test", &["127.0.0.1"]);
    dns.set_a("b.test", &["127.0.0.1"]);
    {
        let mut zone = dns.zone.lock().unwrap();
        zone.srv.insert(
            "_http._tcp.svc.test".into(),
            vec![(1, a.addr.port(), "a.test".into()), (1, b.addr.port(), "b.test".into())],
        );
        // RFC 2782 would send everything to the lower priority (a) while it is up.
        zone.priority.insert("a.test".into(), 10);
        zone.priority.insert("b.test".into(), 20);
    }
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  svc:\n    targets: [{{ url: \"http://_http._tcp.svc.test\" }}]\n    discovery: {{ dns: {{ srv: true, nameservers: [\"{}\"] }} }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: svc }}\n",
        dns.addr
    )));
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/x")).await.0, 200, "{}", gw.stderr_text());
    }
    assert_eq!((a.hits(), b.hits()), (10, 10), "as docs/upstreams.md says: priorities are not used");
}

#[test]
fn the_test_dns_answers_srv_queries() {
    let mut zone = Zone::default();
    zone.srv.insert("_http._tcp.svc.test".into(), vec![(3, 8080, "a.test".into())]);
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    encode_name("_http._tcp.svc.test", &mut q);
    q.extend_from_slice(&[0, 33, 0, 1]);
    let r = respond(&q, &zone, false).unwrap();
    assert_eq!(&r[6..8], &[0, 1], "one answer");
    assert_eq!(r[3] & 0x0f, 0, "NOERROR");
}
