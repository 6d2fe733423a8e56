//! The Python half of the crate, compiled in: the modules of `python/`,
//! joined by `build.rs` in the order `python/MODULES` gives.

/// The whole worker: helpers for the in-process backends, and the program a
/// subprocess child runs (`serve.py` last).
pub(crate) const WORKER_PY: &str = include_str!(concat!(env!("OUT_DIR"), "/worker.py"));
