//! The Python half of the crate, compiled in.

/// `python/worker.py`: helpers for the in-process backend, and the program
/// a subprocess child runs.
pub(crate) const WORKER_PY: &str = include_str!("../python/worker.py");
