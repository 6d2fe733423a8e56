//! The runtime async host functions run on: the crate's own, started on
//! first use, so that they run whether or not the program calling Python
//! has a runtime, and whatever its threads are blocked in (a `_sync`
//! command waiting for Python that waits for an async host function would
//! never finish on a current-thread runtime it blocks).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use crate::tuning::HOST_RUNTIME_THREADS;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The host runtime, started on first use.
pub(super) fn get() -> Result<&'static Runtime, String> {
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(HOST_RUNTIME_THREADS)
            .thread_name("async_py-host")
            .enable_all()
            .build()
            .map_err(|err| format!("could not start the runtime of async host functions: {err}"))
    });
    runtime.as_ref().map_err(Clone::clone)
}
