//! Enforces per-command limits on the in-process backends.
//!
//! The caller is answered `Timeout` at the deadline by this thread, without
//! waiting for the interpreter. Then the backend's [`Interrupt`] makes the
//! running Python code raise, so a pure-Python loop stops at its next
//! bytecode. A blocking native call finishes first; nothing can interrupt it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::command::ReplySlot;
use crate::error::PyRunnerError;

/// How a backend stops the command that ran past its limit.
pub(crate) trait Interrupt: Send + Sync + 'static {
    /// Makes command `seq` raise, if `running` still holds it. Returns how
    /// long to wait before trying again, for interrupts that can be missed.
    fn interrupt(&self, running: &Arc<AtomicU64>, seq: u64) -> Option<Duration>;
}

pub(crate) struct Watchdog<I> {
    armed: Mutex<Armed>,
    changed: Condvar,
    /// The command the worker is running now (0: none).
    running: Arc<AtomicU64>,
    interrupt: I,
}

#[derive(Default)]
struct Armed {
    seq: u64,
    deadline: Option<Instant>,
    limit: Duration,
    slot: Option<Arc<ReplySlot>>,
    shutdown: bool,
}

/// Arms the runner's watchdog for a command with a limit,
/// starting it on first use with the interrupt `make` gives. `None` for a
/// command without a limit.
pub(crate) fn arm<I: Interrupt>(
    watchdog: &mut Option<Arc<Watchdog<I>>>,
    timeout: Option<Duration>,
    reply: &Arc<ReplySlot>,
    make: impl FnOnce() -> Result<I, PyRunnerError>,
) -> Result<Option<Arc<Watchdog<I>>>, PyRunnerError> {
    let Some(limit) = timeout else {
        return Ok(None);
    };
    let watchdog = match watchdog {
        Some(started) => started.clone(),
        None => {
            let started = Watchdog::start(make()?).map_err(|err| {
                PyRunnerError::Startup(format!("could not start the watchdog thread: {err}"))
            })?;
            watchdog.insert(started).clone()
        }
    };
    watchdog.arm(limit, reply.clone());
    Ok(Some(watchdog))
}

impl<I: Interrupt> Watchdog<I> {
    /// Starts the watchdog thread.
    pub fn start(interrupt: I) -> std::io::Result<Arc<Self>> {
        let watchdog = Arc::new(Watchdog {
            armed: Mutex::new(Armed::default()),
            changed: Condvar::new(),
            running: Arc::new(AtomicU64::new(0)),
            interrupt,
        });
        let watched = watchdog.clone();
        thread::Builder::new()
            .name("async_py-watchdog".into())
            .spawn(move || watched.watch())?;
        Ok(watchdog)
    }

    #[cfg(feature = "pyo3")]
    pub fn interrupter(&self) -> &I {
        &self.interrupt
    }

    fn lock(&self) -> MutexGuard<'_, Armed> {
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the clock for the command about to run.
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

    /// Stops the clock, right after the command ends.
    pub fn disarm(&self) {
        self.running.store(0, Ordering::SeqCst);
        let mut armed = self.lock();
        armed.deadline = None;
        armed.slot = None;
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
            let again = self.interrupt.interrupt(&self.running, seq);
            armed = self.lock();
            if let Some(pause) = again {
                // Still armed for this command unless it ended meanwhile.
                if armed.seq == seq && self.running.load(Ordering::SeqCst) == seq {
                    armed.deadline = Some(Instant::now() + pause);
                }
            }
        }
    }
}
