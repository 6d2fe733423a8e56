//! The caller's side of a command: the future that queues it, spins for a
//! fast reply or takes the driver's seat, then waits to be woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[cfg(feature = "subprocess")]
use super::Follow;
use super::{CancelTarget, CommandQueue, Drive, Job, Reply, ReplySlot, Request, Responder};
use crate::error::PyRunnerError;
use crate::tuning::{CALLER_SPIN, HOLD_WAKES};

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
pub(super) struct HeldWakes {
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
    /// The command may run as a coroutine, which a drop cancels.
    cancellable: bool,
    /// What follows the job (see [`Job::follow`]); a cancel follows it too.
    #[cfg(feature = "subprocess")]
    follow: Option<Follow>,
}

impl Submission {
    pub fn new(queue: Arc<CommandQueue>, request: Request, timeout: Option<Duration>) -> Self {
        let slot = Arc::new(ReplySlot::default());
        // Coroutines take at least one loop turn; spinning for them only burns CPU.
        let spin = !matches!(request, Request::CallAsyncFunction { .. });
        let cancellable = matches!(
            request,
            Request::CallAsyncFunction { .. } | Request::Invoke(_)
        );
        let mut job = Some(Job {
            request,
            reply: Responder(slot.clone()),
            timeout,
            follow: None,
            nested: false,
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
            cancellable,
            #[cfg(feature = "subprocess")]
            follow: None,
        }
    }

    /// [`Submission::new`] with `follow` attached to the job (see
    /// [`Job::follow`]).
    #[cfg(feature = "subprocess")]
    pub fn following(
        queue: Arc<CommandQueue>,
        request: Request,
        timeout: Option<Duration>,
        follow: Follow,
    ) -> Self {
        let mut submission = Submission::new(queue, request, timeout);
        if let Some(job) = &mut submission.job {
            job.follow = Some(follow.clone());
        }
        submission.follow = Some(follow);
        submission
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
        // A host function's command to the runner waiting for it (see
        // `host::nest`) may be answered here and then.
        let job = this
            .job
            .take()
            .and_then(|job| crate::host::nest::route(&this.queue, job));
        if let Some(job) = job {
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
        if self.slot.is_ready() {
            return;
        }
        self.slot.abandoned.store(true, Ordering::Relaxed);
        // A job still held here never went out; one that did may be a
        // coroutine by now, which its backend cancels.
        if self.cancellable && self.job.is_none() {
            let cancel = Job {
                request: Request::Cancel(CancelTarget(self.slot.clone())),
                reply: Responder(Arc::new(ReplySlot::default())),
                timeout: None,
                #[cfg(feature = "subprocess")]
                follow: self.follow.clone(),
                #[cfg(not(feature = "subprocess"))]
                follow: None,
                nested: false,
            };
            // Refused, the backend has ended: nothing of the call runs.
            let _ = self.queue.push(cancel);
        }
    }
}
