//! Portico's configuration: the YAML model, its defaults, validation and JSON Schema.
//!
//! Loading happens in three stages, and this crate does the first two:
//! 1. **raw**: [`parse`] interpolates `${VAR}`, then deserializes into [`Config`] with
//!    unknown fields rejected; past a problem it repairs the document and goes on, so that
//!    one run reports *every* parse-level problem (an unknown field, a bad duration, a
//!    string where a list belongs, ...);
//! 2. **validated**: [`validate::validate`] collects *every* semantic problem with the path
//!    of its field (`routes[2].match.path: ...`) and, where known, its line and column;
//! 3. **compiled** (in the `portico` crate): runtime structures built once per load.
//!
//! ```
//! let yaml = "version: 1\nlisteners: [{ name: public, bind: 127.0.0.1:8080 }]\n";
//! let parsed = portico_config::parse(yaml, |_| None).unwrap();
//! assert_eq!(parsed.config.listeners[0].name, "public");
//! ```
//!
//! This crate does no networking and no I/O besides [`read_file`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod cache;
pub mod contract;
pub mod env;
pub mod events;
pub mod hedge;
pub mod jq;
pub mod lifecycle;
pub mod locate;
pub mod model;
pub mod plugins;
pub mod ratelimit;
mod recover;
pub mod template;
pub mod tenants;
pub mod transform;
pub mod units;
pub mod validate;

use std::fmt;
use std::path::Path;

pub use locate::{Locator, Position};
pub use model::*;
pub use plugins::*;
pub use ratelimit::*;
pub use tenants::*;
pub use transform::{BodyTransform, HeaderTransform, QueryTransform};
pub use units::{ByteSize, Duration, Percent};

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config path of the field, like `routes[2].match.path` (empty for the file).
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
    /// Where in the file, when known.
    pub position: Option<Position>,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into(), position: None }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(p) = self.position {
            write!(f, " (line {}, column {})", p.line, p.column)?;
        }
        Ok(())
    }
}

/// Every problem found in a config file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Fills in positions from `locator` and sorts by position.
    pub fn locate(mut self, locator: &Locator) -> Self {
        for e in &mut self.0 {
            if e.position.is_none() && !e.path.is_empty() {
                e.position = locator.find(&e.path);
            }
        }
        self.0.sort_by_key(|e| e.position.map(|p| (p.line, p.column)).unwrap_or((u64::MAX, 0)));
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed and validated config, with the positions of its fields for later errors.
#[derive(Debug)]
pub struct Parsed {
    /// The config, defaults filled in.
    pub config: Config,
    /// Positions of fields in the (interpolated) source.
    pub locator: Locator,
}

/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// Interpolates, parses and validates a config. `env` looks up `${VAR}` references.
///
/// On failure the errors are every problem found, parse-level and semantic, in file order:
/// past a parse error, the document is repaired where it failed and parsed again.
pub fn parse(src: &str, env: impl Fn(&str) -> Option<String>) -> Result<Parsed, ConfigErrors> {
    if src.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors(vec![ConfigError::new("", "config file is larger than 16MiB")]));
    }
    let text = env::interpolate(src, env).map_err(|missing| {
        ConfigErrors(
            missing
                .into_iter()
                .map(|m| ConfigError {
                    path: String::new(),
                    message: format!("environment variable {} is not set", m.name),
                    position: Some(Position { line: m.line as u64, column: m.column as u64 }),
                })
                .collect(),
        )
    })?;
    let locator = Locator::new(&text);
    let first = match serde_saphyr::from_str::<Config>(&text) {
        Ok(config) => {
            validate::validate(&config).map_err(|e| e.locate(&locator))?;
            return Ok(Parsed { config, locator });
        }
        Err(e) => parse_error(&e, &locator),
    };
    // serde stops at the first problem: find the others, then the semantic ones of what
    // could be repaired.
    let mut found = recover::recover(&text, &locator, first);
    let mut errors = std::mem::take(&mut found.errors);
    if let Some(Err(e)) = found.config.as_ref().map(validate::validate) {
        errors.extend(e.0.into_iter().filter(|e| !found.hides(&e.path)));
    }
    Err(ConfigErrors(errors).locate(&locator))
}

/// serde's error as a [`ConfigError`]: its message without the parser's position, at the
/// path of the value it is about.
fn parse_error(e: &serde_saphyr::Error, locator: &Locator) -> ConfigError {
    let plain = e.without_snippet();
    let position = plain.location().map(|l| Position { line: l.line(), column: l.column() });
    let mut message = strip_location(&plain.to_string());
    let path = position.and_then(|p| locator.path_for_error(p, &message)).unwrap_or("").to_owned();
    if message.contains("flow mapping") || message.contains("flow sequence") {
        message.push_str(" (hint: inside { } or [ ], quote values that contain braces, like path: \"/users/{id}\")");
    }
    ConfigError { path, message, position }
}

/// Reads a config file (at most [`MAX_CONFIG_BYTES`]).
pub fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |msg: String| ConfigErrors(vec![ConfigError::new("", msg)]);
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_BYTES as u64 {
        return Err(fail(format!("{} is larger than 16MiB", path.display())));
    }
    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))
}

/// The parser's messages end with "at line L column C"; we print positions our own way.
fn strip_location(msg: &str) -> String {
    let msg = msg.trim();
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains("column") => msg[..i].trim_end_matches(',').to_owned(),
        _ => msg.to_owned(),
    }
}

/// The JSON Schema of the config file, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
