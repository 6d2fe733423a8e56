//! Streams on the PyO3 backend: the items of a generator (or any iterable)
//! a call returned, made on the runner's thread between commands, and those
//! of an async generator (or async iterable), pulled on the runner's loop.
//!
//! A stream makes items while its feed has room (see `call::Feed`): the
//! thread pulls a sync iterator's items after each batch of commands, and
//! instead of going to sleep, checking for a command after every item; an
//! async iterator has one `__anext__` at a time scheduled on the loop, and
//! the next is scheduled when it finishes. Out of room, the stream asks its
//! feed to be told when the consumer has taken half a window, which queues
//! a `Request::Stream` here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyIterator;

use super::{watchdog, Worker};
use crate::call::{hook_on, Feed};
use crate::command::{ReplySlot, Responder, Returns};
use crate::error::PyRunnerError;
use crate::tuning::LOOP_TURN_GAP;

/// A sync stream pulls at most this many items in a row before it lets the
/// other streams have a turn (the queue is looked at after every item).
const PULLS_IN_A_ROW: u32 = 64;

/// The streams a runner has open.
#[derive(Default)]
pub(super) struct Streams<'py> {
    open: HashMap<u64, Stream<'py>>,
    /// Loop tokens of the `__anext__` calls pending, and their stream.
    pulls: HashMap<u64, u64>,
    next_id: u64,
}

struct Stream<'py> {
    feed: Arc<Feed>,
    source: Source<'py>,
    /// Items made so far.
    made: u64,
    returns: Returns,
    /// The limit of each item.
    timeout: Option<Duration>,
    /// Out of room: it waits for its feed's hook.
    stalled: bool,
    /// Its feed was ended on purpose (see `Drop`).
    ended: bool,
}

impl Drop for Stream<'_> {
    /// A stream dropped without an end (its thread unwinding) ends with
    /// `Stopped`, so that no consumer waits for it forever.
    fn drop(&mut self) {
        if !self.ended {
            self.feed.end(Some(PyRunnerError::Stopped));
        }
    }
}

pub(super) enum Source<'py> {
    Sync(Bound<'py, PyIterator>),
    /// An async iterator, with the loop token of its pending `__anext__`.
    Async(Bound<'py, PyAny>, Option<u64>),
}

impl<'py> Streams<'py> {
    /// True if a sync stream has room to make items in.
    pub fn have_work(&self) -> bool {
        self.open
            .values()
            .any(|stream| matches!(stream.source, Source::Sync(_)) && !stream.stalled)
    }

    /// True if a loop token is one of a stream's pulls.
    pub fn is_pull(&self, token: u64) -> bool {
        self.pulls.contains_key(&token)
    }
}

impl<'py> Worker<'py> {
    /// Opens a stream on what a call returned, answers the call, and makes
    /// the first items.
    pub(super) fn open_stream(
        &mut self,
        source: Result<Source<'py>, PyRunnerError>,
        feed: Arc<Feed>,
        returns: Returns,
        reply: Responder,
        timeout: Option<Duration>,
    ) {
        let source = match source {
            Ok(source) => source,
            Err(err) => return reply.send(Err(err)),
        };
        feed.set_hook(hook_on(&self.queue));
        reply.send(Ok(crate::command::Answer::Value(serde_json::Value::Null)));
        let id = self.streams.next_id;
        self.streams.next_id += 1;
        self.streams.open.insert(
            id,
            Stream {
                feed,
                source,
                made: 0,
                returns,
                timeout,
                stalled: false,
                ended: false,
            },
        );
        self.look_at_stream(id);
    }

    /// What a stream reads: an async iterator if the result has `__anext__`
    /// or `__aiter__`, else `iter(result)`. Called while the call's limit
    /// is armed: `__iter__` and `__aiter__` are user code.
    pub(super) fn stream_source(
        &self,
        name: &str,
        result: &Bound<'py, PyAny>,
    ) -> Result<Source<'py>, PyRunnerError> {
        let py = self.py;
        if result.hasattr(intern!(py, "__anext__")).unwrap_or(false) {
            return Ok(Source::Async(result.clone(), None));
        }
        if result.hasattr(intern!(py, "__aiter__")).unwrap_or(false) {
            let iterator = result
                .call_method0(intern!(py, "__aiter__"))
                .map_err(|err| self.python_error(err))?;
            return Ok(Source::Async(iterator, None));
        }
        match PyIterator::from_object(result) {
            Ok(iterator) => Ok(Source::Sync(iterator)),
            Err(_) => {
                let kind = result
                    .get_type()
                    .name()
                    .map(|name| name.to_string())
                    .unwrap_or_else(|_| "an object".into());
                Err(PyRunnerError::Conversion(format!(
                    "{name} returned {kind}, which is not iterable; finish the call with .await instead of .stream()"
                )))
            }
        }
    }

    /// A stream's consumer took items or left (`Request::Stream`).
    pub(super) fn stream_signal(&mut self, feed: &Arc<Feed>) {
        let id = self
            .streams
            .open
            .iter()
            .find(|(_, stream)| Arc::ptr_eq(&stream.feed, feed))
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.look_at_stream(id);
        }
    }

    /// Closes a stream whose consumer left; lets one with room make items
    /// (an async one gets its next pull scheduled; a sync one is pulled by
    /// `pump_streams`).
    fn look_at_stream(&mut self, id: u64) {
        let Some(stream) = self.streams.open.get_mut(&id) else {
            return;
        };
        if stream.feed.is_closed() {
            return self.close_stream(id, None);
        }
        if stream.feed.room(stream.made) == 0 {
            stream.stall();
            return;
        }
        stream.stalled = false;
        if let Source::Async(_, None) = stream.source {
            self.pull_async(id);
        }
    }

    /// Makes items of the sync streams that have room, until a command
    /// comes; called after each batch and instead of sleeping.
    pub(super) fn pump_streams(&mut self) {
        let ids: Vec<u64> = self
            .streams
            .open
            .iter()
            .filter(|(_, stream)| matches!(stream.source, Source::Sync(_)) && !stream.stalled)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            for _ in 0..PULLS_IN_A_ROW {
                if self.must_stop_pumping() || !self.pull_sync(id) {
                    break;
                }
            }
            // A C-level iterator (a list, `range`) runs no bytecode, so the
            // interpreter never offers the GIL to other threads meanwhile.
            self.py.detach(|| ());
            if self.must_stop_pumping() {
                return;
            }
        }
    }

    /// A command waits, or the loop is due a turn (coroutines and async
    /// streams go on while a sync stream makes items).
    fn must_stop_pumping(&self) -> bool {
        self.queue.has_jobs()
            || (self.driver.is_some() && self.last_turn.elapsed() >= LOOP_TURN_GAP)
    }

    /// Makes one item of a sync stream; false if the stream cannot go on
    /// now (no room, ended, or closed).
    fn pull_sync(&mut self, id: u64) -> bool {
        let Some(stream) = self.streams.open.get_mut(&id) else {
            return false;
        };
        if stream.feed.is_closed() {
            self.close_stream(id, None);
            return false;
        }
        if stream.feed.room(stream.made) == 0 {
            stream.stall();
            return false;
        }
        let Source::Sync(iterator) = &stream.source else {
            return false;
        };
        let mut iterator = iterator.clone();
        let timeout = stream.timeout;
        // Each item has the call's limit: the watchdog answers this slot
        // and raises `RunnerTimeout` in the generator.
        let clock = Arc::new(ReplySlot::default());
        let mut started = self.watchdog.take();
        let armed = crate::watchdog::arm(&mut started, timeout, &clock, || self.interrupter());
        self.watchdog = started;
        let armed = match armed {
            Ok(armed) => armed,
            Err(err) => {
                self.close_stream(id, Some(err));
                return false;
            }
        };
        let next = iterator.next();
        if let Some(armed) = armed {
            watchdog::disarm(&armed, self.py);
        }
        let item = match next {
            // Past the limit, the item is a timeout however it ended: a
            // blocking call that returned late raises nothing.
            Some(_) if clock.is_ready() => {
                let limit = timeout.unwrap_or_default();
                self.close_stream(id, Some(PyRunnerError::Timeout(limit)));
                return false;
            }
            None => {
                self.end_stream(id, None);
                return false;
            }
            Some(Err(err)) => {
                let err = self.python_error(err);
                self.end_stream(id, Some(err));
                return false;
            }
            Some(Ok(item)) => item,
        };
        self.deliver(id, &item)
    }

    /// Schedules the next `__anext__` of an async stream on the loop.
    fn pull_async(&mut self, id: u64) {
        let Some(stream) = self.streams.open.get(&id) else {
            return;
        };
        let Source::Async(iterator, None) = &stream.source else {
            return;
        };
        let limit = stream.timeout.map(|limit| limit.as_secs_f64());
        let pull = iterator.call_method0(intern!(self.py, "__anext__"));
        let scheduled = pull.map_err(|err| self.python_error(err)).and_then(|pull| {
            let driver = self.driver()?;
            let token = self.next_token;
            self.next_token += 1;
            driver
                .call_method1(intern!(self.py, "schedule"), (token, pull, limit))
                .map_err(|err| self.python_error(err))?;
            Ok(token)
        });
        match scheduled {
            Ok(token) => {
                self.streams.pulls.insert(token, id);
                if let Some(Stream {
                    source: Source::Async(_, pending),
                    ..
                }) = self.streams.open.get_mut(&id)
                {
                    *pending = Some(token);
                }
            }
            Err(err) => self.end_stream(id, Some(err)),
        }
    }

    /// An `__anext__` finished on the loop: `ok` with its item, or not,
    /// with its exception or "timeout" / "cancelled".
    pub(super) fn pulled(&mut self, token: u64, ok: bool, value: &Bound<'py, PyAny>) {
        let Some(id) = self.streams.pulls.remove(&token) else {
            return;
        };
        let Some(stream) = self.streams.open.get_mut(&id) else {
            return;
        };
        if let Source::Async(_, pending) = &mut stream.source {
            *pending = None;
        }
        if ok {
            if self.deliver(id, value) {
                self.look_at_stream(id);
            }
            return;
        }
        if value.is_instance_of::<PyStopAsyncIteration>() {
            return self.end_stream(id, None);
        }
        match value.extract::<String>().ok().as_deref() {
            Some("timeout") => {
                let limit = stream.timeout.unwrap_or_default();
                self.close_stream(id, Some(PyRunnerError::Timeout(limit)));
            }
            Some(_) => self.end_stream(
                id,
                Some(PyRunnerError::python(
                    "CancelledError",
                    "the stream's pull was cancelled",
                )),
            ),
            None => {
                let err = self.exception_error(value);
                self.end_stream(id, Some(err));
            }
        }
    }

    /// Reads an item and pushes it; an item that cannot be read ends the
    /// stream with the error. False if the stream ended.
    fn deliver(&mut self, id: u64, item: &Bound<'py, PyAny>) -> bool {
        let Some(stream) = self.streams.open.get(&id) else {
            return false;
        };
        let returns = stream.returns;
        match self.read_result(item, returns) {
            Ok(answer) => {
                let Some(stream) = self.streams.open.get_mut(&id) else {
                    return false;
                };
                stream.made += 1;
                stream.feed.push(Ok(answer));
                true
            }
            Err(err) => {
                self.close_stream(id, Some(err));
                false
            }
        }
    }

    /// The generator has ended (returned, or raised `err`): the stream ends
    /// after its items.
    fn end_stream(&mut self, id: u64, err: Option<PyRunnerError>) {
        if let Some(mut stream) = self.streams.open.remove(&id) {
            stream.feed.end(err);
            stream.ended = true;
        }
    }

    /// Ends a stream before its generator has: the generator is closed
    /// (`close()`, or for an async one its pending pull cancelled or
    /// `aclose()` scheduled), so its `finally` runs; then the feed ends,
    /// with `err` as its last item if given.
    pub(super) fn close_stream(&mut self, id: u64, err: Option<PyRunnerError>) {
        self.close_stream_noting(id, err);
    }

    /// [`close_stream`](Self::close_stream); the loop token of the
    /// `aclose()` it scheduled, if it did.
    fn close_stream_noting(&mut self, id: u64, err: Option<PyRunnerError>) -> Option<u64> {
        let mut closing = None;
        let mut stream = self.streams.open.remove(&id)?;
        let py = self.py;
        match &stream.source {
            Source::Sync(iterator) => {
                if iterator.hasattr(intern!(py, "close")).unwrap_or(false) {
                    // A `finally` is user code: under the call's limit too.
                    let clock = Arc::new(ReplySlot::default());
                    let mut started = self.watchdog.take();
                    let armed = crate::watchdog::arm(&mut started, stream.timeout, &clock, || {
                        self.interrupter()
                    });
                    self.watchdog = started;
                    let closed = iterator.call_method0(intern!(py, "close"));
                    if let Ok(Some(armed)) = armed {
                        watchdog::disarm(&armed, py);
                    }
                    if let Err(err) = closed {
                        err.write_unraisable(py, Some(iterator.as_any()));
                    }
                }
            }
            Source::Async(iterator, pending) => {
                let pending = *pending;
                if let Some(token) = pending {
                    self.streams.pulls.remove(&token);
                }
                match self.close_async(iterator, pending) {
                    Ok(token) => closing = token,
                    Err(err) => err.write_unraisable(py, Some(iterator)),
                }
            }
        }
        stream.feed.end(err);
        stream.ended = true;
        closing
    }

    /// Closes an async iterator: its pending `__anext__` cancelled (the
    /// generator gets `CancelledError` at its await, so its `finally`
    /// runs), or, with none pending (or one that finished meanwhile),
    /// `aclose()` scheduled on the loop (its token returned).
    fn close_async(
        &mut self,
        iterator: &Bound<'py, PyAny>,
        pending: Option<u64>,
    ) -> PyResult<Option<u64>> {
        let py = self.py;
        let Some(driver) = self.driver.clone() else {
            return Ok(None);
        };
        if let Some(token) = pending {
            let cancelled = driver.call_method1(intern!(py, "cancel"), (token,))?;
            if cancelled.is_truthy()? {
                return Ok(None);
            }
        }
        if !iterator.hasattr(intern!(py, "aclose"))? {
            return Ok(None);
        }
        let token = self.next_token;
        self.next_token += 1;
        let closing = iterator.call_method0(intern!(py, "aclose"))?;
        driver.call_method1(intern!(py, "schedule"), (token, closing, None::<f64>))?;
        Ok(Some(token))
    }

    /// Ends every open stream with `Stopped` (the runner is ending).
    pub(super) fn stop_streams(&mut self) {
        let ids: Vec<u64> = self.streams.open.keys().copied().collect();
        let closing: Vec<u64> = ids
            .into_iter()
            .filter_map(|id| self.close_stream_noting(id, Some(PyRunnerError::Stopped)))
            .collect();
        // The `aclose()`s scheduled just now run before the loop's end
        // cancels what is left (one cancelled before its first step would
        // not run at all).
        if let (Some(driver), false) = (self.driver.clone(), closing.is_empty()) {
            if let Err(err) = driver.call_method1(intern!(self.py, "finish"), (closing,)) {
                err.write_unraisable(self.py, Some(&driver));
            }
        }
    }
}

impl Stream<'_> {
    /// Out of room: told through the feed's hook once the consumer has
    /// taken half a window.
    fn stall(&mut self) {
        self.stalled = true;
        let half = self.feed.window().div_ceil(2);
        let at = (self.made + half).saturating_sub(self.feed.window());
        self.feed.notify_at(at);
    }
}
