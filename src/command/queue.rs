//! The queue between every clone of a handle and its backend, how its
//! consumer sleeps and is woken, and the [`Drive`] seat of the backends
//! that let a waiting caller do their I/O.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Waker;
use std::thread::{self, Thread, ThreadId};
use std::time::Duration;
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
use std::time::Instant;

use super::Job;

/// The command queue between every clone of a handle and its backend.
pub(crate) struct CommandQueue {
    jobs: Mutex<VecDeque<Job>>,
    queued: AtomicUsize,
    /// Written under the `jobs` lock, so a push that sees it false is
    /// taken before `close` takes the rest.
    closed: AtomicBool,
    /// A backend whose I/O a waiting caller may run on its own thread.
    driver: OnceLock<Weak<dyn Drive>>,
    sleep: AtomicU8,
    consumer: OnceLock<Thread>,
    #[cfg(unix)]
    loop_wake: OnceLock<std::os::unix::net::UnixStream>,
    /// The backend thread whose end the last handle's drop waits for.
    ends_on: OnceLock<ThreadId>,
    ended: Mutex<bool>,
    ended_changed: Condvar,
}

/// Held by a backend's thread while it serves; dropped (on return or
/// unwind), it tells a drop of the last handle that waits that the backend
/// has ended. See [`CommandQueue::end_awaited`].
#[cfg(feature = "subprocess")]
pub(crate) struct BackendEnd(Arc<CommandQueue>);

#[cfg(feature = "subprocess")]
impl Drop for BackendEnd {
    fn drop(&mut self) {
        *self.0.ended.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.ended_changed.notify_all();
    }
}

/// What the consumer is doing when it is not taking jobs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Sleep {
    Awake = 0,
    /// Parked with `thread::park`: wake with `unpark`.
    Parked = 1,
    /// Blocked in an event loop that watches the wake socket: wake with a byte.
    InLoop = 2,
}

impl CommandQueue {
    pub fn new() -> Self {
        CommandQueue {
            jobs: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            driver: OnceLock::new(),
            sleep: AtomicU8::new(Sleep::Awake as u8),
            consumer: OnceLock::new(),
            #[cfg(unix)]
            loop_wake: OnceLock::new(),
            ends_on: OnceLock::new(),
            ended: Mutex::new(false),
            ended_changed: Condvar::new(),
        }
    }

    /// Called on a backend's thread before it serves: the drop of the last
    /// handle then returns only after the thread has dropped the returned
    /// guard (its child ended, and all that child wrote forwarded).
    #[cfg(feature = "subprocess")]
    pub fn end_awaited(self: &Arc<Self>) -> BackendEnd {
        let _ = self.ends_on.set(thread::current().id());
        BackendEnd(self.clone())
    }

    /// Waits for the backend's end, if it asked to be waited for; not on
    /// its own thread, where the last handle may be dropped too (a pool
    /// dropped while its worker hands a call back).
    pub fn wait_for_end(&self) {
        let Some(&backend) = self.ends_on.get() else {
            return;
        };
        if thread::current().id() == backend {
            return;
        }
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        while !*ended {
            ended = self
                .ended_changed
                .wait(ended)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a job; hands it back if the queue is closed. (A job is a
    /// couple of hundred bytes, a call's arguments inline: boxing each one
    /// to make this rare `Err` small would cost every call an allocation.)
    #[allow(clippy::result_large_err)]
    pub fn push(&self, job: Job) -> Result<(), Job> {
        self.push_quiet(job)?;
        self.wake_consumer();
        Ok(())
    }

    /// Refuses every later push and wakes the consumer. Returns the jobs that
    /// were still queued, so the caller can answer them.
    pub fn close(&self) -> VecDeque<Job> {
        let rest = {
            let mut jobs = self.lock();
            self.closed.store(true, Ordering::SeqCst);
            self.queued.store(0, Ordering::SeqCst);
            std::mem::take(&mut *jobs)
        };
        self.wake_consumer();
        rest
    }

    #[cfg(feature = "subprocess")]
    /// Lets waiting callers drive the backend (see [`Drive`]).
    pub fn set_driver(&self, driver: Weak<dyn Drive>) {
        let _ = self.driver.set(driver);
    }

    pub(crate) fn driver(&self) -> Option<Arc<dyn Drive>> {
        self.driver.get().and_then(Weak::upgrade)
    }

    /// Queues a job without waking the consumer, for a caller that drives
    /// the backend itself or wakes it after.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push_quiet(&self, job: Job) -> Result<(), Job> {
        let mut jobs = self.lock();
        if self.is_closed() {
            return Err(job);
        }
        jobs.push_back(job);
        self.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Queues a job nobody answers (a host function's result) even after
    /// `close`, without waking the consumer: a stop waits behind the
    /// request whose host function it is, and that request ends only once
    /// the result reaches the child.
    #[cfg(feature = "subprocess")]
    pub(crate) fn push_unanswered_quiet(&self, job: Job) {
        self.lock().push_back(job);
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// As [`push_unanswered_quiet`](Self::push_unanswered_quiet), waking
    /// the consumer.
    #[cfg(feature = "subprocess")]
    pub(crate) fn push_unanswered(&self, job: Job) {
        self.push_unanswered_quiet(job);
        self.wake_consumer();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Moves every queued job into `batch` without blocking.
    pub fn take_all(&self, batch: &mut VecDeque<Job>) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut jobs = self.lock();
        self.queued.store(0, Ordering::SeqCst);
        if batch.is_empty() {
            std::mem::swap(batch, &mut *jobs);
        } else {
            batch.append(&mut jobs);
        }
    }

    pub fn has_jobs(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
    }

    #[cfg(any(feature = "pyo3", feature = "rustpython"))]
    /// Registers the thread that consumes this queue; call it from that thread.
    pub fn set_consumer(&self) {
        let _ = self.consumer.set(thread::current());
    }

    /// Writes a byte to the event loop's wake-up socket, whether or not the
    /// consumer sleeps in the loop: whenever the loop next runs, its reader
    /// sees it (an in-process backend's async host results wait there).
    #[cfg(feature = "pyo3")]
    pub fn wake_loop(&self) {
        if let Some(mut wake) = self.loop_wake.get() {
            use std::io::Write;
            // A full socket already holds a wake-up; nothing is lost.
            let _ = wake.write(&[1]);
        }
    }

    /// Registers the socket an event loop watches while it waits (see [`Sleep::InLoop`]).
    #[cfg(unix)]
    #[cfg(any(feature = "pyo3", feature = "subprocess"))]
    pub fn set_loop_wake(&self, wake: std::os::unix::net::UnixStream) {
        let _ = self.loop_wake.set(wake);
    }

    #[cfg(any(feature = "pyo3", feature = "rustpython"))]
    /// Spins for `spin`, then parks the calling (consumer) thread until a job
    /// arrives or the queue closes.
    pub fn wait(&self, spin: Duration) {
        if self.spin_for_jobs(spin) {
            return;
        }
        self.sleep.store(Sleep::Parked as u8, Ordering::SeqCst);
        if self.has_jobs() || self.is_closed() {
            self.sleep.store(Sleep::Awake as u8, Ordering::SeqCst);
            return;
        }
        while self.sleep.load(Ordering::SeqCst) == Sleep::Parked as u8 {
            thread::park();
        }
    }

    #[cfg(any(feature = "pyo3", feature = "rustpython"))]
    /// Spins up to `spin` for a job; true if one came.
    pub fn spin_for_jobs(&self, spin: Duration) -> bool {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if self.has_jobs() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= spin {
                return self.has_jobs();
            }
        }
    }

    /// Announces that the consumer is about to block in its event loop; false
    /// (and stays awake) if a job is already waiting.
    #[cfg(any(feature = "pyo3", feature = "subprocess"))]
    fn enter_loop_sleep(&self) -> bool {
        self.sleep.store(Sleep::InLoop as u8, Ordering::SeqCst);
        if self.has_jobs() || self.is_closed() {
            self.sleep.store(Sleep::Awake as u8, Ordering::SeqCst);
            return false;
        }
        true
    }

    #[cfg(any(feature = "pyo3", feature = "subprocess"))]
    fn leave_loop_sleep(&self) {
        self.sleep.store(Sleep::Awake as u8, Ordering::SeqCst);
    }

    /// Runs `block` (which must return once the wake socket is readable)
    /// unless a job is already waiting.
    #[cfg(unix)]
    #[cfg(any(feature = "pyo3", feature = "subprocess"))]
    pub fn wait_in_loop(&self, block: impl FnOnce()) {
        if self.enter_loop_sleep() {
            block();
            self.leave_loop_sleep();
        }
    }

    pub fn wake_consumer(&self) {
        if self.sleep.load(Ordering::SeqCst) == Sleep::Awake as u8 {
            return;
        }
        match self.sleep.swap(Sleep::Awake as u8, Ordering::SeqCst) {
            x if x == Sleep::Parked as u8 => {
                if let Some(thread) = self.consumer.get() {
                    thread.unpark();
                }
            }
            #[cfg(unix)]
            x if x == Sleep::InLoop as u8 => {
                if let Some(mut wake) = self.loop_wake.get() {
                    use std::io::Write;
                    // A full socket already holds a wake-up; nothing is lost.
                    let _ = wake.write(&[1]);
                }
            }
            _ => {}
        }
    }
}

/// A backend that talks to another process can let a caller that waits for
/// a reply do the talking: the caller spins anyway, and on two cores a
/// separate I/O thread spinning as well would leave the child no core to
/// run on. One caller at a time holds the driver's seat; the backend's own
/// thread takes over when nobody does.
///
/// The seat holder sends what every caller queued and reads every reply.
/// When it hands replies to other callers it returns to its executor
/// (keeping the seat, and asking to be polled again) so that those callers'
/// tasks, often on the same thread, run and queue their next calls; the
/// holder then sends those together. Many tasks on one runtime thus cycle
/// through the child without a thread wake-up per call. The holder wakes
/// the callers it answered together, not one by one ([`HeldWakes`]).
///
/// A holder that returns to its executor "parks" the seat. A parked seat may
/// be taken by any other caller: the holder's task may never be polled
/// again soon (it sits in a `select!`, or its thread is blocked by a `_sync`
/// call of another task), and calls must not wait for it. A backend may let
/// a caller that comes just after the parking leave its job to the holder
/// instead ([`Drive::leave_to_parked`]); later callers take the seat.
///
/// A holder whose own reply came leaves the seat to a caller still waiting
/// (it wakes that caller's task), so that the backend's thread is woken
/// only when no caller can take over.
///
/// [`HeldWakes`]: super::submission::HeldWakes
pub(crate) trait Drive: Send + Sync {
    /// Claims the driver's seat if it is free or parked; the holder's token.
    fn try_begin(&self) -> Option<u64>;
    /// Unparks the seat on the holder's next poll; false if another caller
    /// took it meanwhile.
    fn resume(&self, token: u64) -> bool;
    /// Parks the seat while its holder returns to its executor.
    fn park(&self, token: u64);
    /// Sends queued jobs and reads replies, without blocking; how many
    /// replies it handed out. The answered callers' wakers go to `held`,
    /// for the holder to wake (see [`HeldWakes`]).
    ///
    /// [`HeldWakes`]: super::submission::HeldWakes
    fn drive(&self, held: &mut Vec<Waker>) -> usize;
    /// Gives the seat back (if it is still the holder's), waking the
    /// backend's thread if work remains. `handed_out`: other callers were
    /// just given replies and will likely take the seat with their next
    /// calls, so the thread is not woken just to watch for replies when it
    /// will look on its own soon. `done`: the holder's call is over, so a
    /// caller still waiting may take over instead of the thread; a holder
    /// that merely stops spinning for a slow reply leaves it to the thread,
    /// which sleeps, or waiting callers would spin in turns all along.
    fn end(&self, token: u64, handed_out: bool, done: bool);
    /// How long the driving caller spins for a reply, and how many turns of
    /// that spin it makes between giving up its core (`sched_yield`): on a
    /// machine with few cores, the child or another runtime thread may be
    /// waiting for it.
    fn spin(&self) -> (Duration, u32);
    /// Whether a caller's first poll leaves its job to the holder of a
    /// parked seat, which sends it with the others queued meanwhile when
    /// its task is polled again (or, should it not be soon, the backend's
    /// thread on its next look), instead of taking the seat to send it at
    /// once.
    fn leave_to_parked(&self) -> bool;
    /// Whether the child still works through requests already sent.
    fn line_busy(&self) -> bool;
}
