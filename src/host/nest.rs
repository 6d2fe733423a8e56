//! Nested commands: a host function that sends a command to the runner
//! that called it, while that runner waits for the host function.
//!
//! Queued as usual, such a command would wait behind the command that is
//! waiting for the host function: a deadlock. So while a backend runs a
//! sync host function it opens a [`Scope`] on that thread, naming its
//! runner's queue and what to do with a command sent to that queue from
//! this thread: an in-process backend runs it at once, there, inside the
//! Python call that waits; a child's supervisor marks it
//! [`Job::nested`] and sends it past the command that holds the child,
//! which serves it while it waits for the host function's reply.
//! `Submission` asks [`route`] on its first poll. Commands sent from other
//! threads (an async host function's task, a thread the host function
//! started) are not nested and queue as usual.
//!
//! A scope lives on the stack of the thread that opened it. Python
//! libraries that switch stacks within one thread (greenlet, gevent) and
//! switch away inside a nested command would leave the thread's scope
//! pointing into a stack that is swapped out; host functions are not meant
//! to be called from such code.

use std::cell::Cell;
use std::ptr;

use crate::command::{CommandQueue, Job};

/// What a scope does with a nested command: answer it (and give back
/// `None`) or give back the job to queue.
pub(crate) type Take<'a> = &'a dyn Fn(Job) -> Option<Job>;

struct Scope {
    queue: *const CommandQueue,
    take: *const (dyn Fn(Job) -> Option<Job> + 'static),
}

thread_local! {
    static SCOPE: Cell<Option<Scope>> = const { Cell::new(None) };
}

/// Runs `body` (a sync host function) with commands to `queue` from this
/// thread handed to `take`. Scopes nest: an inner one (a host function
/// called by a nested command) applies until it ends.
pub(crate) fn within<R>(queue: &CommandQueue, take: Take<'_>, body: impl FnOnce() -> R) -> R {
    // SAFETY: the lifetime is erased only for the thread-local; the pointer
    // is used only by `route` on this thread, while this call (which
    // borrows `take`) is on the stack, and the guard restores the outer
    // scope on every way out.
    let take: *const (dyn Fn(Job) -> Option<Job> + '_) = take;
    let take: *const (dyn Fn(Job) -> Option<Job> + 'static) = unsafe { std::mem::transmute(take) };
    let outer = SCOPE.with(|scope| {
        scope.replace(Some(Scope {
            queue: ptr::from_ref(queue),
            take,
        }))
    });
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SCOPE.with(|scope| scope.set(outer));
        }
    }
    let _restore = Restore(outer);
    body()
}

/// A command about to be queued on `queue`: `Some(job)` to queue (marked
/// nested or not), `None` if a scope answered it.
pub(crate) fn route(queue: &CommandQueue, job: Job) -> Option<Job> {
    let scope = SCOPE.with(|scope| {
        let current = scope.take();
        let found = current
            .as_ref()
            .filter(|current| ptr::eq(current.queue, queue))
            .map(|current| current.take);
        scope.set(current);
        found
    });
    match scope {
        // SAFETY: see `within`: the scope that set it is still open.
        Some(take) => unsafe { (*take)(job) },
        None => Some(job),
    }
}
