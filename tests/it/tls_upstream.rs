//! HTTPS upstreams: verified certificates, a configured CA, SNI, and mTLS to upstreams.

use crate::support::*;

fn tls_config(up: &TestUpstream, url: &str, tls: &str, protocol: &str) -> String {
    let _ = up;
    config(&format!(
        "upstreams:\n  secure:\n    targets: [{{ url: \"{url}\" }}]\n    protocol: {protocol}\n{tls}routes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: secure }}\n"
    ))
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let pki = Pki::new();
    let up = TestUpstream::start_tls("secure", pki.server_config(false)).await;
    let ca = pki.ca_pem.display().to_string();
    for protocol in ["http1", "http2"] {
        let gw = Gateway::start(&tls_config(&up, &up.https_url(), &format!("    tls: {{ ca: \"{ca}\" }}\n"), protocol));
        let (s, h, body) = get(&gw.url("/hello")).await;
        assert_eq!(s, 200, "{protocol}: {body}");
        assert_eq!(h["x-upstream"], "secure");
        let want = if protocol == "http2" { "HTTP/2.0" } else { "HTTP/1.1" };
        assert_eq!(json(&body)["version"], want);
    }
    // Without the CA (system roots only), the certificate is not trusted: 502, no data.
    let gw = Gateway::start(&tls_config(&up, &up.https_url(), "", "http1"));
    let (s, _, body) = get(&gw.url("/hello")).await;
    assert_eq!(s, 502, "{body}");
}

#[tokio::test]
async fn server_name_sets_sni_and_the_name_checked() {
    let pki = Pki::new();
    let up = TestUpstream::start_tls("secure", pki.server_config(false)).await;
    let ca = pki.ca_pem.display().to_string();
    let url = up.https_url();
    // The certificate names upstream.internal; connecting by IP with that server name works.
    let gw = Gateway::start(&tls_config(
        &up,
        &url,
        &format!("    tls: {{ ca: \"{ca}\", server_name: upstream.internal }}\n"),
        "http1",
    ));
    assert_eq!(get(&gw.url("/x")).await.0, 200);
    // A name the certificate does not carry is refused.
    let gw = Gateway::start(&tls_config(
        &up,
        &url,
        &format!("    tls: {{ ca: \"{ca}\", server_name: other.example.com }}\n"),
        "http1",
    ));
    assert_eq!(get(&gw.url("/x")).await.0, 502);
}

#[tokio::test]
async fn mutual_tls_to_upstreams() {
    let pki = Pki::new();
    let up = TestUpstream::start_tls("secure", pki.server_config(true)).await;
    let (ca, cert, key) =
        (pki.ca_pem.display().to_string(), pki.client_cert.display().to_string(), pki.client_key.display().to_string());
    let gw = Gateway::start(&tls_config(
        &up,
        &up.https_url(),
        &format!("    tls: {{ ca: \"{ca}\", client_cert: \"{cert}\", client_key: \"{key}\" }}\n"),
        "http1",
    ));
    assert_eq!(get(&gw.url("/x")).await.0, 200, "with the client certificate");
    let gw = Gateway::start(&tls_config(&up, &up.https_url(), &format!("    tls: {{ ca: \"{ca}\" }}\n"), "http1"));
    assert_eq!(get(&gw.url("/x")).await.0, 502, "the upstream refuses a client without a certificate");
}

#[test]
fn unreadable_tls_files_are_config_errors_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(
        dir.path(),
        "tls.yaml",
        "version: 1\nlisteners: [{ name: public, bind: 127.0.0.1:8080 }]\nupstreams:\n  s:\n    targets: [{ url: https://127.0.0.1:8443 }]\n    tls: { ca: /nonexistent/ca.pem }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: s }\n",
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstreams.s.tls.ca: cannot read /nonexistent/ca.pem"), "{err}");
    assert!(err.contains("(line 6"), "{err}");
}

#[tokio::test]
async fn a_ca_file_replaced_in_place_is_picked_up_by_a_reload() {
    let old = Pki::new();
    let new = Pki::new();
    // The upstream presents a certificate from `new`; the gateway starts trusting `old`.
    let up = TestUpstream::start_tls("secure", new.server_config(false)).await;
    let ca_path = old.dir.path().join("trusted-ca.pem");
    std::fs::copy(&old.ca_pem, &ca_path).unwrap();
    let yaml = tls_config(&up, &up.https_url(), &format!("    tls: {{ ca: \"{}\" }}\n", ca_path.display()), "http1")
        .replace("access_log:", "runtime: { watch_interval: 0s }\naccess_log:");
    let gw = Gateway::start(&yaml);
    assert_eq!(get(&gw.url("/x")).await.0, 502, "not trusted yet");
    // Same config text, new file content: a reload must load it.
    std::fs::copy(&new.ca_pem, &ca_path).unwrap();
    gw.signal(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while get(&gw.url("/x")).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the new CA was not loaded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
