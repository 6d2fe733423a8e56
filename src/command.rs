//! What travels from a handle to a backend: requests, reply slots, and the
//! queue that keeps every clone's commands in one order.
//!
//! The handle side and the backend side live on different threads, and a
//! thread wake-up costs tens of microseconds on small VMs. Both sides therefore
//! spin briefly before they park: the backend after it runs out of work, the
//! caller right after it sends a command. A fast Python call finishes inside
//! that window and nobody sleeps.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread, ThreadId};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::PyRunnerError;
use crate::value::checked_args;

/// The outcome of one command.
pub(crate) type Reply = Result<Value, PyRunnerError>;

/// How long a caller polls for its reply before it lets its thread or task sleep.
const CALLER_SPIN: Duration = Duration::from_micros(40);

/// Limits longer than this (about a century) are no limit: every deadline
/// is the clock plus a limit plus a little slack, and a user's
/// `Duration::MAX` must not overflow that sum anywhere.
pub(crate) const NO_LIMIT_PAST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A limit as a user gave it, as the crate keeps it: `None` for no limit.
pub(crate) fn user_limit(limit: Duration) -> Option<Duration> {
    (limit <= NO_LIMIT_PAST).then_some(limit)
}

/// A path as the Python side takes it (`run_file`, `set_venv`): its text,
/// or, for one that is not UTF-8, its bytes, which the helpers decode as
/// `os.fsdecode` does so that the os functions find the same file.
pub(crate) enum PathArg<'a> {
    Text(&'a str),
    Bytes(std::borrow::Cow<'a, [u8]>),
}

pub(crate) fn path_arg(path: &std::path::Path) -> PathArg<'_> {
    if let Some(text) = path.to_str() {
        return PathArg::Text(text);
    }
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        std::borrow::Cow::Borrowed(path.as_os_str().as_bytes())
    };
    // Elsewhere a path that is not Unicode has no bytes of its own to pass.
    #[cfg(not(unix))]
    let bytes = std::borrow::Cow::Owned(path.to_string_lossy().into_owned().into_bytes());
    PathArg::Bytes(bytes)
}

/// One command, as every backend receives it.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    Run {
        code: String,
    },
    RunFile {
        path: PathBuf,
    },
    Eval {
        expr: String,
    },
    ReadVariable {
        name: String,
    },
    CallFunction {
        name: String,
        args: Vec<Value>,
    },
    #[cfg_attr(not(any(feature = "pyo3", feature = "subprocess")), allow(dead_code))]
    CallAsyncFunction {
        name: String,
        args: Vec<Value>,
    },
    SetVenv {
        dir: PathBuf,
    },
    Stop,
    /// A pool's `run`: entry `index` of its replay log (see `subprocess::PoolHooks`).
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    Broadcast {
        code: String,
        index: usize,
    },
}

impl Request {
    /// `eval(expr)`, as a runner or a pool sends it.
    pub fn eval(expr: &str) -> Request {
        Request::Eval {
            expr: expr.to_owned(),
        }
    }

    /// `call_function(name, args)`; arguments nested too deeply are
    /// refused here (see [`checked_args`]).
    pub fn call(name: &str, args: Vec<Value>) -> Result<Request, PyRunnerError> {
        Ok(Request::CallFunction {
            name: name.to_owned(),
            args: checked_args(args)?,
        })
    }

    /// `call_async_function(name, args)`, checked as [`Request::call`].
    pub fn call_async(name: &str, args: Vec<Value>) -> Result<Request, PyRunnerError> {
        Ok(Request::CallAsyncFunction {
            name: name.to_owned(),
            args: checked_args(args)?,
        })
    }
}

/// A request with the slot its reply goes to.
pub(crate) struct Job {
    pub request: Request,
    pub reply: Responder,
    /// The limit for this command, counted from the moment it starts to run.
    pub timeout: Option<Duration>,
}

/// The backend's end of a reply slot. A responder dropped without an answer
/// (its backend shut down, or a thread unwound) answers `Stopped`, so no
/// caller ever waits for a reply that cannot come.
pub(crate) struct Responder(Arc<ReplySlot>);

impl Responder {
    /// Answers the caller, unless it was answered already (say, by a timeout).
    pub fn send(self, reply: Reply) {
        self.0.complete(reply);
    }

    /// Answers the caller without waking it; the waker to wake, if it waits.
    #[cfg(feature = "subprocess")]
    pub fn send_unwoken(self, reply: Reply) -> Option<Waker> {
        match self.0.store(reply) {
            Stored::Waiting(waker) => Some(waker),
            Stored::NotWaiting | Stored::AnsweredBefore => None,
        }
    }

    pub fn slot(&self) -> &Arc<ReplySlot> {
        &self.0
    }

    /// True once the caller has dropped its future: the work can be skipped.
    pub fn is_abandoned(&self) -> bool {
        self.0.is_abandoned()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.0.is_ready() {
            self.0.complete(Err(PyRunnerError::Stopped));
        }
    }
}

/// What [`ReplySlot::store`] found.
enum Stored {
    /// The caller waits to be woken with this waker.
    Waiting(Waker),
    /// The caller has not polled yet, or is polling now: it sees the reply.
    NotWaiting,
    AnsweredBefore,
}

/// Where one reply lands. The first answer wins: a result that arrives after
/// the caller was told `Timeout` is dropped.
#[derive(Default)]
pub(crate) struct ReplySlot {
    ready: AtomicBool,
    abandoned: AtomicBool,
    inner: Mutex<SlotInner>,
}

#[derive(Default)]
struct SlotInner {
    reply: Option<Reply>,
    waker: Option<Waker>,
}

impl ReplySlot {
    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the reply and wakes the caller; false if it was answered before.
    pub fn complete(&self, reply: Reply) -> bool {
        match self.store(reply) {
            Stored::Waiting(waker) => waker.wake(),
            Stored::NotWaiting => {}
            Stored::AnsweredBefore => return false,
        }
        true
    }

    /// Stores the reply, leaving the waking to the caller.
    fn store(&self, reply: Reply) -> Stored {
        let mut inner = self.lock();
        if self.ready.load(Ordering::Relaxed) {
            return Stored::AnsweredBefore;
        }
        inner.reply = Some(reply);
        self.ready.store(true, Ordering::Release);
        match inner.waker.take() {
            Some(waker) => Stored::Waiting(waker),
            None => Stored::NotWaiting,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Wakes the waiting caller without answering it, so that it polls again
    /// (and takes the driver's seat); false if no caller waits to be woken.
    #[cfg(feature = "subprocess")]
    pub fn nudge(&self) -> bool {
        let inner = self.lock();
        if self.is_ready() {
            return false;
        }
        let Some(waker) = inner.waker.clone() else {
            return false;
        };
        drop(inner);
        waker.wake();
        true
    }

    /// True once the caller has dropped its future: the work can be skipped.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    fn poll_reply(&self, cx: &mut Context<'_>) -> Poll<Reply> {
        let mut inner = self.lock();
        if self.ready.load(Ordering::Acquire) {
            return Poll::Ready(inner.reply.take().unwrap_or(Err(PyRunnerError::Stopped)));
        }
        match &inner.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

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

    /// Queues a job; hands it back if the queue is closed.
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

    fn driver(&self) -> Option<Arc<dyn Drive>> {
        self.driver.get().and_then(Weak::upgrade)
    }

    /// Queues a job without waking the consumer, for a caller that drives
    /// the backend itself or wakes it after.
    fn push_quiet(&self, job: Job) -> Result<(), Job> {
        let mut jobs = self.lock();
        if self.is_closed() {
            return Err(job);
        }
        jobs.push_back(job);
        self.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
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

/// How long the seat's holder holds back the wake-ups of callers it
/// answered while more replies are due.
const HOLD_WAKES: Duration = Duration::from_micros(50);

/// Wake-ups of the callers the seat's holder answered during its turn. They
/// are woken together when the turn ends (the child has answered everything
/// it runs in order, the holder's own reply came, or it stops spinning) or
/// [`HOLD_WAKES`] after the first came. On a multi-thread runtime each
/// wake-up beyond the first from one poll makes the runtime wake another
/// worker thread; woken reply by reply, as replies trickle in, that worker
/// woke and slept again for every reply, on the child's core as often as
/// not. Woken together, the callers run (and queue their next calls) while
/// the child is idle anyway. Dropping wakes what is left: every way out of
/// the turn, unwinding included.
#[derive(Default)]
struct HeldWakes {
    wakers: Vec<Waker>,
    /// When, into the turn, the first of them was seen.
    since: Option<Duration>,
}

impl HeldWakes {
    fn wake_all(&mut self) {
        self.since = None;
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Wakes them once the first has waited [`HOLD_WAKES`]; `now` is the
    /// time into the turn.
    fn wake_if_late(&mut self, now: Duration) {
        if self.wakers.is_empty() {
            return;
        }
        if now - *self.since.get_or_insert(now) >= HOLD_WAKES {
            self.wake_all();
        }
    }
}

impl Drop for HeldWakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// The future behind every async command: queues the job on first poll (and
/// sends it, or leaves it to whoever drives), spins briefly for a fast
/// reply, then waits to be woken.
pub(crate) struct Submission {
    queue: Arc<CommandQueue>,
    job: Option<Job>,
    slot: Arc<ReplySlot>,
    spin: bool,
    /// The backend's [`Drive`], for backends that let callers drive.
    driver: Option<Arc<dyn Drive>>,
    /// The token of the driver's seat, while this caller holds it (also
    /// parked between polls).
    seat: Option<u64>,
}

impl Submission {
    pub fn new(queue: Arc<CommandQueue>, request: Request, timeout: Option<Duration>) -> Self {
        let slot = Arc::new(ReplySlot::default());
        // Coroutines take at least one loop turn; spinning for them only burns CPU.
        let spin = !matches!(request, Request::CallAsyncFunction { .. });
        let mut job = Some(Job {
            request,
            reply: Responder(slot.clone()),
            timeout,
        });
        // One rule on every backend and the pool: a zero limit times out
        // without running the command.
        if timeout == Some(Duration::ZERO) {
            slot.complete(Err(PyRunnerError::Timeout(Duration::ZERO)));
            job = None;
        }
        Submission {
            queue,
            job,
            slot,
            spin,
            driver: None,
            seat: None,
        }
    }

    /// A submission whose job is queued now rather than on its first poll,
    /// and handed to the backend's thread (woken if it sleeps), so it goes
    /// out whether or not the future is polled soon. Jobs queued this way
    /// one after another reach the backend in that order.
    #[cfg(feature = "subprocess")]
    pub fn queued(queue: Arc<CommandQueue>, request: Request, timeout: Option<Duration>) -> Self {
        let mut submission = Submission::new(queue, request, timeout);
        if let Some(job) = submission.job.take() {
            if submission.spin {
                submission.driver = submission.queue.driver();
            }
            if let Err(refused) = submission.queue.push(job) {
                refused.reply.send(Err(PyRunnerError::Stopped));
            }
        }
        submission
    }

    /// A turn in the driver's seat, if it is free or already ours: spins
    /// until this job's reply, until replies went to other callers and the
    /// child has nothing else to answer (then parks the seat and asks to be
    /// polled again after their tasks ran and queued their next calls), or
    /// for the backend's spin limit (then leaves the seat and waits to be
    /// woken).
    ///
    /// On the first poll it only sends and asks to be polled again: futures
    /// polled after this one in the same task (a join of many calls) then
    /// queue their jobs before anyone spins, and go out in one write. A
    /// first poll that finds the seat parked may not even send (see
    /// [`Drive::leave_to_parked`]).
    fn drive(
        seat: &mut Option<u64>,
        slot: &ReplySlot,
        driver: &dyn Drive,
        cx: &mut Context<'_>,
        first: bool,
    ) {
        if let Some(token) = *seat {
            if !driver.resume(token) {
                *seat = None;
            }
        }
        if seat.is_none() {
            if first && driver.leave_to_parked() {
                return;
            }
            // Whoever has the seat sends this job, or hands it to the
            // backend's thread when it leaves.
            *seat = driver.try_begin();
        }
        let Some(token) = *seat else {
            return;
        };
        let (limit, yield_every) = driver.spin();
        let limit = if first { Duration::ZERO } else { limit };
        let start = Instant::now();
        let mut handed_out = 0;
        let mut held = HeldWakes::default();
        let mut turns = 0u32;
        loop {
            handed_out += driver.drive(&mut held.wakers);
            if slot.is_ready() {
                *seat = None;
                driver.end(token, handed_out > 1, true);
                return;
            }
            if first || (handed_out > 0 && !driver.line_busy()) {
                driver.park(token);
                // Before this task's own wake: they run first.
                held.wake_all();
                cx.waker().wake_by_ref();
                return;
            }
            let spun = start.elapsed();
            if spun >= limit {
                *seat = None;
                driver.end(token, false, false);
                return;
            }
            held.wake_if_late(spun);
            turns += 1;
            if turns % yield_every.max(1) == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Gives back a parked seat once the call is over (answered or dropped).
    fn leave_seat(&mut self) {
        if let (Some(token), Some(driver)) = (self.seat.take(), &self.driver) {
            driver.end(token, false, true);
        }
    }
}

impl Future for Submission {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = self.get_mut();
        let first = this.job.is_some();
        if let Some(job) = this.job.take() {
            let driver = if this.spin { this.queue.driver() } else { None };
            match driver {
                Some(driver) => {
                    if this.queue.push_quiet(job).is_err() {
                        return Poll::Ready(Err(PyRunnerError::Stopped));
                    }
                    this.driver = Some(driver);
                }
                None => {
                    if this.queue.push(job).is_err() {
                        return Poll::Ready(Err(PyRunnerError::Stopped));
                    }
                    if this.spin {
                        spin_until_ready(&this.slot);
                    }
                }
            }
        }
        if let Some(driver) = &this.driver {
            if !this.slot.is_ready() {
                Submission::drive(&mut this.seat, &this.slot, &**driver, cx, first);
            }
        }
        let reply = this.slot.poll_reply(cx);
        if reply.is_ready() {
            this.leave_seat();
        }
        reply
    }
}

/// Spins up to [`CALLER_SPIN`] for a reply from an in-process backend thread.
fn spin_until_ready(slot: &ReplySlot) {
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            if slot.is_ready() {
                return;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= CALLER_SPIN {
            return;
        }
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        // Given back on every way out, unwinding included.
        self.leave_seat();
        if !self.slot.is_ready() {
            self.slot.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Wakes a parked thread; the flag keeps a wake that comes early from being lost.
struct ThreadWaker {
    thread: Thread,
    notified: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Drives a future to completion on the calling thread. It needs no runtime
/// and never enters one, so it is safe inside a tokio runtime as well as on a
/// plain thread: the futures it drives are completed by the backends' own threads.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let signal = Arc::new(ThreadWaker {
        thread: thread::current(),
        notified: AtomicBool::new(false),
    });
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        while !signal.notified.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}

/// An in-process backend's thread: it runs its queue's commands one at a
/// time, in order, until `stop` or until every handle is gone.
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) trait Serve {
    fn queue(&self) -> &CommandQueue;
    /// Runs one command (never `Stop`).
    fn execute(&mut self, job: Job);
    /// Waits for work while the queue is empty.
    fn idle(&mut self);
    /// Runs after each batch of commands taken off the queue.
    fn after_batch(&mut self) {}
    /// Ends the runner; called once, before `stop` is answered.
    fn shut_down(&mut self);

    /// The command loop.
    fn serve(&mut self) {
        let mut batch = VecDeque::new();
        loop {
            self.queue().take_all(&mut batch);
            if batch.is_empty() {
                if self.queue().is_closed() {
                    break;
                }
                self.idle();
                continue;
            }
            while let Some(job) = batch.pop_front() {
                if job.reply.is_abandoned() {
                    continue;
                }
                if matches!(job.request, Request::Stop) {
                    drop(batch);
                    self.shut_down();
                    job.reply.send(Ok(Value::Null));
                    return;
                }
                self.execute(job);
            }
            self.after_batch();
        }
        self.shut_down();
    }
}

/// What an in-process backend does before its first command: put the venv's
/// packages on `sys.path`, then run the startup code. Either failing is a
/// `Startup` error naming what failed.
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) fn prepare_in_process<T>(
    venv: Option<&std::path::Path>,
    startup: Option<&str>,
    set_venv: impl FnOnce(&std::path::Path) -> Result<T, PyRunnerError>,
    run: impl FnOnce(&str) -> Result<T, PyRunnerError>,
) -> Result<(), PyRunnerError> {
    if let Some(venv) = venv {
        set_venv(venv)
            .map_err(|err| PyRunnerError::Startup(format!("venv {}: {err}", venv.display())))?;
    }
    if let Some(code) = startup {
        run(code).map_err(|err| PyRunnerError::Startup(format!("startup code failed: {err}")))?;
    }
    Ok(())
}

/// Tells [`start_backend_thread`] whether the backend started.
pub(crate) struct Ready(std::sync::mpsc::SyncSender<Result<(), PyRunnerError>>);

impl Ready {
    pub fn report(&self, started: Result<(), PyRunnerError>) {
        let _ = self.0.send(started);
    }
}

/// Runs a backend's thread and waits until it reports whether it started;
/// the thread goes on serving after that.
pub(crate) fn start_backend_thread(
    name: &str,
    stack_size: usize,
    body: impl FnOnce(Ready) + Send + 'static,
) -> Result<(), PyRunnerError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    thread::Builder::new()
        .name(name.into())
        .stack_size(stack_size)
        .spawn(move || body(Ready(ready_tx)))
        .map_err(|err| {
            PyRunnerError::Startup(format!("could not start the {name} thread: {err}"))
        })?;
    ready_rx.recv().unwrap_or_else(|_| {
        Err(PyRunnerError::Startup(format!(
            "the {name} thread ended while starting"
        )))
    })
}
