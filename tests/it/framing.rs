//! Request smuggling and framing, through real sockets, on a plain and a TLS listener: each
//! malformed or ambiguous request gets RFC 9112's answer (400, or a correct pass-through),
//! and the upstream never sees a request the gateway did not route itself.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

struct Listener(RawListener);

impl Listener {
    fn start(up: &TestUpstream, tls: bool) -> Listener {
        let env = [("PORTICO_LOG", "debug,hyper=trace,hyper_util=debug")];
        Listener(RawListener::start_with_env(tls, &env, |section| {
            format!(
                "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n{section}admin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\nupstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: u }}\n",
                up.url()
            )
        }))
    }

    /// Sends `raw` and returns everything the gateway answered before it closed (or 3 s).
    async fn send(&self, raw: &[u8]) -> String {
        let mut s = self.0.connect().await;
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The status codes of every response in `answer`, in order, each response's body skipped
/// by its `Content-Length` (the gateway's answers here always carry one).
fn statuses(answer: &str) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = answer;
    while let Some(code) = rest.strip_prefix("HTTP/1.").and_then(|r| r.get(2..5)).and_then(|c| c.parse().ok()) {
        out.push(code);
        let Some((head, after)) = rest.split_once("\r\n\r\n") else { break };
        let len = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        rest = after.get(len..).unwrap_or("");
    }
    out
}

/// The upstream's JSON echo in the last response of `answer`.
fn echo(answer: &str) -> serde_json::Value {
    let body = answer.rsplit("\r\n\r\n").next().unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null)
}

const HEAD: &str = "POST /p HTTP/1.1\r\nHost: localhost\r\n";

/// Requests the gateway must refuse with 400, never reaching the upstream.
fn refused() -> Vec<(&'static str, String)> {
    vec![
        ("two different Content-Length values", format!("{HEAD}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")),
        ("Content-Length list of two values", format!("{HEAD}Content-Length: 5, 6\r\n\r\nhello!")),
        ("Content-Length with a plus sign", format!("{HEAD}Content-Length: +5\r\n\r\nhello")),
        ("negative Content-Length", format!("{HEAD}Content-Length: -1\r\n\r\nhello")),
        ("Content-Length with inner space", format!("{HEAD}Content-Length: 5 5\r\n\r\nhello")),
        ("hex Content-Length", format!("{HEAD}Content-Length: 0x5\r\n\r\nhello")),
        ("obs-fold in a field", format!("{HEAD}X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n")),
        ("space before the colon", format!("{HEAD}Content-Length : 5\r\n\r\nhello")),
        ("NUL in a value", format!("{HEAD}X-A: a\0b\r\nContent-Length: 0\r\n\r\n")),
        ("control byte in a name", format!("{HEAD}X\x01A: b\r\nContent-Length: 0\r\n\r\n")),
        (
            "chunk size that overflows",
            format!("{HEAD}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
        ),
        ("chunk size that is not hex", format!("{HEAD}Transfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n")),
        ("chunked not last", format!("{HEAD}Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("unknown transfer coding", format!("{HEAD}Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("two Host fields", "GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned()),
        ("no Host on HTTP/1.1", "GET /p HTTP/1.1\r\n\r\n".to_owned()),
        // RFC 9112 section 6.1: faulty framing, even with a Content-Length beside it.
        (
            "Transfer-Encoding on HTTP/1.0",
            "POST /p HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_owned(),
        ),
        (
            "Transfer-Encoding and Content-Length on HTTP/1.0",
            "POST /p HTTP/1.0\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"
                .to_owned(),
        ),
        ("a target the http types refuse", "GET /a`b HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned()),
    ]
}

#[tokio::test]
async fn malformed_and_ambiguous_framing_is_refused_on_every_listener() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        for (what, raw) in refused() {
            up.reset_hits();
            let answer = l.send(raw.as_bytes()).await;
            assert_eq!(statuses(&answer).first(), Some(&400), "tls {tls}: {what}: {answer:?}");
            // The contract's answer: JSON with the request ID (json_error checks both).
            let (message, _) = json_error(&answer);
            assert!(!message.is_empty(), "tls {tls}: {what}: {answer:?}");
            assert_eq!(up.hits(), 0, "tls {tls}: {what}: reached the upstream");
        }
    }
}

#[tokio::test]
async fn a_request_with_both_length_and_chunked_never_smuggles_a_second_request() {
    for tls in [false, true] {
        // An upstream per listener: a request still on its way from an earlier gateway
        // cannot be counted against this one.
        let up = TestUpstream::start("u").await;
        let l = Listener::start(&up, tls);
        // CL.TE and TE.CL: whichever framing the gateway reads, the upstream must get one
        // request of the gateway's own framing, or none.
        for raw in [
            format!(
                "{HEAD}Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
            ),
            format!(
                "{HEAD}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n2c\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n\r\n0\r\n\r\n"
            ),
        ] {
            up.reset_hits();
            let answer = l.send(raw.as_bytes()).await;
            let got = statuses(&answer);
            // RFC 9112 section 6.3 allows reading it as chunked and closing after the
            // answer; Portico refuses it outright, as Envoy does.
            assert_eq!(got, [400], "tls {tls}: {answer}");
            assert_eq!(json_error(&answer).0, "both content-length and transfer-encoding");
            if got == [200] {
                assert_eq!(echo(&answer)["path"], "/p", "tls {tls}: {answer}");
                assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{answer}");
            }
            assert!(!answer.contains("smuggled"), "tls {tls}: {answer}");
            let seen = up.seen.lock().unwrap().clone();
            assert!(seen.len() <= 1 && seen.iter().all(|s| s.starts_with("POST /p ")), "tls {tls}: {seen:?}");
        }
    }
}

#[tokio::test]
async fn valid_but_unusual_framing_passes_through_correctly() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        let cases: [(&str, String, u64); 6] = [
            (
                "chunk extensions",
                format!(
                    "{HEAD}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n"
                ),
                5,
            ),
            (
                "trailers",
                format!(
                    "{HEAD}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n"
                ),
                5,
            ),
            (
                "the same Content-Length twice",
                format!("{HEAD}Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
                5,
            ),
            (
                "Content-Length with leading zeros",
                format!("{HEAD}Content-Length: 005\r\nConnection: close\r\n\r\nhello"),
                5,
            ),
            (
                "HTTP/1.0 with a body",
                "POST /p HTTP/1.0\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello".to_owned(),
                5,
            ),
            (
                "bare LF line ends",
                "POST /p HTTP/1.1\nHost: localhost\nContent-Length: 5\nConnection: close\n\nhello".to_owned(),
                5,
            ),
        ];
        for (what, raw, body) in cases {
            up.reset_hits();
            let answer = l.send(raw.as_bytes()).await;
            assert_eq!(statuses(&answer), [200], "tls {tls}: {what}: {answer}");
            assert_eq!(echo(&answer)["bodyBytes"], body, "tls {tls}: {what}: {answer}");
            assert_eq!(up.hits(), 1, "tls {tls}: {what}");
        }
        // Two requests after one another on one connection, the first with a body: both
        // answered, in order, and the upstream sees exactly two.
        up.reset_hits();
        let raw = format!(
            "{HEAD}Content-Length: 5\r\n\r\nhelloGET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let answer = l.send(raw.as_bytes()).await;
        assert_eq!(statuses(&answer), [200, 200], "tls {tls}: pipelined: {answer}");
        assert!(answer.contains("\"path\":\"/p\"") && answer.contains("\"path\":\"/second\""), "{answer}");
        assert_eq!(up.hits(), 2, "tls {tls}: pipelined");
        // Expect: 100-continue: the interim answer, then the final one.
        up.reset_hits();
        let raw = format!("{HEAD}Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello");
        let answer = l.send(raw.as_bytes()).await;
        let got = statuses(&answer);
        assert_eq!(got.last(), Some(&200), "tls {tls}: expect: {answer}");
        assert_eq!(echo(&answer)["bodyBytes"], 5, "tls {tls}: expect: {answer}");
    }
}

/// The JSON error of the first response in `answer` (with its `X-Request-ID`).
fn json_error(answer: &str) -> (String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let id = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-request-id: ").map(str::to_owned))
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    assert_eq!(v["requestId"].as_str(), Some(id.as_str()), "{answer}");
    (v["error"].as_str().unwrap_or_default().to_owned(), id)
}

#[tokio::test]
async fn answers_made_before_routing_follow_the_error_contract_and_are_counted() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        let many = format!("GET /p HTTP/1.1\r\nHost: localhost\r\n{}\r\n", "x-f: 1\r\n".repeat(100));
        let big = format!("GET /p HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\n\r\n", "a".repeat(20 * 1024));
        let long = format!("GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(70 * 1024));
        let cases: [(&str, String, u16, &str); 5] = [
            ("101 fields", many, 431, "request headers too large"),
            ("a 20 KiB field", big, 431, "request headers too large"),
            ("a 70 KB request line", long, 414, "request target too long"),
            ("an unknown version", "GET /p HTTP/9.9\r\nHost: localhost\r\n\r\n".to_owned(), 400, "malformed request"),
            (
                "a NUL in a field",
                "GET /p HTTP/1.1\r\nHost: localhost\r\nx-a: a\0b\r\n\r\n".to_owned(),
                400,
                "malformed request",
            ),
        ];
        up.reset_hits();
        for (what, raw, status, error) in &cases {
            let answer = l.send(raw.as_bytes()).await;
            assert_eq!(statuses(&answer), [*status], "tls {tls}: {what}: {answer}");
            let (message, id) = json_error(&answer);
            assert_eq!((message.as_str(), id.len()), (*error, 32), "tls {tls}: {what}");
        }
        assert_eq!(up.hits(), 0);
        let m = |status: u16, method: &str| {
            format!("gateway_requests_total{{route=\"none\",method=\"{method}\",status=\"{status}\"}}")
        };
        assert_eq!(l.0.gw.metric(&m(431, "GET")).await, 2.0, "tls {tls}");
        assert_eq!(l.0.gw.metric(&m(414, "GET")).await, 1.0, "tls {tls}");
        assert_eq!(l.0.gw.metric(&m(400, "GET")).await, 2.0, "tls {tls}");
        let logged = Gateway::eventually(Duration::from_secs(5), || async {
            let log = l.0.gw.access_log();
            [431, 414, 400].iter().all(|s| log.iter().any(|line| line["statusCode"] == *s && line["path"] == "*"))
        })
        .await;
        assert!(logged, "tls {tls}: {:?}", l.0.gw.access_log());
    }
}

#[tokio::test]
async fn the_header_field_limit_is_the_same_on_every_protocol() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    )).replace("    bind: 127.0.0.1:0\n", "    bind: 127.0.0.1:0\n    limits: { max_header_fields: 10 }\n"));
    let mut over = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    let fields: Vec<String> = (0..10).map(|i| format!("x-f{i}: 1")).collect();
    for f in &fields {
        over.extend(["-H", f.as_str()]);
    }
    let url = gw.url("/p");
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        // curl adds Host, User-Agent and Accept: 13 fields.
        let mut args = over.clone();
        args.extend([proto, url.as_str()]);
        let (_, out) = curl(&args).await;
        assert_eq!(out, "431", "{proto}");
        // With a POST body: the lean loop's body path. (Not over h2c:
        // refused before its body is read, the stream is reset after the answer, and curl
        // then sometimes reports the reset rather than the 431 it received.)
        if proto == "--http1.1" {
            let mut args = over.clone();
            args.extend([proto, "--data", "x", url.as_str()]);
            let (_, out) = curl(&args).await;
            assert_eq!(out, "431", "{proto} with a body");
        }
        let (_, out) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", proto, url.as_str()]).await;
        assert_eq!(out, "200", "{proto}: under the limit");
    }
}

/// Reads from `s` until `needle` has arrived (or 3 s); returns all read.
async fn read_until(s: &mut Box<dyn RawStream>, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until the gateway closes it (or 3 s).
async fn read_to_close(s: &mut Box<dyn RawStream>) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Every answer on an HTTP/1 connection is the gateway's own, in the error contract, also
/// after the requests that used to move the connection to hyper (HTTP/1.0, `Expect:
/// 100-continue`, more than 32 fields, a target the `http` crate refuses): a later head
/// too large still gets the JSON 431 with a request ID, counted and logged, where hyper
/// answered a bare 431. What still goes to hyper (an absolute-form target) is answered
/// and the connection closes after it. Plain and TLS listeners.
#[tokio::test]
async fn every_answer_on_an_http1_connection_is_in_the_error_contract() {
    let up = TestUpstream::start("u").await;
    let big = format!("GET /big HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000));
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        let none_431 = "gateway_requests_total{route=\"none\",method=\"GET\",status=\"431\"}";
        let before = l.0.gw.metric(none_431).await;

        // HTTP/1.0 with keep-alive, then a request with 40 fields, then a head too large.
        let fields: String = (0..40).map(|i| format!("X-F{i}: v\r\n")).collect();
        let raw = format!(
            "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /many HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n{big}"
        );
        let answer = l.send(raw.as_bytes()).await;
        assert_eq!(statuses(&answer), [200, 200, 431], "tls {tls}: {answer:.300}");
        let first = answer.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase();
        assert!(first.contains("connection: keep-alive"), "tls {tls}: {first}");
        let (error, id) = json_error(answer.rsplit_once("HTTP/1.1 431").map(|(_, r)| r).unwrap_or(""));
        assert_eq!(error, "request headers too large", "tls {tls}");
        assert!(!id.is_empty(), "tls {tls}: a request ID");

        // Expect: 100-continue: the interim answer when the body is wanted, then the
        // final one; a head too large after it is still the JSON 431.
        let mut s = l.0.connect().await;
        s.write_all(format!("{HEAD}Content-Length: 5\r\nExpect: 100-continue\r\n\r\n").as_bytes()).await.unwrap();
        let interim = read_until(&mut s, "100 Continue\r\n\r\n").await;
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n", "tls {tls}");
        s.write_all(format!("hello{big}").as_bytes()).await.unwrap();
        let answer = read_to_close(&mut s).await;
        assert_eq!(statuses(&answer), [200, 431], "tls {tls}: {answer:.300}");
        assert_eq!(echo(answer.split("HTTP/1.1 431").next().unwrap_or(""))["bodyBytes"], 5, "tls {tls}");

        // Refused before the body is read (over `max_body`): no 100, and the client,
        // which waits for one, never sends its body.
        up.reset_hits();
        let mut s = l.0.connect().await;
        s.write_all(format!("{HEAD}Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n").as_bytes()).await.unwrap();
        let answer = read_to_close(&mut s).await;
        assert_eq!(statuses(&answer), [413], "tls {tls}: {answer}");
        assert_eq!(up.hits(), 0, "tls {tls}");

        // An HTTP/1.0 client gets a body of unknown length delimited by the close, never
        // chunked.
        let answer = l.send(b"GET /drip?chunks=3&ms=10 HTTP/1.0\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200") && head.contains("connection: close"), "tls {tls}: {head}");
        assert!(!head.contains("transfer-encoding") && !head.contains("content-length"), "tls {tls}: {head}");
        assert_eq!(body.matches("chunk").count(), 3, "tls {tls}: {body:?}");

        // A target the `http` crate refuses: the contract's 400.
        let answer = l.send(b"GET /a`b HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert_eq!(statuses(&answer), [400], "tls {tls}: {answer}");
        assert_eq!(json_error(&answer).0, "malformed request", "tls {tls}");
        let refused = || async {
            l.0.gw.access_log().iter().any(|e| e["statusCode"] == 400 && e["method"] == "GET" && e["path"] == "*")
        };
        assert!(Gateway::eventually(Duration::from_secs(3), refused).await, "tls {tls}: logged with its method");

        // An absolute-form target is hyper's: answered, then the connection closes, so no
        // later request on it meets hyper's own answers.
        up.reset_hits();
        let raw = "GET http://localhost/abs HTTP/1.1\r\nHost: localhost\r\n\r\nGET /after HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let answer = l.send(raw.as_bytes()).await;
        assert_eq!(statuses(&answer), [200], "tls {tls}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "tls {tls}: {answer}");
        assert_eq!(up.hits(), 1, "tls {tls}");

        // The two 431s were counted and logged with `route="none"`.
        assert_eq!(l.0.gw.metric(none_431).await - before, 2.0, "tls {tls}");
        let logged =
            || async { l.0.gw.access_log().iter().filter(|e| e["statusCode"] == 431 && e["path"] == "*").count() };
        let ok = Gateway::eventually(Duration::from_secs(3), || async { logged().await == 2 }).await;
        let odd: Vec<_> = l.0.gw.access_log().into_iter().filter(|e| e["statusCode"] != 200).collect();
        assert!(ok, "tls {tls}: {odd:?}");
    }
}
