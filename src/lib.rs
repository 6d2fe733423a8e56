#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(not(any(feature = "pyo3", feature = "subprocess", feature = "rustpython")))]
compile_error!(
    "async_py needs a backend: enable `pyo3` or `subprocess` (both default) or `rustpython`"
);

mod builder;
mod call;
mod command;
mod config;
mod error;
mod host;
mod output;
#[cfg(feature = "subprocess")]
mod pool;
#[cfg(feature = "pyo3")]
mod pyo3_backend;
mod runner;
#[cfg(feature = "rustpython")]
mod rustpython_backend;
mod sandbox;
#[cfg(feature = "subprocess")]
mod subprocess;
mod tuning;
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
mod worker_source;

pub use builder::PyRunnerBuilder;
pub use call::{BlockingIter, Call, CallFuture, CapturedCall, CapturedExec, Exec, PyStream};
pub use config::Backend;
pub use error::PyRunnerError;
pub use host::HostCall;
pub use output::{Captured, OutputLine, OutputStream};
#[cfg(feature = "subprocess")]
pub use pool::{PyPool, PyPoolBuilder, WorkerStats};
pub use runner::PyRunner;
pub use sandbox::Sandbox;
/// Every value that crosses between Rust and Python (see the value table).
pub use serde_json::Value;
