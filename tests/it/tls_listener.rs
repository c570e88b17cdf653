//! TLS termination on client listeners, checked with real clients (curl, `openssl
//! s_client`) and certificates made per test: server certificates by rcgen, the mTLS CA and
//! client certificates by the `openssl` command line, so our code does not grade itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::support::*;

/// A CA made by rcgen that issues the listener's server certificates.
struct ServerPki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: PathBuf,
}

impl ServerPki {
    fn new() -> ServerPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Portico Listener Test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = write_temp(dir.path(), "server-ca.pem", &ca.pem());
        ServerPki { dir, ca, ca_pem }
    }

    /// Issues a certificate with common name `cn` for `sans`, valid until `not_after`
    /// (year, month, day) when given; writes `{file}.pem` and `{file}.key`.
    fn issue(&self, file: &str, cn: &str, sans: &[&str], not_after: Option<(i32, u8, u8)>) -> (String, String) {
        let (cert, key) = self.issue_pem(cn, sans, not_after);
        let c = write_temp(self.dir.path(), &format!("{file}.pem"), &cert);
        let k = write_temp(self.dir.path(), &format!("{file}.key"), &key);
        (c.display().to_string(), k.display().to_string())
    }

    fn issue_pem(&self, cn: &str, sans: &[&str], not_after: Option<(i32, u8, u8)>) -> (String, String) {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn ca(&self) -> String {
        self.ca_pem.display().to_string()
    }
}

/// A client CA and client certificates made with the `openssl` command line.
struct OpensslPki {
    dir: tempfile::TempDir,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Portico Test Client CA
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:alice.example,URI:spiffe://example.org/alice,email:alice@example.org
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl OpensslPki {
    /// A CA (`{ca}.pem`) and a client certificate `{client}.pem`/`.key` with `subject`.
    fn new() -> OpensslPki {
        let dir = tempfile::tempdir().unwrap();
        write_temp(dir.path(), "openssl.cnf", OPENSSL_CNF);
        OpensslPki { dir }
    }

    fn make_ca(&self, name: &str) {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca_ext",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
            ],
        );
    }

    fn make_client(&self, ca: &str, name: &str, subject: &str) {
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        openssl(
            self.dir.path(),
            &[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subject,
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                "client_ext",
            ],
        );
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// A config whose `public` listener terminates TLS with `tls` (a flow mapping), routing
/// everything to `up`; `extra` goes into the listener.
fn tls_yaml(up: &TestUpstream, tls: &str, extra: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n    tls: {tls}\n{extra}admin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\nupstreams:\n  echo:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: echo }}\n",
        up.url()
    )
}

fn certs_yaml(pairs: &[&(String, String)]) -> String {
    let list: Vec<String> = pairs.iter().map(|(c, k)| format!("{{ cert: \"{c}\", key: \"{k}\" }}")).collect();
    format!("[{}]", list.join(", "))
}

/// `curl` for `https://{host}:{port}{path}` with `host` resolved to the gateway.
async fn curl_https(gw: &Gateway, host: &str, path: &str, extra: &[&str]) -> (bool, String) {
    let port = gw.addr().port();
    let url = format!("https://{host}:{port}{path}");
    let resolve = format!("{host}:{port}:127.0.0.1");
    let mut args = vec!["--resolve", resolve.as_str()];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    curl(&args).await
}

/// `openssl s_client` against the gateway; returns (handshake ok, stdout).
async fn s_client(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let mut all = vec!["s_client".to_owned(), "-connect".to_owned(), gw.addr().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_tool("openssl", &[], all).await
}

/// The subject line s_client prints for the server's certificate.
fn served_subject(out: &str) -> String {
    out.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or("").replace(' ', "")
}

#[tokio::test]
async fn sni_selects_the_certificate_and_alpn_chooses_the_protocol() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let b = pki.issue("b", "cert-b", &["*.b.test", "b.test"], None);
    let gw = Gateway::start(&tls_yaml(&up, &format!("{{ certificates: {} }}", certs_yaml(&[&a, &b])), ""));
    let ca = pki.ca();

    // curl verifies the name against the CA: each host got a certificate that covers it.
    for host in ["a.test", "x.b.test", "b.test"] {
        let (ok, body) = curl_https(&gw, host, "/hello?x=1", &["--cacert", &ca]).await;
        assert!(ok, "{host}: curl failed: {body}");
        let v = json(&body);
        assert_eq!(v["path"], "/hello");
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{body}");
        assert!(v["headers"]["forwarded"].as_str().unwrap().ends_with("proto=https"), "{body}");
    }
    // Which certificate answered, as openssl sees it: by SNI, the first one otherwise.
    for (sni, want) in [
        (Some("a.test"), "CN=cert-a"),
        (Some("x.b.test"), "CN=cert-b"),
        (Some("y.x.b.test"), "CN=cert-a"),
        (Some("other.test"), "CN=cert-a"),
        (None, "CN=cert-a"),
    ] {
        let args: Vec<&str> = match sni {
            Some(n) => vec!["-servername", n],
            None => vec!["-noservername"],
        };
        let (ok, out) = s_client(&gw, &args).await;
        assert!(ok, "{sni:?}: {out}");
        assert_eq!(served_subject(&out), want, "{sni:?}");
    }

    // ALPN: curl asks for h2 and gets HTTP/2; HTTP/1.1 when it asks for that.
    let (ok, v) =
        curl_https(&gw, "a.test", "/", &["--cacert", &ca, "--http2", "-o", "/dev/null", "-w", "%{http_version}"]).await;
    assert!(ok && v == "2", "{v}");
    let (ok, v) =
        curl_https(&gw, "a.test", "/", &["--cacert", &ca, "--http1.1", "-o", "/dev/null", "-w", "%{http_version}"])
            .await;
    assert!(ok && v == "1.1", "{v}");

    // With http2: false, the listener offers only http/1.1.
    let gw =
        Gateway::start(&tls_yaml(&up, &format!("{{ certificates: {} }}", certs_yaml(&[&a])), "    http2: false\n"));
    let (ok, v) =
        curl_https(&gw, "a.test", "/", &["--cacert", &ca, "--http2", "-o", "/dev/null", "-w", "%{http_version}"]).await;
    assert!(ok && v == "1.1", "{v}");
    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-alpn", "h2,http/1.1"]).await;
    assert!(ok && out.contains("ALPN protocol: http/1.1"), "{out}");
    // A client that offers only h2 gets no_application_protocol (RFC 7301).
    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-alpn", "h2"]).await;
    assert!(!ok, "{out}");
}

#[tokio::test]
async fn tls_versions_follow_min_version() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let gw = Gateway::start(&tls_yaml(&up, &format!("{{ certificates: {} }}", certs_yaml(&[&a])), ""));
    let errors = "gateway_tls_handshake_errors_total{listener=\"public\",reason=\"error\"}";

    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-tls1_3"]).await;
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-tls1_2"]).await;
    assert!(ok && out.contains("TLSv1.2"), "{out}");
    assert_eq!(gw.metric(errors).await, 0.0);
    // SECLEVEL=0 lets this openssl offer TLS 1.1 at all, so the refusal is the gateway's.
    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await;
    assert!(!ok, "TLS 1.1 must be refused: {out}");
    assert!(Gateway::eventually(Duration::from_secs(5), || async { gw.metric(errors).await == 1.0 }).await);

    let gw =
        Gateway::start(&tls_yaml(&up, &format!("{{ certificates: {}, min_version: \"1.3\" }}", certs_yaml(&[&a])), ""));
    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-tls1_2"]).await;
    assert!(!ok, "TLS 1.2 must be refused with min_version 1.3: {out}");
    let (ok, out) = s_client(&gw, &["-servername", "a.test", "-tls1_3"]).await;
    assert!(ok && out.contains("TLSv1.3"), "{out}");
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_after_header_timeout() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let gw = Gateway::start(&tls_yaml(
        &up,
        &format!("{{ certificates: {} }}", certs_yaml(&[&a])),
        "    limits: { header_timeout: 300ms }\n",
    ));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    // The start of a ClientHello record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    let timeouts = "gateway_tls_handshake_errors_total{listener=\"public\",reason=\"timeout\"}";
    assert_eq!(gw.metric(timeouts).await, 1.0);
}

#[tokio::test]
async fn client_certificates_required_and_optional() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let client = OpensslPki::new();
    client.make_ca("client-ca");
    client.make_client("client-ca", "alice", "/O=Example/CN=alice");
    // A certificate from a CA the gateway does not trust.
    client.make_ca("other-ca");
    client.make_client("other-ca", "mallory", "/O=Example/CN=admin");
    let (ca, client_ca) = (pki.ca(), client.path("client-ca.pem"));
    let alice = ["--cert", &client.path("alice.pem"), "--key", &client.path("alice.key")].map(String::from);
    let mallory = ["--cert", &client.path("mallory.pem"), "--key", &client.path("mallory.key")].map(String::from);
    let forged = ["-H", "X-Client-Cert-Subject: CN=admin"].map(String::from);
    let call = |gw: &Gateway, extra: Vec<String>| {
        let mut args = vec!["--cacert".to_owned(), ca.clone()];
        args.extend(extra);
        let port = gw.addr().port();
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, body) = curl_https_port(port, &a).await;
            (ok, if ok { Some(json(&body)) } else { None })
        }
    };

    let required =
        format!("{{ certificates: {}, client_auth: {{ mode: required, ca: \"{client_ca}\" }} }}", certs_yaml(&[&a]));
    let gw = Gateway::start(&tls_yaml(&up, &required, ""));
    let (ok, v) = call(&gw, [&alice[..], &forged[..]].concat()).await;
    assert!(ok, "alice is let in");
    let v = v.unwrap();
    assert_eq!(v["headers"]["x-client-cert-subject"], "CN=alice,O=Example", "{v}");
    // The same over HTTP/1.1 (the lean loop serves TLS connections that chose it).
    let (ok, v) = call(&gw, [&alice[..], &forged[..], &["--http1.1".to_owned()][..]].concat()).await;
    assert!(ok, "alice is let in over HTTP/1.1");
    let v = v.unwrap();
    assert_eq!(v["headers"]["x-client-cert-subject"], "CN=alice,O=Example", "{v}");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");
    let hits = up.hits();
    assert!(!call(&gw, forged.to_vec()).await.0, "no certificate: refused");
    assert!(!call(&gw, mallory.to_vec()).await.0, "a certificate from another CA: refused");
    assert_eq!(up.hits(), hits, "refused clients never reach the upstream");

    let optional = format!(
        "{{ certificates: {}, client_auth: {{ mode: optional, ca: \"{client_ca}\", forward_header: x-mtls-subject }} }}",
        certs_yaml(&[&a])
    );
    let gw = Gateway::start(&tls_yaml(&up, &optional, ""));
    let forged_both = ["-H", "X-Client-Cert-Subject: CN=admin", "-H", "X-Mtls-Subject: CN=admin"].map(String::from);
    let (ok, v) = call(&gw, forged_both.to_vec()).await;
    assert!(ok, "optional: a client without a certificate is served");
    let v = v.unwrap();
    assert!(v["headers"].get("x-mtls-subject").is_none(), "{v}");
    assert!(v["headers"].get("x-client-cert-subject").is_none(), "{v}");
    let (ok, v) = call(&gw, [&alice[..], &forged_both[..]].concat()).await;
    assert!(ok);
    let v = v.unwrap();
    assert_eq!(v["headers"]["x-mtls-subject"], "CN=alice,O=Example", "{v}");
    assert!(v["headers"].get("x-client-cert-subject").is_none(), "{v}");
    assert!(!call(&gw, mallory.to_vec()).await.0, "optional still refuses an untrusted certificate");
}

async fn curl_https_port(port: u16, extra: &[&str]) -> (bool, String) {
    let url = format!("https://a.test:{port}/who");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let mut args = vec!["--resolve", resolve.as_str()];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    curl(&args).await
}

#[tokio::test]
async fn client_cert_headers_are_stripped_on_plain_listeners() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let client = OpensslPki::new();
    client.make_ca("client-ca");
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n  - name: secure\n    bind: 127.0.0.1:0\n    tls: {{ certificates: {}, client_auth: {{ mode: optional, ca: \"{}\", forward_header: x-mtls-subject }} }}\nadmin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\nupstreams:\n  echo:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: echo }}\n",
        certs_yaml(&[&a]),
        client.path("client-ca.pem"),
        up.url()
    );
    let gw = Gateway::start(&yaml);
    let req = http::Request::get(gw.url("/plain"))
        .header("x-client-cert-subject", "CN=admin")
        .header("x-mtls-subject", "CN=admin")
        .header("x-other", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (s, _, body) = send(req).await;
    assert_eq!(s, 200);
    let v = json(&body);
    assert!(v["headers"].get("x-client-cert-subject").is_none(), "{v}");
    assert!(v["headers"].get("x-mtls-subject").is_none(), "another listener's header is stripped too: {v}");
    assert_eq!(v["headers"]["x-other"], "kept");
    let h = up.last_headers();
    assert!(h.get("x-client-cert-subject").is_none() && h.get("x-mtls-subject").is_none());
}

/// A TLS connection to the gateway trusting `ca`, for `a.test`, speaking HTTP/1.1.
async fn keep_alive_conn(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> (hyper::client::conn::http1::SendRequest<Full<Bytes>>, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    (send, leaf)
}

async fn get_on(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> u16 {
    let req = http::Request::get("/keep").header("host", "a.test").body(Full::new(Bytes::new())).unwrap();
    let res = send.send_request(req).await.expect("keep-alive request");
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    status
}

/// notAfter of a PEM certificate as Unix seconds, by `openssl x509 -enddate` and `date`.
fn openssl_not_after(pem: &str) -> f64 {
    let out = Command::new("openssl").args(["x509", "-noout", "-enddate", "-in", pem]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let date = text.trim().strip_prefix("notAfter=").unwrap_or_else(|| panic!("{text}")).to_owned();
    let out = Command::new("date").args(["-u", "-d", &date, "+%s"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn certificates_rotated_on_disk_are_served_to_new_handshakes() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "gen-1", &["a.test"], Some((2031, 5, 17)));
    let yaml = tls_yaml(&up, &format!("{{ certificates: {} }}", certs_yaml(&[&a])), "")
        .replace("admin:", "runtime: { watch_interval: 100ms }\nadmin:");
    let gw = Gateway::start(&yaml);
    let expiry = |name: &str| format!("gateway_tls_certificate_expiry_seconds{{listener=\"public\",name=\"{name}\"}}");
    let want = openssl_not_after(&a.0);
    assert_eq!(want, 1_936_742_400.0, "2031-05-17T00:00:00Z as computed by openssl and date");
    assert_eq!(gw.metric(&expiry("a.test")).await, want);

    let (mut kept, old_leaf) = keep_alive_conn(gw.addr(), &pki.ca_pem).await;
    assert_eq!(get_on(&mut kept).await, 200);
    let (_, out) = s_client(&gw, &["-servername", "a.test"]).await;
    assert_eq!(served_subject(&out), "CN=gen-1");

    // Rotate in place: a new certificate whose first name differs, so its series does too.
    let (cert, key) = pki.issue_pem("gen-2", &["a2.test", "a.test"], Some((2032, 1, 2)));
    std::fs::write(&a.1, key).unwrap();
    std::fs::write(&a.0, &cert).unwrap();
    let success = "gateway_tls_reloads_total{listener=\"public\",result=\"success\"}";
    assert!(
        Gateway::eventually(Duration::from_secs(10), || async { gw.metric(success).await == 1.0 }).await,
        "{}",
        gw.stderr_text()
    );
    let (ok, out) = s_client(&gw, &["-servername", "a.test"]).await;
    assert!(ok);
    assert_eq!(served_subject(&out), "CN=gen-2");
    let (ok, _) = curl_https(&gw, "a.test", "/", &["--cacert", &pki.ca()]).await;
    assert!(ok, "the new certificate verifies");
    assert_eq!(gw.metric(&expiry("a2.test")).await, openssl_not_after(&a.0));
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(!metrics.contains("name=\"a.test\""), "the replaced certificate's series is gone:\n{metrics}");

    // The connection opened before still works, with its original certificate.
    assert_eq!(get_on(&mut kept).await, 200);
    let (mut fresh, new_leaf) = keep_alive_conn(gw.addr(), &pki.ca_pem).await;
    assert_ne!(old_leaf, new_leaf);
    assert_eq!(get_on(&mut fresh).await, 200);

    // A broken file keeps the certificate in use, and is counted as an error.
    std::fs::write(&a.0, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let error = "gateway_tls_reloads_total{listener=\"public\",result=\"error\"}";
    assert!(Gateway::eventually(Duration::from_secs(10), || async { gw.metric(error).await == 1.0 }).await);
    let (ok, out) = s_client(&gw, &["-servername", "a.test"]).await;
    assert!(ok);
    assert_eq!(served_subject(&out), "CN=gen-2");
    assert!(gw.logged("cannot be loaded; the previous certificates stay in use").await, "{}", gw.stderr_text());
}

#[tokio::test]
async fn a_config_reload_loads_replaced_certificates() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "gen-1", &["a.test"], None);
    let yaml = tls_yaml(&up, &format!("{{ certificates: {} }}", certs_yaml(&[&a])), "")
        .replace("admin:", "runtime: { watch_interval: 0s }\nadmin:");
    let gw = Gateway::start(&yaml);
    let expiry = "gateway_tls_certificate_expiry_seconds{listener=\"public\",name=\"a.test\"}";
    assert_eq!(gw.metric(expiry).await, openssl_not_after(&a.0));
    let (cert, key) = pki.issue_pem("gen-2", &["a.test"], Some((2030, 3, 4)));
    std::fs::write(&a.1, key).unwrap();
    std::fs::write(&a.0, cert).unwrap();
    gw.signal(1);
    let ok = Gateway::eventually(Duration::from_secs(10), || async {
        served_subject(&s_client(&gw, &["-servername", "a.test"]).await.1) == "CN=gen-2"
    })
    .await;
    assert!(ok, "{}", gw.stderr_text());
    assert_eq!(gw.metric(expiry).await, openssl_not_after(&a.0), "the reload updated the expiry");
    let success = "gateway_tls_reloads_total{listener=\"public\",result=\"success\"}";
    assert_eq!(gw.metric(success).await, 0.0, "a config reload is not counted as a reload from disk");
}

#[tokio::test]
async fn plain_listeners_can_redirect_to_https() {
    let up = TestUpstream::start("echo").await;
    let yaml = config(&format!(
        "upstreams:\n  echo:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: echo }}\n",
        up.url()
    ))
    .replace("    bind: 127.0.0.1:0\nadmin:", "    bind: 127.0.0.1:0\n    redirect_https: { port: 8443 }\nadmin:");
    let gw = Gateway::start(&yaml);
    let w = "%{http_code} %{redirect_url}";
    let url = gw.url("/a/b?x=1&y=2");
    let (_, out) = curl(&["-o", "/dev/null", "-w", w, "-H", "Host: api.test:8080", &url]).await;
    assert_eq!(out, "301 https://api.test:8443/a/b?x=1&y=2");
    let (_, out) = curl(&["-o", "/dev/null", "-w", w, "-X", "POST", "-d", "x", "-H", "Host: api.test", &url]).await;
    assert_eq!(out, "308 https://api.test:8443/a/b?x=1&y=2");
    assert_eq!(up.hits(), 0, "redirected before routing");

    let gw = Gateway::start(&yaml.replace("port: 8443", "port: 443"));
    let (_, out) = curl(&["-o", "/dev/null", "-w", w, "-H", "Host: api.test", &gw.url("/p")]).await;
    assert_eq!(out, "301 https://api.test/p", "port 443 is not written");
}

#[test]
fn bad_certificate_files_are_config_errors_with_paths() {
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let b = pki.issue("b", "cert-b", &["b.test"], None);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {{ cert: \"{}\", key: \"{}\" }}\n        - {{ cert: \"{}\", key: \"{}\" }}\n        - {{ cert: /nonexistent/c.pem, key: \"{}\" }}\n",
        a.0, a.1, b.0, a.1, b.1
    );
    let f = write_temp(dir.path(), "tls.yaml", &yaml);
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].tls.certificates[1].key: cert and key do not match"), "{err}");
    assert!(err.contains("(line 8"), "{err}");
    assert!(err.contains("listeners[0].tls.certificates[2].cert: cannot read file /nonexistent/c.pem"), "{err}");
    // A certificate where the key should be.
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:8443\n    tls: {{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}\n",
        a.0, a.0
    );
    let f = write_temp(dir.path(), "tls.yaml", &yaml);
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("listeners[0].tls.certificates[0].key: {}: not a private key", a.0)), "{err}");
}

#[tokio::test]
async fn a_client_certificate_identifies_a_consumer() {
    let up = TestUpstream::start("echo").await;
    let pki = ServerPki::new();
    let a = pki.issue("a", "cert-a", &["a.test"], None);
    let client = OpensslPki::new();
    client.make_ca("client-ca");
    client.make_client("client-ca", "alice", "/O=Example/CN=alice");
    client.make_client("client-ca", "bob", "/O=Example/CN=bob");
    let tls = format!(
        "{{ certificates: {}, client_auth: {{ mode: optional, ca: \"{}\" }} }}",
        certs_yaml(&[&a]),
        client.path("client-ca.pem")
    );
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n    tls: {tls}\nadmin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\nplugins:\n  - security_headers: {{}}\nupstreams:\n  echo:\n    targets: [{{ url: \"{}\" }}]\nconsumers:\n  - {{ id: billing-svc, roles: [billing], mtls_subjects: [\"CN=alice,O=Example\"] }}\nroutes:\n  - name: billing\n    match: {{ prefix: /billing }}\n    upstream: echo\n    plugins: [{{ mtls: {{}} }}, {{ authorize: {{ roles: [billing] }} }}]\n  - name: strict\n    match: {{ prefix: /strict }}\n    upstream: echo\n    plugins: [{{ mtls: {{ consumers_only: true }} }}]\n  - name: any\n    match: {{ prefix: /any }}\n    upstream: echo\n    plugins: [{{ mtls: {{}} }}]\n",
        up.url()
    );
    let gw = Gateway::start(&yaml);
    let port = gw.addr().port();
    let ca = pki.ca();
    let with = |who: &str| {
        vec![
            "--cacert".to_owned(),
            ca.clone(),
            "--cert".to_owned(),
            client.path(&format!("{who}.pem")),
            "--key".to_owned(),
            client.path(&format!("{who}.key")),
        ]
    };
    let status = |path: &'static str, mut args: Vec<String>| async move {
        args.extend(["-o", "/dev/null", "-w", "%{http_code}"].map(String::from));
        let url = format!("https://a.test:{port}{path}");
        args.extend(["--resolve".to_owned(), format!("a.test:{port}:127.0.0.1"), url]);
        run_tool("curl", &["-s", "--max-time", "20"], args).await.1
    };
    assert_eq!(status("/billing/1", with("alice")).await, "200");
    assert_eq!(up.last_headers()["x-user-id"], "billing-svc");
    assert_eq!(up.last_headers()["x-user-role"], "billing");
    assert_eq!(status("/billing/2", with("bob")).await, "403", "bob has no billing role");
    assert_eq!(status("/billing/3", vec!["--cacert".into(), ca.clone()]).await, "401", "no certificate");
    assert_eq!(status("/strict/1", with("bob")).await, "401", "bob is no consumer");
    assert_eq!(status("/strict/2", with("alice")).await, "200");
    assert_eq!(status("/any/1", with("bob")).await, "200");
    assert_eq!(up.last_headers()["x-user-id"], "CN=bob,O=Example");
    // HSTS on a TLS listener.
    let (ok, out) = curl_https(&gw, "a.test", "/any/2", &["--cacert", &ca, "-D", "-", "-o", "/dev/null"]).await;
    assert!(ok);
    assert!(out.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{out}");
}
