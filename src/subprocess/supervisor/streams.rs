//! Streams: the invoke of `call(..).stream()` opens one in the child, its
//! items go to the caller's feed, and the consumer's progress goes back to
//! the child as credit.
//!
//! The child may have sent at most `granted` items of a stream; it starts
//! at the feed's window. Each time the consumer has taken another half
//! window (the feed's `notify_at`), the supervisor grants `consumed +
//! window`, so the child rarely waits for credit and never runs more than a
//! window ahead of the consumer. A consumer that drops the stream makes the
//! supervisor send `cancel`, and the child closes the iterator.

use super::*;
use crate::call::{hook_on, Feed};

/// A stream open in the child.
pub(super) struct OpenStream {
    feed: Arc<Feed>,
    /// How many items the child may have sent in all.
    granted: u64,
    /// How many it has sent.
    received: u64,
    /// The consumer left and the child was told to close the iterator.
    closing: bool,
}

impl OpenStream {
    /// The stream's end: after its items, the error that ended it, if any.
    pub(super) fn end(self, reply: Reply) {
        self.feed.end(reply.err());
    }
}

/// The feed of a stream's invoke, if `request` is one.
pub(super) fn feed_of(request: &Request) -> Option<&Arc<Feed>> {
    match request {
        Request::Invoke(invoke) => invoke.stream.as_ref(),
        _ => None,
    }
}

impl Core {
    /// The child says stream `id` is open: its invoke leaves the line, its
    /// caller's start is answered, and the feed's hook is installed.
    pub(super) fn stream_opened(&mut self, id: u64, on_loop: bool) -> Result<(), PyRunnerError> {
        if self.interrupting.is_some() && self.interrupted == Some(id) {
            // Its function returned before a SIGINT for it came: the
            // child ignores that one and goes on.
            self.interrupted_request_answered(id);
        }
        let feed = self
            .flights
            .get(id)
            .and_then(|flight| feed_of(&flight.item.request))
            .cloned();
        let slice = self.slices();
        let Some(feed) = feed.filter(|_| {
            self.flights
                .became_stream(id, on_loop, Instant::now(), slice)
        }) else {
            return Err(PyRunnerError::Protocol(format!(
                "malformed frame from the child: a streaming note for request {id}, \
                 which is no stream in its line"
            )));
        };
        // The hook queues a signal on this runner's queue, which the
        // supervisor answers (`stream_signal`).
        feed.set_hook(hook_on(&self.queue));
        let window = feed.window();
        self.streams.insert(
            id,
            OpenStream {
                feed: feed.clone(),
                granted: window,
                received: 0,
                closing: false,
            },
        );
        // Answered after the hook is in: a consumer that saw its stream open
        // and then left is heard through the hook; one that left before is
        // seen here.
        let heard = self.flights.get(id).is_some_and(|flight| {
            !flight.item.reply.is_abandoned()
                && flight
                    .item
                    .reply
                    .slot()
                    .complete(Ok(Answer::Value(Value::Null)))
        });
        if !heard || feed.is_closed() {
            self.close_stream(id);
        } else {
            feed.notify_at(half(window));
        }
        Ok(())
    }

    /// One item of stream `id`.
    pub(super) fn stream_item(&mut self, id: u64, item: Answer) -> Result<(), PyRunnerError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Err(PyRunnerError::Protocol(format!(
                "malformed frame from the child: an item of request {id}, which has no open stream"
            )));
        };
        stream.received += 1;
        if stream.received > stream.granted {
            return Err(PyRunnerError::Protocol(format!(
                "the child sent item {} of stream {id} with credit for {}",
                stream.received, stream.granted
            )));
        }
        // A stream that is closing runs its backstop until its reply.
        let may_send = stream.received < stream.granted || stream.closing;
        stream.feed.push(Ok(item));
        if self.flights.any_timed() {
            let slice = self.slices();
            self.flights
                .stream_moved(id, may_send, Instant::now(), slice);
        }
        Ok(())
    }

    /// The consumer of `feed` took items or left: more credit, or a close.
    /// A stream that has ended is left alone.
    pub(super) fn stream_signal(&mut self, feed: &Arc<Feed>) {
        let Some((&id, stream)) = self
            .streams
            .iter_mut()
            .find(|(_, stream)| Arc::ptr_eq(&stream.feed, feed))
        else {
            return;
        };
        if stream.closing {
            return;
        }
        if feed.is_closed() {
            self.close_stream(id);
            return;
        }
        let consumed = feed.consumed();
        // What was made, and as many more as the window has room for now.
        let granted = stream.received + feed.room(stream.received);
        if granted > stream.granted {
            let stalled = stream.received >= stream.granted;
            stream.granted = granted;
            self.encode_small(ToChild::More { id, granted });
            if stalled {
                let slice = self.slices();
                self.flights.stream_moved(id, true, Instant::now(), slice);
            }
        }
        feed.notify_at(consumed + half(feed.window()));
    }

    /// Asks the child to close stream `id`'s iterator; its reply, which
    /// ends the stream, follows. The close runs within the stream's limit
    /// in the child, and the stream's backstop runs for it here.
    fn close_stream(&mut self, id: u64) {
        if let Some(stream) = self.streams.get_mut(&id) {
            if !stream.closing {
                stream.closing = true;
                self.encode_small(ToChild::Cancel { id });
                let slice = self.slices();
                self.flights.stream_moved(id, true, Instant::now(), slice);
            }
        }
    }

    /// How many slices of sync streams the child has begun, if its ring
    /// says.
    fn slices(&self) -> Option<u64> {
        let ring = self.child.as_ref()?.ring.as_ref()?;
        Some(ring.slices())
    }

    /// Writes a message of a few bytes, which cannot fail.
    pub(super) fn encode_small(&mut self, message: ToChild<'_>) {
        if let Err(err) = self.writer.encode(message, &mut self.outgoing) {
            debug_assert!(false, "a small message did not encode: {err}");
        }
    }

    /// Ends the stream of request `id`, if one is open, with `reply`; false
    /// if none is (the reply is its start's).
    pub(super) fn end_stream(&mut self, id: u64, reply: Reply) -> Result<(), Reply> {
        match self.streams.remove(&id) {
            Some(stream) => {
                stream.end(reply);
                Ok(())
            }
            None => Err(reply),
        }
    }
}

/// The credit step: half a window, at least one item.
fn half(window: u64) -> u64 {
    (window / 2).max(1)
}
