//! The Python half of the crate, compiled in: the modules of `python/`,
//! joined by `build.rs` in the order `python/MODULES` gives.

/// The whole worker: the program a subprocess child runs (`serve.py` last).
#[cfg(feature = "subprocess")]
pub(crate) const WORKER_PY: &str = include_str!(concat!(env!("OUT_DIR"), "/worker.py"));

/// The in-process part of the worker (`helpers.py`, `value_table.py`): what
/// the PyO3 and RustPython backends load as a module.
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) const HELPERS_PY: &str = include_str!(concat!(env!("OUT_DIR"), "/helpers.py"));
