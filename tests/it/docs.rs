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
    for (name, yaml) in sources.into_iter().filter(|(_, y)| !y.is_empty()) {
        let f = write_temp(dir.path(), "example.yaml", &yaml);
        let out = portico().args(["validate", f.to_str().unwrap()]).env("PORTICO_ADMIN_TOKEN", "x").output().unwrap();
        assert!(out.status.success(), "{name} does not validate:\n{}\n{yaml}", String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert!(checked >= 3, "expected example configs in docs/, examples/ and README.md; found {checked}");
}
