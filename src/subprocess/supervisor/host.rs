//! Host functions a child calls: `["host", hid, name, args, kwargs]` in,
//! `["host_reply", hid, ok, value]` out.
//!
//! The supervisor's lock is never held while a host function runs. A sync
//! one runs on the supervisor's host thread (started on the first call),
//! inside a nesting scope: a command it sends to this runner is marked
//! nested and sent past the request that waits for it, and the child runs
//! it while it waits. An async one runs on the crate's host runtime. Either
//! way the result comes back through the runner's queue as a
//! `Request::HostDone` naming the call's token, and goes out as a
//! `host_reply` at once, even while a sync request holds the line.
//!
//! A token names one call of one child: a lost child's calls are
//! forgotten (its async futures dropped), so a result that comes later
//! finds no call and is dropped, never sent to the fresh child. So are its
//! nested commands: those queued fail with `WorkerDied`, and a sync host
//! function that outlived its child and sends another hears the same,
//! instead of having it jump the fresh child's line.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::thread::Thread;

use serde_json::Map;

use super::*;
use crate::host::{nest, HostFn, HostResult, HostSetup, HostTable, HostTask, SyncFn};
use crate::tuning::{HOST_THREAD_IDLE, HOST_THREAD_SPIN};

/// What the child is told of the host functions: `kind:name` entries
/// joined by `,` (`ENV_HOST` of `python/protocol.py`).
pub(crate) fn child_setting(table: &HostTable) -> String {
    let entries: Vec<String> = table
        .iter()
        .map(|(name, f)| format!("{}:{name}", if f.is_async() { "a" } else { "s" }))
        .collect();
    entries.join(",")
}

/// The host calls of one supervisor's child.
#[derive(Default)]
pub(super) struct HostCalls {
    setup: Option<HostSetup>,
    /// The calls the child waits for, by token.
    pending: HashMap<u64, Pending>,
    next_token: u64,
    /// Run sync host functions, once one was called.
    threads: Option<HostThreads>,
    /// The runner shuts down: a call read from here on is not run.
    refused: bool,
}

struct Pending {
    hid: u64,
    /// An async call's future.
    task: Option<HostTask>,
}

impl HostCalls {
    pub(super) fn new(setup: Option<HostSetup>) -> HostCalls {
        HostCalls {
            setup,
            ..HostCalls::default()
        }
    }

    /// From here on, host calls the child makes are not run (the runner
    /// shuts down).
    pub(super) fn refuse(&mut self) {
        self.refused = true;
    }

    /// Whether the child waits for a host call.
    pub(super) fn any_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl Core {
    /// The child called host function `name`.
    pub(super) fn host_call(
        &mut self,
        hid: u64,
        name: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<(), PyRunnerError> {
        if self.host.refused {
            // Read as the runner shuts down: nobody waits for its result.
            return Ok(());
        }
        if self.host.pending.values().any(|call| call.hid == hid) {
            return Err(PyRunnerError::Protocol(format!(
                "malformed frame from the child: host call {hid} while one of that id is pending"
            )));
        }
        let found = self.host.setup.as_ref().and_then(|setup| {
            let (name, f) = setup.table.get(&name)?;
            Some((setup.clone(), name.clone(), f.clone()))
        });
        let Some((setup, name, f)) = found else {
            // An honest child knows only the functions it was given.
            let refused = Err(format!("this runner has no host function named {name:?}"));
            self.send_host_reply(hid, &refused);
            return Ok(());
        };
        self.host.next_token += 1;
        let token = self.host.next_token;
        match f {
            HostFn::Sync(f) => {
                let queue = &self.queue;
                let threads = self
                    .host
                    .threads
                    .get_or_insert_with(|| HostThreads::new(setup, queue.clone()));
                let call = SyncCall {
                    token,
                    name,
                    f,
                    args,
                    kwargs,
                };
                if let Err(err) = threads.call(call) {
                    let refused = Err(format!(
                        "could not start a thread to run host functions on: {err}"
                    ));
                    self.send_host_reply(hid, &refused);
                    return Ok(());
                }
                self.host.pending.insert(token, Pending { hid, task: None });
            }
            HostFn::Async(f) => {
                let queue = self.queue.clone();
                let task = setup.start_async(&name, f.clone(), args, kwargs, move |result| {
                    queue.push_unanswered(Job::unanswered(Request::HostDone { token, result }));
                });
                self.host.pending.insert(
                    token,
                    Pending {
                        hid,
                        task: Some(task),
                    },
                );
            }
        }
        Ok(())
    }

    /// The coroutine awaiting async host call `hid` was cancelled: its
    /// future is dropped. (A sync call cannot be cancelled; the child
    /// sends no such thing.)
    pub(super) fn host_cancelled(&mut self, hid: u64) {
        let token = self
            .host
            .pending
            .iter()
            .find(|(_, call)| call.hid == hid && call.task.is_some())
            .map(|(&token, _)| token);
        if let Some(call) = token.and_then(|token| self.host.pending.remove(&token)) {
            if let Some(task) = call.task {
                task.abort();
            }
        }
    }

    /// Host call `token` returned: its reply goes out, if the child that
    /// called still waits for it.
    pub(super) fn host_done(&mut self, token: u64, result: HostResult) {
        let Some(call) = self.host.pending.remove(&token) else {
            return;
        };
        self.send_host_reply(call.hid, &result);
    }

    fn send_host_reply(&mut self, hid: u64, result: &HostResult) {
        let deep = Err(format!(
            "the value returned to Python does not fit the value table: {}",
            crate::value::too_deep()
        ));
        let result = match result {
            Ok(value) if crate::value::nests_too_deep(value) => &deep,
            _ => result,
        };
        if let Err(err) = self
            .writer
            .encode(ToChild::HostReply { hid, result }, &mut self.outgoing)
        {
            let refused = Err(format!(
                "the value returned to Python could not be sent: {err}"
            ));
            self.encode_small_reply(hid, &refused);
        }
    }

    fn encode_small_reply(&mut self, hid: u64, result: &HostResult) {
        if let Err(err) = self
            .writer
            .encode(ToChild::HostReply { hid, result }, &mut self.outgoing)
        {
            debug_assert!(false, "a host function's error did not encode: {err}");
        }
    }

    /// The child is lost: its host calls are forgotten, their futures
    /// dropped. A sync function still running finishes on its thread, which
    /// then ends; the next child's calls get a thread of their own.
    pub(super) fn host_forget_child(&mut self) {
        let mut sync_running = false;
        for (_, call) in self.host.pending.drain() {
            match call.task {
                Some(task) => task.abort(),
                None => sync_running = true,
            }
        }
        if sync_running {
            // Closed: their later nested commands fail (see `serve_calls`).
            self.host.threads = None;
        }
        // Those queued before: no child waits for them.
        self.queue.take_all(&mut self.backlog);
        let (nested, rest): (VecDeque<Job>, VecDeque<Job>) =
            self.backlog.drain(..).partition(|job| job.nested);
        self.backlog = rest;
        for job in nested {
            job.reply.send(Err(PyRunnerError::WorkerDied {
                reason: "the child whose host function sent this command was lost".into(),
            }));
        }
    }
}

/// A sync host call for the host thread.
struct SyncCall {
    token: u64,
    name: Arc<str>,
    f: Arc<SyncFn>,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
}

/// The supervisor's threads for sync host functions: one, and one more for
/// each call made while every one runs a call (a host function whose
/// nested command calls a host function). Dropped, they run no more calls
/// and end once the ones they run return.
struct HostThreads {
    line: Arc<HostLine>,
    setup: HostSetup,
    queue: Arc<CommandQueue>,
}

#[derive(Default)]
struct HostLine {
    calls: Mutex<VecDeque<SyncCall>>,
    queued: AtomicUsize,
    /// Threads waiting for a call.
    idle: AtomicUsize,
    closed: AtomicBool,
    /// The threads parked for want of a call: a call wakes one of them.
    parked: Mutex<Vec<Thread>>,
    /// Held while `closed` is set, and while a nested command is checked
    /// against it and queued: once the supervisor has closed the line (its
    /// child is lost), no nested command of that child's calls is queued
    /// behind its back.
    nesting: Mutex<()>,
}

impl HostThreads {
    fn new(setup: HostSetup, queue: Arc<CommandQueue>) -> HostThreads {
        HostThreads {
            line: Arc::default(),
            setup,
            queue,
        }
    }

    fn call(&mut self, call: SyncCall) -> io::Result<()> {
        if self.line.idle.load(Ordering::SeqCst) == 0 {
            let line = self.line.clone();
            let setup = self.setup.clone();
            let queue = self.queue.clone();
            line.idle.fetch_add(1, Ordering::SeqCst);
            let started = std::thread::Builder::new()
                .name("async_py-host-calls".into())
                .spawn(move || serve_calls(&line, &setup, &queue));
            if let Err(err) = started {
                self.line.idle.fetch_sub(1, Ordering::SeqCst);
                return Err(err);
            }
        }
        self.line
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(call);
        self.line.queued.fetch_add(1, Ordering::SeqCst);
        // One that spins takes it by itself; else one parked is woken. A
        // thread that is about to park looks at `queued` under the same
        // lock first, so the call is never left with all of them asleep.
        let sleeper = lock(&self.line.parked).pop();
        if let Some(thread) = sleeper {
            thread.unpark();
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for HostThreads {
    fn drop(&mut self) {
        {
            let _nesting = lock(&self.line.nesting);
            self.line.closed.store(true, Ordering::SeqCst);
        }
        for thread in lock(&self.line.parked).drain(..) {
            thread.unpark();
        }
    }
}

/// A host thread: runs each call in a nesting scope and hands its result
/// to the supervisor's state itself. Between calls it spins for
/// [`HOST_THREAD_SPIN`], moving that state forward as a waiting caller
/// does (`Drive::drive`): a Python loop of host calls sends the next one
/// within microseconds of its reply, and this thread, which reads it and
/// runs it, then costs no wake-up of another thread on either side. Then
/// it parks, and the supervisor thread takes over.
fn serve_calls(line: &HostLine, setup: &HostSetup, queue: &Arc<CommandQueue>) {
    // A command the host function sends to this runner is nested: the
    // supervisor sends it past the request that waits, and the child runs
    // it while it waits. Once the child that waits is lost (the line
    // closed), no child waits for it: it fails as the command that called
    // the host function did.
    let take = |mut job: Job| {
        let _nesting = line
            .nesting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if line.closed.load(Ordering::SeqCst) {
            job.reply.send(Err(PyRunnerError::WorkerDied {
                reason: "the child whose host function sent this command was lost".into(),
            }));
            return None;
        }
        job.nested = true;
        if let Err(job) = queue.push(job) {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        None
    };
    let mut held = Vec::new();
    let drive = |held: &mut Vec<Waker>| {
        if let Some(driver) = queue.driver() {
            driver.drive(held);
            for waker in held.drain(..) {
                waker.wake();
            }
        }
    };
    loop {
        if line.closed.load(Ordering::SeqCst) {
            return;
        }
        let next = line
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front();
        let Some(call) = next else {
            // In the seat, if free: the supervisor thread then leaves the
            // child's frames to this one instead of waking for each.
            let driver = queue.driver();
            let seat = driver.as_ref().and_then(|driver| driver.try_begin());
            let spin_until = Instant::now() + HOST_THREAD_SPIN;
            let mut parked = false;
            while line.queued.load(Ordering::SeqCst) == 0 && !line.closed.load(Ordering::SeqCst) {
                drive(&mut held);
                if Instant::now() >= spin_until {
                    parked = true;
                    break;
                }
                std::hint::spin_loop();
            }
            if let (Some(driver), Some(token)) = (&driver, seat) {
                // Wakes the supervisor thread if work is left for it.
                driver.end(token, false, false);
            }
            if parked {
                if queue.has_jobs() {
                    queue.wake_consumer();
                }
                if !park_for_a_call(line) {
                    return;
                }
            }
            continue;
        };
        line.queued.fetch_sub(1, Ordering::SeqCst);
        line.idle.fetch_sub(1, Ordering::SeqCst);
        let SyncCall {
            token,
            name,
            f,
            args,
            kwargs,
        } = call;
        let result = nest::within(queue, &take, || setup.call_sync(&name, &*f, args, kwargs));
        line.idle.fetch_add(1, Ordering::SeqCst);
        // Sent by this thread's next turn, or by whoever drives first.
        queue.push_unanswered_quiet(Job::unanswered(Request::HostDone { token, result }));
        drive(&mut held);
    }
}

/// Parks a host thread until a call may be there for it; false when it is
/// surplus (others are idle too and none called for [`HOST_THREAD_IDLE`])
/// and ends.
fn park_for_a_call(line: &HostLine) -> bool {
    let me = std::thread::current();
    {
        let mut parked = lock(&line.parked);
        if line.queued.load(Ordering::SeqCst) > 0 || line.closed.load(Ordering::SeqCst) {
            return true;
        }
        parked.push(me.clone());
    }
    let since = Instant::now();
    std::thread::park_timeout(HOST_THREAD_IDLE);
    let mut parked = lock(&line.parked);
    // Still listed: not woken by a call (a timeout, or a spurious wake).
    let listed = parked.iter().position(|thread| thread.id() == me.id());
    if let Some(at) = listed {
        parked.swap_remove(at);
    }
    let idle_long = listed.is_some() && since.elapsed() >= HOST_THREAD_IDLE;
    if idle_long && line.queued.load(Ordering::SeqCst) == 0 {
        // The last idle thread stays for the next call.
        let surplus = line
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |idle| {
                (idle > 1).then(|| idle - 1)
            })
            .is_ok();
        if surplus {
            return false;
        }
    }
    true
}
