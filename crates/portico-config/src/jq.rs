//! jq expressions (the `jq` fields of body transforms and aggregated answers), through
//! jaq: jq's language written in Rust. Compiled here, once, for validation and for the
//! gateway alike, with jq's standard library.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// A compiled jq filter.
pub type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiles `code`, or says what is wrong with it.
pub fn compile(code: &str) -> Result<Filter, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs).load(&arena, File { code, path: () }).map_err(|errs| {
        format!("jq expression does not parse: {:?}", errs.into_iter().map(|(_, e)| e).collect::<Vec<_>>())
    })?;
    Compiler::default().with_funs(funs).compile(modules).map_err(|errs| {
        format!("jq expression does not compile: {:?}", errs.into_iter().map(|(_, e)| e).collect::<Vec<_>>())
    })
}

/// A compiled expression with its text (which is what `Debug` shows).
pub struct Jq {
    code: String,
    filter: Filter,
}

impl std::fmt::Debug for Jq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Jq").field(&self.code).finish()
    }
}

impl Jq {
    /// Compiles `code`, or says what is wrong with it.
    pub fn new(code: &str) -> Result<Self, String> {
        Ok(Self { code: code.to_owned(), filter: compile(code)? })
    }

    /// See [`run`].
    pub fn run(&self, input: &serde_json::Value) -> Result<serde_json::Value, String> {
        run(&self.filter, input)
    }
}

/// Runs `filter` on `input`: its first output (`null` when it has none), or the error it
/// stopped with.
pub fn run(filter: &Filter, input: &serde_json::Value) -> Result<serde_json::Value, String> {
    let bytes = serde_json::to_vec(input).map_err(|e| e.to_string())?;
    let input = jaq_json::read::parse_single(&bytes).map_err(|e| format!("{e:?}"))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    match filter.id.run((ctx, input)).map(unwrap_valr).next() {
        None => Ok(serde_json::Value::Null),
        Some(Ok(v)) => serde_json::from_str(&v.to_string()).map_err(|e| format!("jq gave no JSON: {e}")),
        Some(Err(e)) => Err(format!("jq: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_compile_run_and_fail_clearly() {
        let f = compile("{id: .user.id, n: (.items | length), names: [.items[] | select(.on) | .name | ascii_upcase]}")
            .unwrap();
        let out = run(
            &f,
            &serde_json::json!({ "user": { "id": 7 }, "items": [{ "name": "a", "on": true }, { "name": "b" }] }),
        );
        assert_eq!(out.unwrap(), serde_json::json!({ "id": 7, "n": 2, "names": ["A"] }));
        assert_eq!(run(&compile("empty").unwrap(), &serde_json::json!(1)).unwrap(), serde_json::Value::Null);
        assert!(run(&compile(".a.b").unwrap(), &serde_json::json!({ "a": "text" })).is_err());
        let err = |code: &str| compile(code).err().unwrap_or_default();
        assert!(err("{a: }").contains("does not parse"), "{}", err("{a: }"));
        assert!(err("nosuchfunction(1)").contains("does not compile"), "{}", err("nosuchfunction(1)"));
    }
}
