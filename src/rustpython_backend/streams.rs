//! Streams on the RustPython backend: the items of a generator (or any
//! iterable) a call returned, pulled on the runner's thread between
//! commands while the stream's feed has room, each under the call's limit.
//! Async generators need an event loop, which this backend does not run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use rustpython_vm::protocol::{PyIter, PyIterReturn};
use rustpython_vm::PyObjectRef;

use super::{panicked, Worker};
use crate::call::{hook_on, Feed};
use crate::command::{Answer, Invoke, ReplySlot, Responder, Returns};
use crate::error::PyRunnerError;

/// A stream pulls at most this many items in a row before the others get
/// a turn (the queue is looked at after every item).
const PULLS_IN_A_ROW: u32 = 64;

/// The streams a runner has open, in the order they were opened.
#[derive(Default)]
pub(super) struct Streams {
    open: Vec<Stream>,
}

struct Stream {
    feed: Arc<Feed>,
    iterator: PyIter,
    made: u64,
    returns: Returns,
    timeout: Option<Duration>,
    stalled: bool,
    /// Its feed was ended on purpose (see `Drop`).
    ended: bool,
}

impl Drop for Stream {
    /// A stream dropped without an end (its thread unwinding) ends with
    /// `Stopped`, so that no consumer waits for it forever.
    fn drop(&mut self) {
        if !self.ended {
            self.feed.end(Some(PyRunnerError::Stopped));
        }
    }
}

impl Streams {
    pub fn have_work(&self) -> bool {
        self.open.iter().any(|stream| !stream.stalled)
    }
}

impl Worker<'_> {
    /// A call made with `.stream()`: its function runs under the call's
    /// limit, and what it returns is iterated.
    pub(super) fn start_stream(
        &mut self,
        invoke: Invoke,
        feed: Arc<Feed>,
        reply: Responder,
        timeout: Option<Duration>,
    ) {
        let armed = self.arm(timeout, reply.slot());
        let armed = match armed {
            Ok(armed) => armed,
            Err(err) => return reply.send(Err(err)),
        };
        // `__iter__` is user code: under the call's limit, and a panic in
        // it fails the call, not the thread.
        let iterator = self.under_limit(timeout, reply.slot(), || {
            catch_unwind(AssertUnwindSafe(|| {
                self.call_invoked(&invoke)
                    .and_then(|result| self.stream_source(&invoke.name, &result))
            }))
            .unwrap_or_else(|panic| {
                self.forget_running_loop();
                Err(panicked(panic))
            })
        });
        if let Some(armed) = armed {
            armed.disarm();
        }
        self.past_limit(reply.slot());
        let iterator = match iterator {
            Ok(iterator) => iterator,
            Err(err) => return reply.send(Err(err)),
        };
        feed.set_hook(hook_on(&self.queue));
        reply.send(Ok(Answer::Value(serde_json::Value::Null)));
        self.streams.open.push(Stream {
            feed,
            iterator,
            made: 0,
            returns: invoke.returns,
            timeout,
            stalled: false,
            ended: false,
        });
        let at = self.streams.open.len() - 1;
        self.look_at_stream(at);
    }

    /// `iter(result)`; an async iterable is `Unsupported` here.
    fn stream_source(&self, name: &str, result: &PyObjectRef) -> Result<PyIter, PyRunnerError> {
        let vm = self.vm;
        let class = result.class();
        let is_async = ["__anext__", "__aiter__"]
            .iter()
            .any(|method| class.get_attr(vm.ctx.intern_str(*method)).is_some());
        if is_async {
            return Err(PyRunnerError::Unsupported(format!(
                "{name} returned an async iterator, and the RustPython backend runs no \
                 event loop to pull it: use the pyo3 or the subprocess backend for async generators"
            )));
        }
        result.get_iter(vm).map_err(|_| {
            PyRunnerError::Conversion(format!(
                "{name} returned {}, which is not iterable; finish the call with .await instead of .stream()",
                class.name()
            ))
        })
    }

    /// A stream's consumer took items or left (`Request::Stream`).
    pub(super) fn stream_signal(&mut self, feed: &Arc<Feed>) {
        if let Some(at) = self
            .streams
            .open
            .iter()
            .position(|stream| Arc::ptr_eq(&stream.feed, feed))
        {
            self.look_at_stream(at);
        }
    }

    fn look_at_stream(&mut self, at: usize) {
        let stream = &mut self.streams.open[at];
        if stream.feed.is_closed() {
            return self.close_stream(at, None);
        }
        if stream.feed.room(stream.made) == 0 {
            stream.stall();
        } else {
            stream.stalled = false;
        }
    }

    /// Makes items of the streams that have room, until a command comes.
    pub(super) fn pump_streams(&mut self) {
        let mut at = 0;
        while at < self.streams.open.len() {
            let before = self.streams.open.len();
            for _ in 0..PULLS_IN_A_ROW {
                if self.queue.has_jobs() || !self.pull(at) {
                    break;
                }
            }
            if self.queue.has_jobs() {
                return;
            }
            // A stream that ended left its place to the next one.
            if self.streams.open.len() == before {
                at += 1;
            }
        }
    }

    /// Makes one item; false if the stream cannot go on now.
    fn pull(&mut self, at: usize) -> bool {
        let stream = &mut self.streams.open[at];
        if stream.stalled {
            return false;
        }
        if stream.feed.is_closed() {
            self.close_stream(at, None);
            return false;
        }
        if stream.feed.room(stream.made) == 0 {
            stream.stall();
            return false;
        }
        let (iterator, timeout) = (stream.iterator.clone(), stream.timeout);
        let clock = Arc::new(ReplySlot::default());
        let armed = self.arm(timeout, &clock);
        let armed = match armed {
            Ok(armed) => armed,
            Err(err) => {
                self.close_stream(at, Some(err));
                return false;
            }
        };
        let vm = self.vm;
        let next = self.under_limit(timeout, &clock, || {
            let next = catch_unwind(AssertUnwindSafe(|| iterator.next(vm)));
            if next.is_err() {
                self.forget_running_loop();
            }
            next
        });
        if let Some(armed) = armed {
            armed.disarm();
        }
        self.past_limit(&clock);
        let late = clock
            .is_ready()
            .then(|| PyRunnerError::Timeout(timeout.unwrap_or_default()));
        let item = match next {
            // RustPython 0.5 can panic ("InvalidBytecode") when the
            // watchdog's signal lands in a generator's frame: past the
            // limit that is the item's timeout all the same. The generator
            // is left as it was (running), so it is not closed.
            Err(_) if late.is_some() => {
                self.end_stream(at, late);
                return false;
            }
            // Past the limit, the item is a timeout however it ended: a
            // blocking call that returned late raises nothing.
            Ok(_) if late.is_some() => {
                self.close_stream(at, late);
                return false;
            }
            Err(panic) => {
                self.end_stream(at, Some(panicked(panic)));
                return false;
            }
            Ok(Ok(PyIterReturn::StopIteration(_))) => {
                self.end_stream(at, None);
                return false;
            }
            Ok(Err(err)) => {
                let err = self.exception_error(&err);
                self.end_stream(at, Some(err));
                return false;
            }
            Ok(Ok(PyIterReturn::Return(item))) => item,
        };
        let returns = self.streams.open[at].returns;
        // Reading runs user code (`__str__`): a panic there fails the item.
        let read = catch_unwind(AssertUnwindSafe(|| self.read_result(&item, returns)))
            .unwrap_or_else(|panic| Err(panicked(panic)));
        match read {
            Ok(answer) => {
                let stream = &mut self.streams.open[at];
                stream.made += 1;
                stream.feed.push(Ok(answer));
                true
            }
            Err(err) => {
                self.close_stream(at, Some(err));
                false
            }
        }
    }

    fn end_stream(&mut self, at: usize, err: Option<PyRunnerError>) {
        let mut stream = self.streams.open.remove(at);
        stream.feed.end(err);
        stream.ended = true;
    }

    /// Ends a stream before its generator has: `close()` runs its `finally`.
    fn close_stream(&mut self, at: usize, err: Option<PyRunnerError>) {
        let stream = self.streams.open.remove(at);
        let vm = self.vm;
        let iterator = stream.iterator.as_ref();
        if let Ok(close) = iterator.get_attr("close", vm) {
            let closed = catch_unwind(AssertUnwindSafe(|| close.call((), vm)));
            if let Ok(Err(err)) = closed {
                vm.run_unraisable(
                    err,
                    Some("closing a stream's generator".into()),
                    iterator.to_owned(),
                );
            }
        }
        stream.feed.end(err);
    }

    /// Ends every open stream with `Stopped` (the runner is ending).
    pub(super) fn stop_streams(&mut self) {
        while !self.streams.open.is_empty() {
            self.close_stream(0, Some(PyRunnerError::Stopped));
        }
    }
}

impl Stream {
    /// Out of room: told through the feed's hook once the consumer has
    /// taken half a window.
    fn stall(&mut self) {
        self.stalled = true;
        let half = self.feed.window().div_ceil(2);
        let at = (self.made + half).saturating_sub(self.feed.window());
        self.feed.notify_at(at);
    }
}
