//! Stops an in-process CPython command that ran past its limit: the
//! watchdog (see `crate::watchdog`) raises `RunnerTimeout` inside the worker
//! thread with `PyThreadState_SetAsyncExc`, holding the GIL, if that command
//! is still running.

use std::os::raw::c_long;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::watchdog::{Interrupt, Watchdog};

pub(crate) struct AsyncExc {
    /// Set when an asynchronous exception was sent, so the worker clears any
    /// that is still pending when the command ends on its own; a sync host
    /// function that returns while it is set raises at once (see
    /// `super::host`).
    interrupted: Arc<AtomicBool>,
    worker_thread: c_long,
    exception: Py<PyAny>,
}

/// Raises `exception` in the calling worker thread, noting it in
/// `interrupted`. Call it on that thread.
pub(crate) fn interrupt_this_thread(
    exception: Py<PyAny>,
    interrupted: Arc<AtomicBool>,
) -> AsyncExc {
    // SAFETY: plain query of the calling thread's identifier; it has no preconditions.
    let worker_thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as c_long;
    AsyncExc {
        interrupted,
        worker_thread,
        exception,
    }
}

/// Stops the clock. Call with the GIL held, right after the command ends.
pub(crate) fn disarm(watchdog: &Watchdog<AsyncExc>, py: Python<'_>) {
    watchdog.disarm();
    let interrupt = watchdog.interrupter();
    if interrupt.interrupted.swap(false, Ordering::SeqCst) {
        let _ = py;
        // SAFETY: the GIL is held (the `py` token proves it); a null
        // exception clears a pending asynchronous exception, if any.
        unsafe {
            pyo3::ffi::PyThreadState_SetAsyncExc(interrupt.worker_thread, std::ptr::null_mut());
        }
    }
}

impl Interrupt for AsyncExc {
    fn interrupt(&self, running: &Arc<AtomicU64>, seq: u64) -> Option<Duration> {
        Python::attach(|py| {
            // Checked with the GIL held, which the worker holds while it
            // changes `running`.
            if running.load(Ordering::SeqCst) != seq {
                return;
            }
            self.interrupted.store(true, Ordering::SeqCst);
            // SAFETY: the GIL is held inside `attach`; the exception type is a
            // live class object kept alive by `self.exception`.
            unsafe {
                pyo3::ffi::PyThreadState_SetAsyncExc(
                    self.worker_thread,
                    self.exception.bind(py).as_ptr(),
                );
            }
        });
        None
    }
}
