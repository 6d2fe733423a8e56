//! Helpers for every module of this binary.

/// The name libtest gives the test `name` of the module whose
/// `module_path!()` is `module`: that path without the crate's name, then
/// the test's. A test that runs this binary again as a probe passes it
/// with `--exact`, so that the rerun runs that test and no other.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_owned(),
    }
}
