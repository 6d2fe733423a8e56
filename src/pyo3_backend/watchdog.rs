//! Enforces per-command limits on the in-process backend.
//!
//! The caller is answered `Timeout` at the deadline by this thread, without
//! waiting for the interpreter. Then, holding the GIL, the watchdog raises
//! `RunnerTimeout` inside the worker thread if that command is still running
//! (`PyThreadState_SetAsyncExc`), so a pure-Python loop stops at its next
//! bytecode. A blocking C call finishes first; nothing can interrupt it.

use std::os::raw::c_long;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::command::ReplySlot;
use crate::error::PyRunnerError;

pub(crate) struct Watchdog {
    armed: Mutex<Armed>,
    changed: Condvar,
    /// The command the worker is running now (0: none). Written by the worker
    /// with the GIL held, read by the watchdog with the GIL held.
    running: AtomicU64,
    /// Set when an asynchronous exception was sent, so the worker clears any
    /// that is still pending when the command ends on its own.
    interrupted: AtomicBool,
    worker_thread: c_long,
    exception: Py<PyAny>,
}

#[derive(Default)]
struct Armed {
    seq: u64,
    deadline: Option<Instant>,
    limit: Duration,
    slot: Option<Arc<ReplySlot>>,
    shutdown: bool,
}

impl Watchdog {
    /// Starts the watchdog thread for the calling worker thread.
    pub fn start(exception: Py<PyAny>) -> std::io::Result<Arc<Self>> {
        // SAFETY: plain query of the calling thread's identifier; it has no preconditions.
        let worker_thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as c_long;
        let watchdog = Arc::new(Watchdog {
            armed: Mutex::new(Armed::default()),
            changed: Condvar::new(),
            running: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            worker_thread,
            exception,
        });
        let watched = watchdog.clone();
        thread::Builder::new()
            .name("async_py-watchdog".into())
            .spawn(move || watched.watch())?;
        Ok(watchdog)
    }

    fn lock(&self) -> MutexGuard<'_, Armed> {
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the clock for the command about to run. Call with the GIL held.
    pub fn arm(&self, limit: Duration, slot: Arc<ReplySlot>) {
        let mut armed = self.lock();
        armed.seq += 1;
        armed.deadline = Some(Instant::now() + limit);
        armed.limit = limit;
        armed.slot = Some(slot);
        self.running.store(armed.seq, Ordering::SeqCst);
        drop(armed);
        self.changed.notify_one();
    }

    /// Stops the clock. Call with the GIL held, right after the command ends.
    pub fn disarm(&self, py: Python<'_>) {
        self.running.store(0, Ordering::SeqCst);
        let mut armed = self.lock();
        armed.deadline = None;
        armed.slot = None;
        drop(armed);
        if self.interrupted.swap(false, Ordering::SeqCst) {
            let _ = py;
            // SAFETY: the GIL is held (the `py` token proves it); a null
            // exception clears a pending asynchronous exception, if any.
            unsafe {
                pyo3::ffi::PyThreadState_SetAsyncExc(self.worker_thread, std::ptr::null_mut());
            }
        }
    }

    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.changed.notify_one();
    }

    fn watch(&self) {
        let mut armed = self.lock();
        loop {
            if armed.shutdown {
                return;
            }
            let Some(deadline) = armed.deadline else {
                armed = self.changed.wait(armed).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let now = Instant::now();
            if now < deadline {
                armed = self
                    .changed
                    .wait_timeout(armed, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let seq = armed.seq;
            let limit = armed.limit;
            let slot = armed.slot.take();
            armed.deadline = None;
            drop(armed);
            if let Some(slot) = slot {
                slot.complete(Err(PyRunnerError::Timeout(limit)));
            }
            self.interrupt(seq);
            armed = self.lock();
        }
    }

    fn interrupt(&self, seq: u64) {
        Python::attach(|py| {
            if self.running.load(Ordering::SeqCst) != seq {
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
    }
}
