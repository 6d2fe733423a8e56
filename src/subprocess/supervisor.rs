//! A runner's child and everything in flight to it: commands are sent,
//! replies read, limits enforced, and a dead child replaced.
//!
//! The state sits behind one lock and is moved forward by whoever holds it:
//! the caller that waits for a reply (it spins anyway, so it also sends and
//! reads, see [`Drive`]) or, when no caller does, the supervisor thread,
//! which sleeps in poll(2) until a reply, a command, room in the pipe, or a
//! deadline. The pipes are non-blocking, so a child that stops reading can
//! never deadlock a parent that is writing. Only the supervisor thread does
//! what may block or take long: starting, killing and replacing children.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde_json::Value;

use super::child::{poll, ChildProcess, LaunchSpec, NoFrame};
use super::flights::{Due, Flight, Flights, Kind, Reached};
use super::ring::{ChildAt, ReplyRing};
use super::Companion;
use crate::command::{CommandQueue, Drive, Job, Request};
use crate::error::PyRunnerError;
use crate::tuning::{
    Supervision, BLIND_LOOK, EXIT_CHECK, EXIT_GRACE, GATHER, INTERRUPT_GRACE, LEAVE_WINDOW_NANOS,
    PIPE_END_GRACE, QUICK_DEATH, QUICK_DEATH_RETRY, START_RETRY, START_RETRY_MAX,
};
use crate::wire::{decode_message, FrameReader, FrameWriter, Message, Outcome};

/// Children that die before they are ready (or soon after, see
/// [`QUICK_DEATH`]) this many times in a row make queued commands fail
/// with `Startup` instead of a busy restart loop.
const MAX_FAILED_STARTS: u32 = 3;

pub(crate) struct Settings {
    pub spec: LaunchSpec,
    pub startup: Option<String>,
    pub frame_limit: usize,
    /// Who this supervisor serves beside, if anyone (see [`Companion`]).
    pub companion: Option<Arc<dyn Companion>>,
    /// The per-command limit, which replayed runs get too.
    pub timeout: Option<Duration>,
    /// A fresh child replays what the runner did (with a companion, the
    /// companion says what a fresh child replays instead).
    pub replay: bool,
    pub supervision: Supervision,
}

/// Why a child is being replaced.
enum Loss {
    Died,
    Protocol(String),
    TimedOut,
    /// A coroutine ran on past its backstop (it held the child's event
    /// loop, or would not stop); the body of no coroutine after
    /// `last_coroutine` had run, and no sync request but `sync_started`.
    CoroutineStuck {
        last_coroutine: u64,
        sync_started: Option<u64>,
    },
}

pub(crate) struct Core {
    queue: Arc<CommandQueue>,
    settings: Settings,
    child: Option<ChildProcess>,
    reader: FrameReader,
    writer: FrameWriter,
    outgoing: BytesMut,
    /// Requests in flight to the child.
    flights: Flights<Job>,
    next_id: u64,
    backlog: VecDeque<Job>,
    failed_starts: u32,
    /// When the current child was ready, and how many replies had been
    /// handed out by then: it died young if it dies before either moves on
    /// (see [`QUICK_DEATH`]).
    ready_at: Option<(Instant, usize)>,
    /// Children died young too often in a row: what the next command hears
    /// instead of starting one more.
    crash_loop: Option<PyRunnerError>,
    /// Set while a timed-out child unwinds after SIGINT.
    interrupting: Option<Instant>,
    /// The request that ran past its limit, which SIGINT was sent for. A
    /// child that stops it for the signal runs nothing after it, and exits
    /// once it has unwound.
    interrupted: Option<u64>,
    /// `stop` was sent: no more commands, no more restarts.
    stop_sent: bool,
    /// `stop` was answered by the child: shut down now, then answer it.
    stop_done: Option<Job>,
    /// A dead or broken child seen by a caller, for the thread to replace.
    lost: Option<Loss>,
    /// Until when, and for how many requests, to gather the next batch.
    gather: Option<(Instant, usize)>,
    /// Replies handed out so far.
    handed_out: usize,
    /// A supervisor with a companion left without a child by a failed
    /// start, or one whose child died young (see [`QUICK_DEATH`]): when it
    /// tries again on its own.
    retry_at: Option<Instant>,
    /// A runner's `run`, `run_file` and `set_venv` answered without an
    /// error, in order, for a fresh child to replay; `None` when it does not.
    remembered: Option<Vec<Request>>,
    /// What a fresh child could not replay, for the next command to answer.
    replay_failure: Option<PyRunnerError>,
    /// When the thread next looks whether the child has exited; `None`:
    /// at its next turn (its poll saw the child's pidfd fire).
    next_exit_look: Option<Instant>,
}

impl Core {
    /// Starts the first child, which must say hello by `first_start_by` if
    /// given; errors here are `build()`'s errors.
    fn start(
        queue: Arc<CommandQueue>,
        settings: Settings,
        first_start_by: Option<Instant>,
    ) -> Result<Core, PyRunnerError> {
        let remembered = settings.replay.then(Vec::new);
        let mut core = Core {
            queue,
            reader: FrameReader::new(settings.frame_limit),
            writer: FrameWriter::new(settings.frame_limit),
            settings,
            child: None,
            outgoing: BytesMut::with_capacity(64 << 10),
            flights: Flights::default(),
            next_id: 1,
            backlog: VecDeque::new(),
            failed_starts: 0,
            ready_at: None,
            crash_loop: None,
            interrupting: None,
            interrupted: None,
            stop_sent: false,
            stop_done: None,
            lost: None,
            gather: None,
            handed_out: 0,
            retry_at: None,
            remembered,
            replay_failure: None,
            next_exit_look: None,
        };
        let start_timeout = core.settings.spec.hello_timeout;
        if let Some(by) = first_start_by {
            let left = by.saturating_duration_since(Instant::now());
            core.settings.spec.hello_timeout = left.min(start_timeout);
        }
        let started = core.start_child();
        core.settings.spec.hello_timeout = start_timeout;
        started.map(|()| core)
    }

    /// Starts a child, runs the startup code, then replays what the runner
    /// did (or what the companion says), and counts failures.
    fn start_child(&mut self) -> Result<(), PyRunnerError> {
        self.reader = FrameReader::new(self.settings.frame_limit);
        self.outgoing.clear();
        let started = ChildProcess::start(&self.settings.spec, &mut self.reader)
            .and_then(|child| {
                self.child = Some(child);
                match self.settings.startup.clone() {
                    Some(code) => self
                        .run_at_start(&Request::Run { code }, "the startup code", None)?
                        .map_err(|err| {
                            PyRunnerError::Startup(format!("startup code failed: {err}"))
                        }),
                    None => Ok(()),
                }
            })
            .and_then(|()| self.replay_for_companion())
            .and_then(|()| self.replay_remembered());
        match started {
            Ok(()) => {
                // Not a loop's end yet: that is judged when the child dies
                // (see `replace_child`).
                self.ready_at = Some((Instant::now(), self.handed_out));
                self.crash_loop = None;
                self.retry_at = None;
                if let (Some(companion), Some(child)) = (&self.settings.companion, &self.child) {
                    companion.serving(child.pid);
                }
                Ok(())
            }
            Err(err) => {
                self.failed_starts += 1;
                self.retry_at = None;
                if let Some(mut child) = self.child.take() {
                    child.kill_group();
                }
                if let Some(companion) = &self.settings.companion {
                    // Its companion takes its work elsewhere until a start
                    // succeeds; it tries again on its own.
                    companion.unavailable(false);
                    let wait = backoff(START_RETRY, self.failed_starts);
                    self.retry_at = Some(Instant::now() + wait);
                }
                Err(err)
            }
        }
    }

    /// A supervisor with a companion: the fresh child runs what the
    /// companion says it must hold.
    fn replay_for_companion(&mut self) -> Result<(), PyRunnerError> {
        let Some(companion) = self.settings.companion.clone() else {
            return Ok(());
        };
        let limit = self.settings.timeout;
        companion.replay(&mut |request| self.run_at_start(request, "a replayed run", limit))
    }

    /// A runner's fresh child: does again what the runner did, in order (see
    /// `PyRunnerBuilder::replay`). A command that raises now is forgotten and
    /// the replay goes on; one that kills the child is forgotten and fails
    /// the start, and the next start goes without it. Either way the next
    /// command hears of it, through `replay_failure`.
    fn replay_remembered(&mut self) -> Result<(), PyRunnerError> {
        let Some(remembered) = self.remembered.take() else {
            return Ok(());
        };
        let total = remembered.len();
        let limit = self.settings.timeout;
        let mut kept = Vec::with_capacity(total);
        let mut failures = Vec::new();
        let mut child_lost = false;
        let mut commands = remembered.into_iter().enumerate();
        for (index, request) in commands.by_ref() {
            let label = format!(
                "command {} of {total} ({}) on a fresh child",
                index + 1,
                describe_command(&request)
            );
            match self.run_at_start(&request, &label, limit) {
                Ok(Ok(())) => kept.push(request),
                Ok(Err(raised)) => failures.push(format!("replaying {label}: {raised}")),
                Err(lost) => {
                    let why = match lost {
                        PyRunnerError::Startup(why) => why,
                        other => format!("{label}: {other}"),
                    };
                    failures.push(format!("replaying {why}"));
                    child_lost = true;
                    break;
                }
            }
        }
        // Those the dead child never got to wait for the next one.
        kept.extend(commands.map(|(_, request)| request));
        self.remembered = Some(kept);
        if failures.is_empty() {
            return Ok(());
        }
        let failure = PyRunnerError::Startup(format!(
            "{}; forgotten, so later children do not replay it",
            failures.join("; ")
        ));
        self.replay_failure = Some(failure.clone());
        if child_lost {
            Err(failure)
        } else {
            Ok(())
        }
    }

    /// Runs a `run`, `run_file` or `set_venv` synchronously, before any
    /// queued command. The outer error is a failed start (the child died,
    /// broke the protocol or took too long, `limit` or else a minute at
    /// least); the inner one is what the command raised.
    fn run_at_start(
        &mut self,
        request: &Request,
        what: &str,
        limit: Option<Duration>,
    ) -> Result<Result<(), PyRunnerError>, PyRunnerError> {
        let id = self.take_id();
        let failed = |why: String| PyRunnerError::Startup(format!("{what}: {why}"));
        self.writer
            .request(&mut self.outgoing, id, request, None)
            .map_err(|err| failed(err.to_string()))?;
        let deadline = Instant::now()
            + limit.unwrap_or(
                self.settings
                    .spec
                    .hello_timeout
                    .max(Duration::from_secs(60)),
            );
        let late = || failed("did not finish in time".into());
        // The whole request first: code larger than the pipe goes out as
        // the child reads it.
        loop {
            if let Err(err) = self.flush() {
                // No reader left is, as a rule, a child that is ending: a
                // contained one's pipes close with all of it, just before
                // its end shows.
                let child = self.child.as_mut().expect("started above");
                if child.wait_for_exit(PIPE_END_GRACE).is_some() {
                    let reason = child.kill_and_describe();
                    return Err(failed(format!("the child died running it: {reason}")));
                }
                return Err(failed(format!("the child stopped reading: {err}")));
            }
            if self.outgoing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(late());
            }
            let child = self.child.as_mut().expect("started above");
            child.wait_writable(deadline);
            // Dead, it reads no more: a copy it forked may keep the pipe
            // open, and full.
            if child.exited() {
                let reason = child.kill_and_describe();
                return Err(failed(format!("the child died running it: {reason}")));
            }
        }
        let child = self.child.as_mut().expect("started above");
        loop {
            let frame = match child.next_frame(&mut self.reader, deadline) {
                Ok(frame) => frame,
                Err(NoFrame::Late) => return Err(late()),
                Err(NoFrame::Closed) => {
                    let reason = child.kill_and_describe();
                    return Err(failed(format!("the child died running it: {reason}")));
                }
                Err(NoFrame::Io(err)) => {
                    return Err(failed(format!("reading from the child failed: {err}")))
                }
                Err(NoFrame::Bad(err)) => return Err(failed(err.to_string())),
            };
            let message = decode_message(&frame).map_err(|e| failed(e.to_string()))?;
            if let Message::OutputMark = message {
                child.forward_stderr();
            }
            if let Message::Reply { id: got, outcome } = message {
                if got == id {
                    return match outcome {
                        Outcome::Done(done) => Ok(done.map(drop)),
                        Outcome::TimedOut => Err(failed("timed out".into())),
                    };
                }
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Moves everything forward without blocking. `held` is `None` on the
    /// supervisor thread. On a caller's turn it is where the wakers of the
    /// callers answered go, for the turn's holder to wake (see [`Drive`]);
    /// and a caller's turn neither starts nor kills children: a loss is
    /// recorded for the supervisor thread.
    fn pump(&mut self, held: Option<&mut Vec<Waker>>) {
        let on_thread = held.is_none();
        if self.lost.is_some() {
            return;
        }
        self.queue.take_all(&mut self.backlog);
        if self.interrupting.is_none() && (on_thread || self.child.is_some()) {
            self.send_backlog();
        }
        if !self.flush_or_lose() {
            return;
        }
        // Looked at before the replies are read, so that all a dead child
        // wrote is read first; by the thread only, which polls for it (a
        // caller's spin makes no system call).
        let exited = on_thread && self.look_for_exit();
        match self.read_replies(held) {
            Ok(true) if !exited => {}
            Ok(_) if self.interrupting.is_some() => self.lost = Some(Loss::TimedOut),
            Ok(_) => self.lost = Some(Loss::Died),
            Err(PyRunnerError::Protocol(why)) => self.lost = Some(Loss::Protocol(why)),
            Err(err) => self.lost = Some(Loss::Protocol(err.to_string())),
        }
        // Replies may have freed the line for what waits in the backlog.
        if self.lost.is_none() && self.interrupting.is_none() && self.child.is_some() {
            self.send_backlog();
            self.flush_or_lose();
        }
    }

    /// Whether the child has exited, looked at when the thread's poll saw
    /// its pidfd fire, else once in [`EXIT_CHECK`]: a look is a system
    /// call, and the thread may turn many times between two polls.
    fn look_for_exit(&mut self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let now = Instant::now();
        if self.next_exit_look.is_some_and(|at| now < at) {
            return false;
        }
        self.next_exit_look = Some(now + EXIT_CHECK);
        child.exited()
    }

    /// Flushes; on failure records the loss and returns false. A closed pipe
    /// means the child is gone (its exit status says why).
    fn flush_or_lose(&mut self) -> bool {
        let Err(err) = self.flush() else {
            return true;
        };
        self.lost = Some(if err.kind() == io::ErrorKind::BrokenPipe {
            Loss::Died
        } else {
            Loss::Protocol(format!("writing to the child failed: {err}"))
        });
        false
    }

    /// Whether the supervisor thread must look at the state: something a
    /// caller's turn left for it to finish, time, or replace.
    fn needs_thread(&self) -> bool {
        self.only_thread_can() || !self.backlog.is_empty() || self.gather.is_some()
    }

    /// What no spinning caller sees to: a deadline's clock, a lost or
    /// interrupted child to replace, unsent bytes waiting for room in the
    /// pipe. (Held-back requests, the rest of `needs_thread`, are sent by
    /// whichever caller drives next.)
    fn only_thread_can(&self) -> bool {
        self.lost.is_some()
            || !self.outgoing.is_empty()
            || self.interrupting.is_some()
            || self.flights.any_timed()
    }

    /// True while the batch after a multi-reply batch is still being gathered.
    fn gathering(&mut self) -> bool {
        match self.gather {
            Some((until, expected)) if self.backlog.len() < expected && Instant::now() < until => {
                true
            }
            _ => {
                self.gather = None;
                false
            }
        }
    }

    /// Commands taken but not answered.
    fn outstanding(&self) -> usize {
        self.flights.len() + self.backlog.len()
    }

    /// What the supervisor thread waits for next: the child's replies, room
    /// in its request pipe, and the nearest deadline. `None`: do not wait.
    fn wait_plan(&self) -> Option<WaitPlan> {
        let Some(child) = self.child.as_ref() else {
            return Some(WaitPlan {
                replies: -1,
                ring: None,
                exit: -1,
                requests: -1,
                limit: self
                    .retry_at
                    .map(|at| at.saturating_duration_since(Instant::now())),
            });
        };
        let gathering = self.gather.map(|(until, _)| until);
        if !self.backlog.is_empty()
            && self.interrupting.is_none()
            && !self.flights.line_busy()
            && gathering.is_none()
        {
            return None;
        }
        let now = Instant::now();
        let mut next = self.interrupting.map(|since| since + INTERRUPT_GRACE);
        if !self.backlog.is_empty() {
            next = gathering.or(next);
        }
        if let Some(deadline) = self.flights.next_deadline(now) {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        let limit = next.map(|deadline| deadline.saturating_duration_since(now));
        Some(WaitPlan {
            replies: child.stdout.as_raw_fd(),
            ring: child.ring.clone(),
            exit: child.exit_fd(),
            requests: if self.outgoing.is_empty() {
                -1
            } else {
                child.requests_fd()
            },
            limit: match limit {
                Some(limit) => Some(child.exit_check(limit)),
                None if child.exit_fd() < 0 => Some(EXIT_CHECK),
                None => None,
            },
        })
    }

    /// Sends what is queued, starting a child first if there is none.
    ///
    /// While the child runs a sync request, new requests wait here and go
    /// out together once it answers: the child would not start them sooner
    /// anyway, and one read of many requests (and one write of their
    /// replies) costs the child far less than many reads of one.
    ///
    /// Right after the child answered several callers at once, their next
    /// requests tend to arrive within microseconds of each other: they are
    /// gathered for up to [`GATHER`] so the child gets them in one read.
    fn send_backlog(&mut self) {
        if self.flights.line_busy() || self.gathering() {
            return;
        }
        if self.child.is_none() && self.retry_at.is_some() {
            // A supervisor whose child could not start: its companion takes
            // what it can; what is left gets a start of its own.
            self.hand_back_unstarted();
        }
        while let Some(job) = self.backlog.pop_front() {
            // Some requests go out even if their caller gave up (the
            // companion says which).
            if job.reply.is_abandoned() && !self.must_run(&job.request) {
                continue;
            }
            if self.stop_sent {
                job.reply.send(Err(PyRunnerError::Stopped));
                continue;
            }
            if self.child.is_none() && matches!(job.request, Request::Stop) {
                // Nothing runs to be stopped: no child is started just to
                // end it (nor one left to start later, after `stop`).
                self.stop_sent = true;
                for late in self.queue.close() {
                    late.reply.send(Err(PyRunnerError::Stopped));
                }
                self.stop_done = Some(job);
                continue;
            }
            if self.child.is_none() {
                if let Some(failure) = self.crash_loop.take() {
                    // Heard once; the command after it gets a fresh try.
                    job.reply.send(Err(failure));
                    continue;
                }
                // A fresh command gets one fresh try even after a crash loop.
                self.failed_starts = self.failed_starts.min(MAX_FAILED_STARTS - 1);
                if let Err(err) = self.start_child() {
                    // It names a replay that failed, if that was why.
                    self.replay_failure = None;
                    job.reply.send(Err(err.clone()));
                    if self.failed_starts >= MAX_FAILED_STARTS {
                        for job in self.backlog.drain(..) {
                            job.reply.send(Err(err.clone()));
                        }
                    }
                    continue;
                }
            }
            if let Some(failure) = self.replay_failure.take() {
                if !matches!(job.request, Request::Stop) {
                    // The command that needed the fresh child hears what it
                    // lacks instead of running without it unawares.
                    job.reply.send(Err(failure));
                    continue;
                }
            }
            if matches!(job.request, Request::Stop) {
                self.stop_sent = true;
                // Later pushes are refused from here on; queued ones get `Stopped`.
                for late in self.queue.close() {
                    late.reply.send(Err(PyRunnerError::Stopped));
                }
            }
            self.send(job);
        }
    }

    fn send(&mut self, mut job: Job) {
        if matches!(job.request, Request::Stop) {
            // Its clock runs, like a command's, once the child would get to
            // it: a child that answers nothing then is killed, so `stop`
            // always ends (see `enforce_deadlines`).
            job.timeout = Some(EXIT_GRACE);
        }
        if let Some(companion) = &self.settings.companion {
            match companion.before_send(job) {
                Some(unanswered) => job = unanswered,
                None => return,
            }
        }
        let id = self.take_id();
        let kind = match job.request {
            Request::CallAsyncFunction { .. } => Kind::Coroutine,
            Request::Stop => Kind::Stop,
            _ => Kind::Sync,
        };
        let is_coroutine = kind == Kind::Coroutine;
        let limit = if is_coroutine {
            job.timeout.map(|d| d.as_secs_f64())
        } else {
            None
        };
        if let Err(err) = self
            .writer
            .request(&mut self.outgoing, id, &job.request, limit)
        {
            job.reply.send(Err(err));
            return;
        }
        let timeout = job.timeout;
        self.flights.sent(id, job, kind, timeout, Instant::now());
    }

    /// Writes what the pipe takes now; the rest waits for POLLOUT.
    fn flush(&mut self) -> io::Result<()> {
        let Some(child) = self.child.as_mut() else {
            self.outgoing.clear();
            return Ok(());
        };
        while !self.outgoing.is_empty() {
            match child.write_requests(&self.outgoing) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.outgoing.advance(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Answers every reply that has arrived. `Ok(false)`: the child closed
    /// its end, so it is dead or dying. A caller's turn (`held` given)
    /// leaves a ring's doorbells and end of file to the thread, which polls
    /// for them anyway.
    fn read_replies(&mut self, mut held: Option<&mut Vec<Waker>>) -> Result<bool, PyRunnerError> {
        let on_thread = held.is_none();
        loop {
            self.answer_frames(held.as_deref_mut())?;
            let Some(child) = self.child.as_mut() else {
                return Ok(true);
            };
            match child.receive(&mut self.reader, on_thread) {
                Ok(0) => {
                    self.answer_frames(held.as_deref_mut())?;
                    return Ok(false);
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(PyRunnerError::Protocol(format!(
                        "reading from the child failed: {err}"
                    )))
                }
            }
        }
    }

    /// Answers every whole reply frame read so far; with `held`, the
    /// answered callers' wakers go there instead of being woken.
    fn answer_frames(&mut self, held: Option<&mut Vec<Waker>>) -> Result<(), PyRunnerError> {
        let before = self.handed_out;
        let result = self.answer_each_frame(held);
        let answered = self.handed_out - before;
        // Not beside others: the callers it answered send their next calls
        // to whichever sibling is least loaded (see `tuning::POOL_WORKER`).
        if answered >= 2 && !self.flights.line_busy() && self.settings.supervision.gathers {
            self.gather = Some((Instant::now() + GATHER, answered));
        }
        result
    }

    fn answer_each_frame(
        &mut self,
        mut held: Option<&mut Vec<Waker>>,
    ) -> Result<(), PyRunnerError> {
        while let Some(frame) = self.reader.next_frame()? {
            let (id, outcome) = match decode_message(&frame)? {
                Message::Reply { id, outcome } => (id, outcome),
                Message::OutputMark => {
                    // What the replies after it follow goes out before them.
                    if let Some(child) = &self.child {
                        child.forward_stderr();
                    }
                    continue;
                }
                Message::Hello(_) => {
                    return Err(PyRunnerError::Protocol(
                        "a second hello from the child".into(),
                    ))
                }
            };
            let Some(Flight { item: done, .. }) = self.flights.answered(id, Instant::now) else {
                return Err(PyRunnerError::Protocol(format!(
                    "a reply to unknown request {id}"
                )));
            };
            if self.interrupting.is_some() && self.interrupted == Some(id) {
                self.interrupted_request_answered(id);
            }
            if matches!(done.request, Request::Stop) {
                // Answered once the child is reaped, in `shut_down`.
                self.stop_done = Some(done);
                continue;
            }
            let reply = match outcome {
                Outcome::Done(reply) => reply,
                Outcome::TimedOut => Err(PyRunnerError::Timeout(done.timeout.unwrap_or_default())),
            };
            if let Some(companion) = &self.settings.companion {
                companion.answered(&done.request, reply.is_ok());
            }
            // Its caller heard `Timeout` already: that run killed the child.
            let remember = reply.is_ok()
                && self.remembered.is_some()
                && changes_child(&done.request)
                && !done.reply.slot().is_ready();
            match held.as_deref_mut() {
                Some(held) => held.extend(done.reply.send_unwoken(reply)),
                None => done.reply.send(reply),
            }
            if remember {
                if let Some(remembered) = &mut self.remembered {
                    remembered.push(done.request);
                }
            }
            self.handed_out += 1;
        }
        Ok(())
    }

    /// Whether `request` goes to the child even if its caller gave up.
    fn must_run(&self, request: &Request) -> bool {
        self.settings
            .companion
            .as_ref()
            .is_some_and(|companion| companion.must_run(request))
    }

    /// The request that SIGINT was sent for has answered during the grace.
    /// A child that did not stop it for the signal had ended it just before
    /// the signal came: it ignores the signal and goes on with the requests
    /// sent after it, so it is kept (replaced, it would have them run
    /// twice). One that stopped it starts nothing more and exits. Without a
    /// ring the child cannot tell which request a SIGINT is for; it is
    /// taken to have stopped this one, and is replaced.
    fn interrupted_request_answered(&mut self, id: u64) {
        let missed = self
            .child
            .as_ref()
            .and_then(|child| child.ring.as_ref())
            .is_some_and(|ring| !ring.took_interrupt(id));
        if !missed {
            return;
        }
        self.interrupting = None;
        self.interrupted = None;
        if let Some(companion) = &self.settings.companion {
            companion.available();
        }
    }

    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        if let Some(since) = self.interrupting {
            if now >= since + INTERRUPT_GRACE {
                self.replace_child(Loss::TimedOut);
            }
            return;
        }
        if !self.flights.any_timed() {
            return; // no limit in flight: nothing to look at
        }
        if self.flights.stop_overdue(now) {
            // Stopped by a signal, wedged, or not reading: ask no more.
            if let Some(child) = self.child.as_mut() {
                child.kill_group();
            }
            if let Some(stop) = self.flights.take_head() {
                self.stop_done = Some(stop.item);
            }
            return;
        }
        // With a ring the child says when it is in its event loop, where no
        // request runs: then only a coroutine can be what holds it up.
        let at = self
            .child
            .as_ref()
            .and_then(|child| child.ring.as_ref())
            .map(|ring| ring.child_at());
        let (in_loop, last_coroutine) = match at {
            None => (false, None),
            Some(ChildAt::Outside { last_coroutine }) => (false, Some(last_coroutine)),
            Some(ChildAt::Loop { last_coroutine }) => (true, Some(last_coroutine)),
            // Replies to take first; the thread is back as soon as it has.
            Some(ChildAt::Unsure) => return,
        };
        match self.flights.judge(now, in_loop) {
            Due::Nothing => {}
            Due::Sync { id, limit } => {
                if let Some(companion) = &self.settings.companion {
                    // From here the child only unwinds and exits: the
                    // caller's next call (made as soon as it hears) is
                    // better sent elsewhere.
                    companion.unavailable(false);
                }
                // The caller hears at the deadline; the child gets to unwind.
                if let Some(running) = self.flights.get(id) {
                    running
                        .item
                        .reply
                        .slot()
                        .complete(Err(PyRunnerError::Timeout(limit)));
                }
                if let Some(child) = &self.child {
                    child.interrupt(id);
                }
                self.interrupted = Some(id);
                self.interrupting = Some(now);
            }
            Due::Coroutine { id } => {
                self.interrupted = Some(id);
                // Without a ring, any coroutine in flight may have run.
                self.replace_child(Loss::CoroutineStuck {
                    last_coroutine: last_coroutine.unwrap_or(u64::MAX),
                    sync_started: None,
                });
            }
        }
    }

    /// Kills the child; fails the requests it had started and queues the
    /// ones it had not for a fresh child, which starts at once.
    fn replace_child(&mut self, mut loss: Loss) {
        if let Some(companion) = &self.settings.companion {
            companion.unavailable(true);
        }
        self.interrupting = None;
        let interrupted = self.interrupted.take();
        let young = matches!(loss, Loss::Died | Loss::Protocol(_)) && self.child_is_young();
        let died_young = young && self.flights.is_empty();
        if died_young {
            self.failed_starts += 1;
        } else if !young && self.child.is_some() {
            self.failed_starts = 0;
        }
        let reason = match self.child.as_mut() {
            Some(child) => child.kill_and_describe(),
            None => "there was no child".into(),
        };
        let mut last_started = interrupted;
        if let (Loss::TimedOut, Some(target)) = (&loss, interrupted) {
            last_started = self.look_after_interrupt(target);
        }
        if let Loss::CoroutineStuck {
            last_coroutine,
            sync_started,
        } = &mut loss
        {
            self.look_after_death(last_coroutine, sync_started);
        }
        self.child = None;
        self.outgoing.clear();
        // The child runs requests in order: everything up to and including
        // the first sync request in flight had started, the rest had not. A
        // child that stopped a request for SIGINT starts nothing after it.
        let reached = match loss {
            // No coroutine after the last one the child started had run,
            // nor any sync request but the one it may have gone on to after
            // the look that judged it.
            Loss::CoroutineStuck {
                last_coroutine,
                sync_started,
            } => Reached::Coroutines {
                last_coroutine,
                sync_started,
            },
            _ => Reached::Upto(last_started.or(self.flights.head())),
        };
        let (started, replay) = self.flights.drain_after_loss(reached);
        for (id, flight) in started {
            let job = flight.item;
            if let Some(companion) = &self.settings.companion {
                companion.lost_running(&job.request);
            }
            let err = match &loss {
                _ if flight.kind == Kind::Stop => {
                    self.stop_done = Some(job);
                    continue;
                }
                Loss::Died => PyRunnerError::WorkerDied {
                    reason: reason.clone(),
                },
                Loss::Protocol(why) => {
                    PyRunnerError::Protocol(format!("{why}; the child was replaced"))
                }
                Loss::TimedOut | Loss::CoroutineStuck { .. } if Some(id) == interrupted => {
                    PyRunnerError::Timeout(flight.limit.unwrap_or_default())
                }
                Loss::TimedOut => PyRunnerError::WorkerDied {
                    reason: format!(
                        "the child was killed after a command ran past its limit; {reason}"
                    ),
                },
                Loss::CoroutineStuck { .. } => PyRunnerError::WorkerDied {
                    reason: format!(
                        "the child was killed after a coroutine ran on past its limit \
                         (it held the event loop, or would not stop); {reason}"
                    ),
                },
            };
            job.reply.send(Err(err));
        }
        for job in replay.into_iter().rev() {
            self.backlog.push_front(job);
        }
        if self.stop_sent || self.queue.is_closed() {
            return;
        }
        self.hand_back_unstarted();
        if died_young && (self.backlog.is_empty() || self.failed_starts >= MAX_FAILED_STARTS) {
            self.back_off(&reason);
            return;
        }
        // A fresh child now, so the next command does not wait for a start.
        // (Its companion counts it unavailable until one has started.)
        if let Err(err) = self.start_child() {
            if self.failed_starts >= MAX_FAILED_STARTS && !self.backlog.is_empty() {
                self.replay_failure = None;
                for job in self.backlog.drain(..) {
                    job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Whether the child is young: it answered nothing yet, and was ready
    /// less than [`QUICK_DEATH`] ago.
    fn child_is_young(&self) -> bool {
        self.child.is_some()
            && self.ready_at.is_some_and(|(at, handed_out)| {
                self.handed_out == handed_out && at.elapsed() < QUICK_DEATH
            })
    }

    /// After a child died young: the next start waits, longer after each
    /// such death in a row. After [`MAX_FAILED_STARTS`] of them a runner
    /// starts no more children on its own, and the next command hears of
    /// the loop; one with a companion tries again as after a failed start,
    /// the companion taking its calls meanwhile.
    fn back_off(&mut self, reason: &str) {
        let deaths = self.failed_starts;
        let wait = if deaths < MAX_FAILED_STARTS {
            Some(backoff(QUICK_DEATH_RETRY, deaths))
        } else {
            self.crash_loop = Some(PyRunnerError::Startup(format!(
                "the child died {deaths} times in a row within {} s of starting, \
                 before it answered anything (a crash loop); the last time: {reason}",
                QUICK_DEATH.as_secs()
            )));
            self.settings
                .companion
                .is_some()
                .then(|| backoff(START_RETRY, deaths - MAX_FAILED_STARTS + 1))
        };
        self.retry_at = wait.map(|wait| Instant::now() + wait);
    }

    /// A worker left without a child tries a start on its own once its
    /// wait is over, so that it serves again without a call to make it.
    fn retry_start(&mut self) {
        let due = self.retry_at.is_some_and(|at| Instant::now() >= at);
        if due && self.child.is_none() && !self.stop_sent {
            let _ = self.start_child();
        }
    }

    /// A child killed for a stuck coroutine was judged by a look at its ring
    /// taken before the kill; what it did in between is read now that it is
    /// dead. Its last replies are answered, and if it had left its loop
    /// since, the sync request it went on to may have started: that one is
    /// not sent again.
    fn look_after_death(&mut self, last_coroutine: &mut u64, sync_started: &mut Option<u64>) {
        let _ = self.read_replies(None);
        let Some(ring) = self.child.as_ref().and_then(|child| child.ring.clone()) else {
            return;
        };
        match ring.child_at() {
            ChildAt::Loop {
                last_coroutine: last,
            } => *last_coroutine = last,
            ChildAt::Outside {
                last_coroutine: last,
            } => {
                *last_coroutine = last;
                *sync_started = self.flights.head();
            }
            // Replies it could not read: the look before the kill stands.
            ChildAt::Unsure => {}
        }
    }

    /// A child killed at the end of its grace after SIGINT may have
    /// answered the request the signal was for just before: what it
    /// published is read now that it is dead. The last request it started
    /// is `target`, or, if it answered that one without stopping it for the
    /// signal, the first sync request in flight (`None`), which is then not
    /// sent again.
    fn look_after_interrupt(&mut self, target: u64) -> Option<u64> {
        let _ = self.read_replies(None);
        let went_on = !self.flights.contains(target)
            && self
                .child
                .as_ref()
                .and_then(|child| child.ring.as_ref())
                .is_some_and(|ring| !ring.took_interrupt(target));
        (!went_on).then_some(target)
    }

    /// A supervisor with a companion offers it the requests its lost child
    /// never started, rather than make them wait for a new child; what it
    /// gives back stays.
    fn hand_back_unstarted(&mut self) {
        let Some(companion) = self.settings.companion.clone() else {
            return;
        };
        self.queue.take_all(&mut self.backlog);
        let mut kept = VecDeque::new();
        for job in self.backlog.drain(..) {
            if let Some(job) = companion.hand_back(job) {
                kept.push_back(job);
            }
        }
        self.backlog = kept;
    }

    /// Ends the child: on `stop`, after it has answered; when dropped, by end
    /// of file on its requests and then, after a grace, by force.
    fn shut_down(&mut self) {
        for job in self.queue.close() {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        for job in self.backlog.drain(..) {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        if let Some(mut child) = self.child.take() {
            // A stopped child exits by itself after its reply, once its
            // pending coroutines have unwound; a dropped one on end of file.
            child.close_requests();
            child.wait_for_exit(EXIT_GRACE);
            child.kill_group();
            // All it printed is out before `stop` (or the drop) returns.
            child.forward_last_stderr();
        }
        for (_, flight) in self.flights.drain() {
            let reply = if flight.kind == Kind::Stop {
                Ok(Value::Null)
            } else {
                Err(PyRunnerError::Stopped)
            };
            flight.item.reply.send(reply);
        }
        if let Some(stop) = self.stop_done.take() {
            stop.reply.send(Ok(Value::Null));
        }
    }
}

/// What the supervisor thread polls for; -1 skips an fd.
struct WaitPlan {
    replies: i32,
    /// The child's reply ring, if replies come through one.
    ring: Option<Arc<ReplyRing>>,
    /// The child's pidfd, readable once it has exited.
    exit: i32,
    requests: i32,
    limit: Option<Duration>,
}

impl WaitPlan {
    /// Whether replies wait to be read: in the ring, else in the pipe.
    fn replies_ready(&self) -> bool {
        if let Some(ring) = &self.ring {
            return ring.pending();
        }
        let mut fds = [libc::pollfd {
            fd: self.replies,
            events: libc::POLLIN,
            revents: 0,
        }];
        poll(&mut fds, Some(Duration::ZERO));
        fds[0].revents != 0
    }
}

/// The state, the seat of the driving caller, and the thread's wake-up socket.
pub(crate) struct Shared {
    core: Mutex<Core>,
    queue: Arc<CommandQueue>,
    /// The driver's seat: 0 when free, else the holder's token shifted left
    /// by one, with the low bit set while the seat is parked.
    seat: AtomicU64,
    tokens: AtomicU64,
    /// The thread sleeps without watching the child's replies (a caller drives).
    blind: AtomicBool,
    /// ... and that sleep ends within [`BLIND_LOOK`].
    blind_bounded: AtomicBool,
    /// A caller's turn left work, a deadline or a loss for the thread.
    thread_needed: AtomicBool,
    /// `Core::outstanding` as of the last pump, readable without the lock.
    outstanding: AtomicUsize,
    line_busy: AtomicBool,
    /// The thread's poll saw the child's pidfd fire: it has exited.
    exit_seen: AtomicBool,
    wake: Mutex<UnixStream>,
    /// How long a driving caller spins for a reply, and how often it yields.
    caller_spin: (Duration, u32),
    /// How long the thread spins for work before it sleeps.
    thread_spin: Duration,
    /// Callers leave their first poll's job to the holder of a parked seat
    /// (see [`Drive::leave_to_parked`] and `tuning::Supervision`).
    batch_behind_parked: bool,
    /// When the seat was last parked, in nanoseconds from `started`.
    parked_at: AtomicU64,
    started: Instant,
}

impl Shared {
    /// Starts the first child and wires the queue to this state.
    pub fn start(
        queue: Arc<CommandQueue>,
        settings: Settings,
        first_start_by: Option<Instant>,
    ) -> Result<Arc<Shared>, PyRunnerError> {
        let (wake, wake_write) = UnixStream::pair().map_err(|err| {
            PyRunnerError::Startup(format!("could not make a wake-up socket: {err}"))
        })?;
        wake.set_nonblocking(true)
            .and_then(|_| wake_write.set_nonblocking(true))
            .map_err(|err| {
                PyRunnerError::Startup(format!("could not set up the wake-up socket: {err}"))
            })?;
        let tune = settings.supervision;
        let core = Core::start(queue.clone(), settings, first_start_by)?;
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            queue: queue.clone(),
            seat: AtomicU64::new(0),
            tokens: AtomicU64::new(1),
            blind: AtomicBool::new(false),
            blind_bounded: AtomicBool::new(false),
            thread_needed: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            line_busy: AtomicBool::new(false),
            exit_seen: AtomicBool::new(false),
            wake: Mutex::new(wake),
            caller_spin: (tune.caller_spin, tune.caller_yield_every),
            thread_spin: tune.thread_spin,
            batch_behind_parked: tune.batch_behind_parked,
            parked_at: AtomicU64::new(0),
            started: Instant::now(),
        });
        queue.set_loop_wake(wake_write);
        let driver: Arc<dyn Drive> = shared.clone();
        queue.set_driver(Arc::downgrade(&driver));
        Ok(shared)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The supervisor thread. Returns when the runner is stopped or dropped.
    pub fn run(&self) {
        loop {
            let mut core = self.lock();
            if self.exit_seen.swap(false, Ordering::SeqCst) {
                core.next_exit_look = None;
            }
            if self.queue.is_closed() && !core.stop_sent {
                core.shut_down();
                return;
            }
            core.pump(None);
            core.retry_start();
            self.thread_needed.store(false, Ordering::SeqCst);
            if let Some(loss) = core.lost.take() {
                core.replace_child(loss);
                continue;
            }
            if core.stop_done.is_some() || (core.stop_sent && core.child.is_none()) {
                core.shut_down();
                return;
            }
            core.enforce_deadlines();
            if let Some(loss) = core.lost.take() {
                core.replace_child(loss);
                continue;
            }
            if core.stop_done.is_some() {
                core.shut_down();
                return;
            }
            self.outstanding.store(core.outstanding(), Ordering::SeqCst);
            let plan = core.wait_plan();
            drop(core);
            if let Some(plan) = plan {
                self.sleep(plan);
            }
        }
    }

    fn sleep(&self, plan: WaitPlan) {
        if self.outstanding.load(Ordering::SeqCst) > 0 && self.spin_for_work(&plan) {
            return;
        }
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.wait_in_loop(|| {
            // Replies matter only with calls in flight, and a driving caller
            // reads them itself: waking for them too would put a third
            // thread on two cores. Announce the blind spot first, then check;
            // a caller that sends or leaves the seat sees one or the other.
            self.blind.store(true, Ordering::SeqCst);
            self.blind_bounded.store(false, Ordering::SeqCst);
            let seated = self.seat.load(Ordering::SeqCst) != 0;
            let outstanding = self.outstanding.load(Ordering::SeqCst) > 0;
            let watch = !seated && outstanding;
            let mut limit = plan.limit;
            if watch {
                self.blind.store(false, Ordering::SeqCst);
            } else if seated || outstanding {
                // A caller that parks the seat, or leaves it after handing
                // out replies, does not wake this thread when it sleeps
                // bounded: look again soon in case nobody drives by then.
                limit = Some(limit.map_or(BLIND_LOOK, |limit| limit.min(BLIND_LOOK)));
                self.blind_bounded.store(true, Ordering::SeqCst);
            }
            let mut fds = [
                // Unwatched, the pipe still reports a hang-up: a child that
                // dies while idle is noticed and replaced at once.
                libc::pollfd {
                    fd: plan.replies,
                    events: if watch { libc::POLLIN } else { 0 },
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: plan.requests,
                    events: libc::POLLOUT,
                    revents: 0,
                },
                // A child's death wakes the thread even while a copy it
                // forked keeps its pipes open.
                libc::pollfd {
                    fd: plan.exit,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            match &plan.ring {
                Some(ring) if watch => ring.sleep(&mut fds, limit),
                _ => poll(&mut fds, limit),
            }
            if fds[3].revents != 0 {
                self.exit_seen.store(true, Ordering::SeqCst);
            }
            self.blind.store(false, Ordering::SeqCst);
        });
        drain(&wake);
    }
}

impl Shared {
    /// With calls in flight and no caller driving, the next reply or command
    /// is usually microseconds away: spin for it before paying for a wake-up
    /// (for as long as `tuning::Supervision::thread_spin` says).
    fn spin_for_work(&self, plan: &WaitPlan) -> bool {
        let start = Instant::now();
        while start.elapsed() < self.thread_spin {
            let seat = self.seat.load(Ordering::SeqCst);
            if seat != 0 && seat & 1 == 0 {
                return false; // a caller drives
            }
            if self.queue.has_jobs() {
                return true;
            }
            if plan.replies_ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }
}

impl Shared {
    /// One non-blocking turn on the caller's thread, unless the state is
    /// busy; how many replies it handed out. The answered callers' wakers
    /// go to `held`.
    fn pump_here(&self, held: &mut Vec<Waker>) -> usize {
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return 0,
        };
        let before = core.handed_out;
        core.pump(Some(held));
        self.outstanding.store(core.outstanding(), Ordering::SeqCst);
        self.line_busy
            .store(core.flights.line_busy(), Ordering::Relaxed);
        self.thread_needed
            .store(core.needs_thread(), Ordering::SeqCst);
        core.handed_out - before
    }

    /// Nanoseconds since this state was made, the clock of `parked_at`.
    fn since_start(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Wakes a caller that waits for a reply, so that it takes the seat this
    /// one left, instead of waking the thread: a task woken on the caller's
    /// own runtime is far cheaper than a thread. Not when the thread has
    /// its own work (a deadline, a lost child, unsent bytes), or when the
    /// state is busy. A woken caller that is not polled soon is covered by
    /// the thread's bounded look while it sleeps blind.
    fn pass_seat(&self) -> bool {
        let core = match self.core.try_lock() {
            Ok(core) => core,
            Err(_) => return false,
        };
        if core.only_thread_can() {
            return false;
        }
        let nudged = core
            .flights
            .in_line(4)
            .filter(|flight| !flight.item.reply.is_abandoned())
            .any(|flight| flight.item.reply.slot().nudge());
        nudged
    }

    /// Calls are in flight and the thread does not watch their replies: not
    /// at all, or (`bounded_will_do` false) not even within [`BLIND_LOOK`].
    fn replies_unwatched(&self, bounded_will_do: bool) -> bool {
        self.outstanding.load(Ordering::SeqCst) > 0
            && self.blind.load(Ordering::SeqCst)
            && !(bounded_will_do && self.blind_bounded.load(Ordering::SeqCst))
    }
}

impl Drive for Shared {
    fn try_begin(&self) -> Option<u64> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut seat = self.seat.load(Ordering::SeqCst);
        // Free, or parked by a holder that is not polling now.
        while seat == 0 || seat & 1 == 1 {
            match self
                .seat
                .compare_exchange(seat, token << 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(token),
                Err(now) => seat = now,
            }
        }
        None
    }

    fn resume(&self, token: u64) -> bool {
        let parked = token << 1 | 1;
        self.seat
            .compare_exchange(parked, token << 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn park(&self, token: u64) {
        // Before the seat shows parked: a caller that sees it parked sees
        // this time too, or a later one.
        self.parked_at.store(self.since_start(), Ordering::SeqCst);
        let _ = self.seat.compare_exchange(
            token << 1,
            token << 1 | 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if self.replies_unwatched(true) {
            self.queue.wake_consumer();
        }
    }

    fn drive(&self, held: &mut Vec<Waker>) -> usize {
        self.pump_here(held)
    }

    fn end(&self, token: u64, handed_out: bool, done: bool) {
        for held in [token << 1, token << 1 | 1] {
            let _ = self
                .seat
                .compare_exchange(held, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
        // After handing out replies, a thread that looks on its own soon is
        // left asleep; else a waiting caller takes over if there is one.
        if self.queue.has_jobs()
            || self.thread_needed.load(Ordering::SeqCst)
            || self.replies_unwatched(handed_out)
        {
            if done && self.pass_seat() {
                return;
            }
            self.queue.wake_consumer();
        }
    }

    fn spin(&self) -> (Duration, u32) {
        self.caller_spin
    }

    fn leave_to_parked(&self) -> bool {
        self.batch_behind_parked
            && self.seat.load(Ordering::SeqCst) & 1 == 1
            && self
                .since_start()
                .saturating_sub(self.parked_at.load(Ordering::SeqCst))
                < LEAVE_WINDOW_NANOS
    }

    fn line_busy(&self) -> bool {
        self.line_busy.load(Ordering::Relaxed)
    }
}

/// The wait before the next start after `failures` in a row: `first`,
/// doubled for each further one, up to [`START_RETRY_MAX`].
fn backoff(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(5);
    (first * (1 << doublings)).min(START_RETRY_MAX)
}

/// Whether a command that succeeded is one a runner's fresh child replays.
fn changes_child(request: &Request) -> bool {
    matches!(
        request,
        Request::Run { .. } | Request::RunFile { .. } | Request::SetVenv { .. }
    )
}

/// A remembered command as an error names it: its op and its path, or the
/// first line of its code.
fn describe_command(request: &Request) -> String {
    const SHOWN: usize = 80;
    match request {
        Request::RunFile { path } => format!("run_file {}", path.display()),
        Request::SetVenv { dir } => format!("set_venv {}", dir.display()),
        Request::Run { code } | Request::Broadcast { code, .. } => {
            let first = code.trim_start().lines().next().unwrap_or("");
            let mut shown: String = first.chars().take(SHOWN).collect();
            if shown.len() < code.trim().len() {
                shown.push_str(" ...");
            }
            format!("run `{shown}`")
        }
        other => format!("{other:?}"),
    }
}

fn drain(mut wake: &UnixStream) {
    let mut sink = [0u8; 64];
    while matches!(wake.read(&mut sink), Ok(n) if n > 0) {}
}
