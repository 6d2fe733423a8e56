//! The reply side of a command: where its answer lands, and the backend's
//! end of that place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Reply;
use crate::error::PyRunnerError;

/// The backend's end of a reply slot. A responder dropped without an answer
/// (its backend shut down, or a thread unwound) answers `Stopped`, so no
/// caller ever waits for a reply that cannot come.
pub(crate) struct Responder(pub(super) Arc<ReplySlot>);

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
    pub(super) abandoned: AtomicBool,
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

    pub(super) fn poll_reply(&self, cx: &mut Context<'_>) -> Poll<Reply> {
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
