#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(not(any(feature = "pyo3", feature = "subprocess")))]
compile_error!(
    "async_py needs a backend: enable the `pyo3` or the `subprocess` feature (both are default)"
);

mod builder;
mod command;
mod error;
#[cfg(feature = "subprocess")]
mod pool;
#[cfg(feature = "pyo3")]
mod pyo3_backend;
mod runner;
#[cfg(feature = "subprocess")]
mod subprocess;
mod value;
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
mod watchdog;
#[cfg(feature = "subprocess")]
mod wire;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for the fuzz targets under `fuzz/`; not part of the API.
    pub use crate::wire::read_child_output;
}
#[cfg(any(feature = "pyo3", feature = "subprocess"))]
mod worker_source;

pub use builder::{Backend, PyRunnerBuilder};
pub use error::PyRunnerError;
#[cfg(feature = "subprocess")]
pub use pool::{PyPool, PyPoolBuilder, WorkerStats};
pub use runner::PyRunner;
/// Every value that crosses between Rust and Python (see the value table).
pub use serde_json::Value;
