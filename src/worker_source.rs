//! The Python half of the crate, compiled in: the modules of `python/`,
//! joined by `build.rs` in the order `python/MODULES` gives.

/// The whole worker: the program a subprocess child runs (`serve.py` last).
#[cfg(feature = "subprocess")]
pub(crate) const WORKER_PY: &str = include_str!(concat!(env!("OUT_DIR"), "/worker.py"));

/// The in-process part of the worker (`helpers.py`, `value_table.py`): what
/// the PyO3 and RustPython backends load as a module.
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) const HELPERS_PY: &str = include_str!(concat!(env!("OUT_DIR"), "/helpers.py"));

#[cfg(all(test, feature = "subprocess"))]
mod tests {
    /// A child gets the worker as one argument, which Linux caps at 128 KiB
    /// (`MAX_ARG_STRLEN`, the terminating NUL included).
    #[test]
    fn the_worker_fits_in_one_argument() {
        assert!(
            super::WORKER_PY.len() < 128 * 1024 - 1,
            "the joined worker is {} bytes: over the cap of one argument",
            super::WORKER_PY.len()
        );
    }
}
