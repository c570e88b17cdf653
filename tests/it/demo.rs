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
    assert_eq!(get(&format!("{base}/api/users/1")).await.0, 200);
    let (ok, out) =
        curl(&["-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", &format!("{base}/api/users/1")]).await;
    assert!(ok);
    assert_eq!(out, "405");
    let _ = child.kill();
    let _ = child.wait();
}
