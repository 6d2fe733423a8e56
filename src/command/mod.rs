//! What travels from a handle to a backend: requests, reply slots, and the
//! queue that keeps every clone's commands in one order.
//!
//! The handle side and the backend side live on different threads, and a
//! thread wake-up costs tens of microseconds on small VMs. Both sides therefore
//! spin briefly before they park: the backend after it runs out of work, the
//! caller right after it sends a command. A fast Python call finishes inside
//! that window and nobody sleeps.

mod queue;
mod request;
mod serve;
mod slot;
mod submission;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use serde_json::Value;

use crate::error::PyRunnerError;

pub(crate) use queue::{CommandQueue, Drive};
#[cfg(feature = "subprocess")]
pub(crate) use request::Follow;
pub(crate) use request::{
    path_arg, user_limit, CancelTarget, Invoke, Job, PathArg, Readers, Request, Returns,
    NO_LIMIT_PAST,
};
pub(crate) use serve::start_backend_thread;
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) use serve::{prepare_in_process, Serve};
pub(crate) use slot::{ReplySlot, Responder};
pub(crate) use submission::Submission;

/// The outcome of one command.
pub(crate) type Reply = Result<Answer, PyRunnerError>;

/// What a command that succeeded answers.
pub(crate) enum Answer {
    /// By the value table.
    Value(Value),
    /// A typed call's result as the child packed it (MessagePack, bytes as
    /// bin), read into its type by the caller.
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    Packed(bytes::Bytes),
    /// A typed call's result, read into its type by an in-process backend.
    #[cfg_attr(not(any(feature = "pyo3", feature = "rustpython")), allow(dead_code))]
    Typed(Box<dyn std::any::Any + Send>),
    /// A captured command's answer with what it wrote.
    Captured(Box<(Answer, crate::output::Written)>),
}

impl Answer {
    /// The answer of a command that returns nothing or a `Value`.
    pub fn into_value(self) -> Result<Value, PyRunnerError> {
        match self {
            Answer::Value(value) => Ok(value),
            _ => Err(PyRunnerError::Protocol(
                "a typed answer to a command that returns a Value".into(),
            )),
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Value(value) => f.debug_tuple("Value").field(value).finish(),
            Answer::Packed(bytes) => f.debug_tuple("Packed").field(&bytes.len()).finish(),
            Answer::Typed(_) => f.write_str("Typed"),
            Answer::Captured(both) => f.debug_tuple("Captured").field(&both.0).finish(),
        }
    }
}

/// Typed answers, which cannot be compared, are never equal.
impl PartialEq for Answer {
    fn eq(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Value(a), Answer::Value(b)) => a == b,
            (Answer::Packed(a), Answer::Packed(b)) => a == b,
            _ => false,
        }
    }
}

/// A reply's `Value`, for the commands that answer one.
pub(crate) fn value_of(reply: Reply) -> Result<Value, PyRunnerError> {
    reply?.into_value()
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
