//! A call's items as a Rust stream: [`PyStream`], and the [`Feed`] that
//! carries items from a backend to it with a bounded window.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;

use super::read_answer;
use crate::command::{block_on, Reply};
use crate::error::PyRunnerError;

/// How a backend hears that the consumer of a feed made room or went away:
/// it queues a [`Request::Stream`](crate::command::Request::Stream) on its
/// own queue. Installed by the backend that opened the stream.
pub(crate) type FeedHook = Box<dyn Fn(&Arc<Feed>) + Send + Sync>;

/// The usual hook: a `Request::Stream` on `queue`, if the runner still
/// lives (a stream kept past its runner holds no part of it).
pub(crate) fn hook_on(queue: &Arc<crate::command::CommandQueue>) -> FeedHook {
    let queue = Arc::downgrade(queue);
    Box::new(move |feed| {
        if let Some(queue) = queue.upgrade() {
            // Refused once the runner has ended; its streams ended with it.
            let request = crate::command::Request::Stream(feed.clone());
            let _ = queue.push(crate::command::Job::unanswered(request));
        }
    })
}

/// Where a stream's items go, shared by the backend that makes them and the
/// [`PyStream`] that reads them.
///
/// The backend pushes items; the consumer pops them and counts them
/// (`consumed`). The backend keeps at most `window` items made and not yet
/// consumed: when it has no room, it asks with [`notify_at`](Self::notify_at)
/// to be told (through its hook) once the consumer has reached a count, and
/// stops. A consumer that drops the stream marks the feed closed and tells
/// the backend the same way, which then closes the generator.
pub(crate) struct Feed {
    window: u64,
    state: Mutex<FeedState>,
    consumed: AtomicU64,
    /// The consumed count at which the hook is called; `u64::MAX`: none asked.
    notify_at: AtomicU64,
    closed: AtomicBool,
    hook: OnceLock<FeedHook>,
}

#[derive(Default)]
struct FeedState {
    items: VecDeque<Reply>,
    ended: bool,
    waker: Option<Waker>,
}

impl Feed {
    pub fn new(window: usize) -> Arc<Feed> {
        Arc::new(Feed {
            window: window.max(1) as u64,
            state: Mutex::new(FeedState::default()),
            consumed: AtomicU64::new(0),
            notify_at: AtomicU64::new(u64::MAX),
            closed: AtomicBool::new(false),
            hook: OnceLock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // -- the backend's side ------------------------------------------------

    /// How many items may be made and not yet consumed.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// How many items the consumer has taken so far.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::SeqCst)
    }

    /// How many more items may be made now, given that `made` were made.
    pub fn room(&self, made: u64) -> u64 {
        (self.consumed() + self.window).saturating_sub(made)
    }

    /// Installs the backend's hook. Call [`is_closed`](Self::is_closed)
    /// after it: a consumer that went away before saw no hook to call.
    pub fn set_hook(&self, hook: FeedHook) {
        let _ = self.hook.set(hook);
        // Against `close`: either it sees the hook or the backend, reading
        // `closed` next, sees the close.
        fence(Ordering::SeqCst);
    }

    /// Asks for the hook once the consumer has taken `count` items (or at
    /// once, if it has). Only the last request counts.
    pub fn notify_at(self: &Arc<Self>, count: u64) {
        self.notify_at.store(count, Ordering::SeqCst);
        if self.consumed() >= count {
            self.fire(count);
        }
    }

    /// True once the consumer dropped the stream: the backend closes the
    /// generator and pushes nothing more.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Hands the consumer one item; wakes it if it waits. Items pushed after
    /// the stream ended, or after the consumer left, are dropped.
    pub fn push(&self, item: Reply) {
        let waker = {
            let mut state = self.lock();
            if state.ended || self.is_closed() {
                return;
            }
            state.items.push_back(item);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the stream, after the items pushed so far and then `last`
    /// (an error) if given. Later ends and pushes are ignored.
    pub fn end(&self, last: Option<PyRunnerError>) {
        let waker = {
            let mut state = self.lock();
            if state.ended {
                return;
            }
            if let Some(err) = last {
                state.items.push_back(Err(err));
            }
            state.ended = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    // -- the consumer's side -----------------------------------------------

    fn fire(self: &Arc<Self>, count: u64) {
        let asked =
            self.notify_at
                .compare_exchange(count, u64::MAX, Ordering::SeqCst, Ordering::SeqCst);
        if asked.is_ok() {
            if let Some(hook) = self.hook.get() {
                hook(self);
            }
        }
    }

    /// The next item, `None` once the stream has ended and every item was taken.
    fn poll_item(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let item = {
            let mut state = self.lock();
            match state.items.pop_front() {
                Some(item) => item,
                None if state.ended => return Poll::Ready(None),
                None => {
                    match &mut state.waker {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        waker => *waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
            }
        };
        let consumed = self.consumed.fetch_add(1, Ordering::SeqCst) + 1;
        let asked = self.notify_at.load(Ordering::SeqCst);
        if consumed >= asked {
            self.fire(asked);
        }
        Poll::Ready(Some(item))
    }

    /// The consumer is gone: nothing more is pushed, and the backend hears of it.
    fn close(self: &Arc<Self>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        fence(Ordering::SeqCst);
        let (ended, items) = {
            let mut state = self.lock();
            (state.ended, std::mem::take(&mut state.items))
        };
        // Dropped outside the lock: an item may own a Python value's bytes.
        drop(items);
        if !ended {
            if let Some(hook) = self.hook.get() {
                hook(self);
            }
        }
    }
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("window", &self.window)
            .field("consumed", &self.consumed())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The start of a stream: the call that makes the generator. Its answer
/// is `Ok` once the backend holds the generator; an error is the stream's
/// one item.
pub(crate) type Start = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// The items of a generator, iterator, async generator or async iterator
/// that a Python function returned, made by [`Call::stream`](super::Call::stream).
///
/// Each item is read into `R` as a call's result is. Python runs at most
/// a window of items ahead of the consumer (see the crate's docs,
/// "Streams"). A Python exception ends the stream with one
/// `Err(PyRunnerError::Python { .. })`; dropping the stream before its end
/// closes the generator (`close()` or `aclose()`), so its `finally` runs.
#[must_use = "a stream does nothing until it is polled"]
pub struct PyStream<R> {
    start: Option<Start>,
    feed: Arc<Feed>,
    done: bool,
    returns: PhantomData<fn() -> R>,
}

impl<R> PyStream<R> {
    pub(crate) fn new(start: Start, feed: Arc<Feed>) -> Self {
        PyStream {
            start: Some(start),
            feed,
            done: false,
            returns: PhantomData,
        }
    }

    /// A stream whose only item is `err`.
    pub(crate) fn failed(err: PyRunnerError) -> Self {
        let feed = Feed::new(1);
        feed.end(Some(err));
        PyStream {
            start: None,
            feed,
            done: false,
            returns: PhantomData,
        }
    }
}

impl<R> fmt::Debug for PyStream<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PyStream")
            .field("starting", &self.start.is_some())
            .field("feed", &self.feed)
            .field("done", &self.done)
            .finish()
    }
}

impl<R> PyStream<R>
where
    R: DeserializeOwned + Send + 'static,
{
    /// The items one by one on a plain thread, blocking for each: the
    /// blocking twin of the stream, safe in any context.
    pub fn blocking_iter(self) -> BlockingIter<R> {
        BlockingIter { stream: self }
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<R, PyRunnerError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(start) = &mut self.start {
            match start.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(_)) => self.start = None,
                Poll::Ready(Err(err)) => {
                    self.start = None;
                    self.done = true;
                    self.feed.close();
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
        match self.feed.poll_item(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                // An error is the stream's last item.
                self.done = true;
                self.feed.close();
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Some(Ok(answer))) => {
                let item = read_answer(answer);
                if item.is_err() {
                    // An item that does not fit ends the stream, as one
                    // the backend could not read does.
                    self.done = true;
                    self.feed.close();
                }
                Poll::Ready(Some(item))
            }
        }
    }
}

impl<R> futures_core::Stream for PyStream<R>
where
    R: DeserializeOwned + Send + 'static,
{
    type Item = Result<R, PyRunnerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl<R> futures_core::FusedStream for PyStream<R>
where
    R: DeserializeOwned + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<R> Drop for PyStream<R> {
    fn drop(&mut self) {
        // The start first: a call not yet taken never starts, one taken
        // opens the generator and finds the feed closed.
        self.start = None;
        self.feed.close();
    }
}

/// [`PyStream::blocking_iter`]'s iterator. Dropping it drops the stream.
#[derive(Debug)]
#[must_use = "an iterator does nothing unless advanced"]
pub struct BlockingIter<R> {
    stream: PyStream<R>,
}

impl<R> Iterator for BlockingIter<R>
where
    R: DeserializeOwned + Send + 'static,
{
    type Item = Result<R, PyRunnerError>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = &mut self.stream;
        block_on(std::future::poll_fn(|cx| stream.poll_item(cx)))
    }
}

impl<R> std::iter::FusedIterator for BlockingIter<R> where R: DeserializeOwned + Send + 'static {}
