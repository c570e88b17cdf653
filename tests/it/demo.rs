//! `portico demo` works with nothing but the binary.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::*;

#[tokio::test]
async fn demo_serves_the_printed_examples() {
    let mut child = portico()
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .env("PORTICO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first.rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");
    let mut printed = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.contains("Ctrl-C") {
            break;
        }
        printed.push(l);
    }
    assert!(printed.iter().any(|l| l.contains("curl")), "{printed:?}");

    let (s, _, b) = get(&format!("{base}/api/users/1")).await;
    assert_eq!(s, 200);
    assert_eq!(json(&b)["data"]["name"], "Ada Lovelace");
    assert_eq!(json(&b)["path"], "/users/1");
    let mut instances = String::new();
    for _ in 0..4 {
        let (_, _, b) = get(&format!("{base}/api/products")).await;
        instances.push_str(json(&b)["instance"].as_str().unwrap());
    }
    assert_eq!(instances, "aaba", "3:1 smooth weighted round robin");
    // The cached catalog: a miss, then the same answer from the cache.
    assert!(printed.iter().any(|l| l.contains("/api/catalog")), "{printed:?}");
    let (s, h, first) = get(&format!("{base}/api/catalog")).await;
    assert_eq!(s, 200, "{first}");
    assert!(h["cache-status"].to_str().unwrap().contains("fwd=uri-miss"), "{h:?}");
    let (_, h, again) = get(&format!("{base}/api/catalog")).await;
    assert!(h["cache-status"].to_str().unwrap().starts_with("Portico; hit"), "{h:?}");
    assert_eq!(again, first);
    assert_eq!(get(&format!("{base}/api/users/1")).await.0, 200);
    let (ok, out) =
        curl(&["-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", &format!("{base}/api/users/1")]).await;
    assert!(ok);
    assert_eq!(out, "405");
    // The aggregated home screen: four calls, shaped, one of them waiting for another.
    assert!(printed.iter().any(|l| l.contains("/api/home/1")), "{printed:?}");
    let (s, _, b) = get(&format!("{base}/api/home/1")).await;
    assert_eq!(s, 200, "{b}");
    let home = json(&b);
    assert_eq!(home["user"], serde_json::json!({ "name": "Ada Lovelace", "plan": "pro" }));
    assert_eq!(home["recommended"], serde_json::json!(["p-2", "p-1"]));
    assert_eq!(home["top_product"]["id"], "p-2", "{home}");
    assert_eq!(home["orders"][0]["id"], "o-100");
    // The demo JWT, the API key, and a forged identity header.
    let token =
        printed.iter().find_map(|l| l.trim().strip_prefix("TOKEN=")).expect("a demo token is printed").to_owned();
    let key = printed
        .iter()
        .find_map(|l| l.split("x-api-key: ").nth(1).and_then(|r| r.split('\'').next()))
        .expect("a demo API key is printed")
        .to_owned();
    let with = |path: &str, name: &'static str, value: String| {
        let url = format!("{base}{path}");
        async move { send(http::Request::get(url).header(name, value).body(Default::default()).unwrap()).await }
    };
    let (s, _, b) = with("/api/account", "authorization", format!("Bearer {token}")).await;
    assert_eq!((s.as_u16(), json(&b)["data"]["name"].as_str()), (200, Some("Ada Lovelace")), "{b}");
    assert_eq!(json(&b)["seen"]["userId"], "1");
    let (s, h, _) = get(&format!("{base}/api/account")).await;
    assert_eq!((s.as_u16(), h["www-authenticate"].to_str().unwrap()), (401, r#"Bearer realm="portico""#));
    assert_eq!(with("/api/admin/stats", "authorization", format!("Bearer {token}")).await.0, 403);
    let (s, _, b) = with("/api/partner/products", "x-api-key", key).await;
    assert_eq!((s.as_u16(), json(&b)["seen"]["userId"].as_str()), (200, Some("partner-app")), "{b}");
    let (s, h, b) = with("/api/users/1", "x-user-id", "admin".into()).await;
    assert_eq!(s, 200);
    assert!(json(&b)["seen"]["userId"].is_null(), "{b}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let _ = child.kill();
    let _ = child.wait();
}
