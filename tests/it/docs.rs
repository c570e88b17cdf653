//! Every complete config in the docs and examples validates.

use crate::support::*;

/// Fenced ```yaml blocks whose first line is `version: 1`.
fn yaml_configs(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                if block.starts_with("version: 1") {
                    out.push(std::mem::take(block));
                }
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Creates the TLS files an example names with relative paths (listener certificates and
/// keys, client CAs, upstream CA and client certificates) in `dir`: one self-signed
/// certificate serves as every certificate and CA, and its key as every key, so pairs match.
/// Examples with absolute paths (`/etc/...`) must be fragments, not complete configs.
fn write_tls_files(yaml: &str, dir: &std::path::Path) {
    let Ok(parsed) = portico_config::parse(yaml, |_| Some("x".into())) else { return };
    let c = parsed.config;
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for l in &c.listeners {
        let Some(tls) = &l.tls else { continue };
        for f in &tls.certificates {
            certs.push(f.cert.clone());
            keys.push(f.key.clone());
        }
        certs.extend(tls.client_auth.as_ref().map(|a| a.ca.clone()));
    }
    for up in c.upstreams.values() {
        let Some(tls) = &up.tls else { continue };
        certs.extend(tls.ca.clone().into_iter().chain(tls.client_cert.clone()));
        keys.extend(tls.client_key.clone());
    }
    if certs.is_empty() && keys.is_empty() {
        return;
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["example.com".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap().pem();
    for (paths, text) in [(certs, cert), (keys, key.serialize_pem())] {
        for p in paths.iter().filter(|p| std::path::Path::new(p).is_relative()) {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &text).unwrap();
        }
    }
}

#[test]
fn every_example_config_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let dir = tempfile::tempdir().unwrap();
    let mut sources: Vec<(String, String)> = Vec::new();
    for dir_name in ["docs", "examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir_name)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            match path.extension().and_then(|x| x.to_str()) {
                Some("md") => {
                    for (i, y) in yaml_configs(&text).into_iter().enumerate() {
                        sources.push((format!("{}#{i}", path.display()), y));
                    }
                }
                Some("yaml") => sources.push((path.display().to_string(), text)),
                _ => {}
            }
        }
    }
    sources.push(("README.md".into(), String::new()));
    if let Ok(readme) = std::fs::read_to_string(root.join("README.md")) {
        for (i, y) in yaml_configs(&readme).into_iter().enumerate() {
            sources.push((format!("README.md#{i}"), y));
        }
    }
    // The API contracts examples name (`openapi: contracts/orders.yaml`), where they find them.
    let contracts = dir.path().join("contracts");
    std::fs::create_dir_all(&contracts).unwrap();
    for e in std::fs::read_dir(root.join("examples/contracts")).unwrap() {
        let path = e.unwrap().path();
        std::fs::copy(&path, contracts.join(path.file_name().unwrap())).unwrap();
    }
    for (name, yaml) in sources.into_iter().filter(|(_, y)| !y.is_empty()) {
        let f = write_temp(dir.path(), "example.yaml", &yaml);
        write_tls_files(&yaml, dir.path());
        let out = portico()
            .args(["validate", f.to_str().unwrap()])
            .current_dir(dir.path())
            .env("PORTICO_ADMIN_TOKEN", "x")
            .env("REDIS_PASSWORD", "x")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} does not validate:\n{}\n{yaml}", String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert!(checked >= 3, "expected example configs in docs/, examples/ and README.md; found {checked}");
}
