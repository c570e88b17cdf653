//! Config loading and validation from arbitrary YAML (`portico_config::parse`, the entry
//! point of `portico validate` and `portico run`): interpolation, deserialization with
//! recovery past each problem, semantic validation, positions.
//!
//! Checked: no panic, and every problem is reported with a message and where it is (a
//! field path or a line and column; the file itself only for a top-level field it lacks). `${VAR}` references resolve for names starting with
//! `SET` only, so both branches of interpolation run.
//!
//! Not run: the compile stage (`portico::compile::Snapshot::compile`), which reads and
//! opens the files a config names (certificates, keys, log files): a fuzzer must not be
//! handed the file system.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| name.starts_with("SET").then(|| "value".to_owned());
    let Err(errors) = portico_config::parse(text, env) else { return };
    assert!(!errors.0.is_empty(), "an error without a problem");
    for e in &errors.0 {
        assert!(!e.message.trim().is_empty(), "a problem without a message: {e:?}");
        // The empty path is the file itself: right only for what the whole file lacks.
        let whole_file = ["missing field `version`", "missing field `listeners`"].contains(&e.message.as_str());
        assert!(!e.path.is_empty() || e.position.is_some() || whole_file, "a problem with no place: {e:?}");
        let _ = e.to_string();
    }
});
