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
//!
//! This file holds the state ([`Core`]) and what the thread waits for;
//! `start` starts a child and replays what it must hold, `send` writes
//! requests, `replies` reads and answers them, `faults` judges deadlines
//! (on the plain data of `super::flights`) and replaces a lost child, and
//! `seat` is the thread and the driving caller's seat.

mod faults;
mod host;
mod output;
mod replies;
mod seat;
mod send;
mod start;
mod streams;

use std::collections::{HashMap, VecDeque};
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
use super::flights::{Due, Flight, Flights, Kind, Reached, Seen};
use super::ring::{ChildAt, ReplyRing};
use super::Companion;
use crate::command::{Answer, CommandQueue, Drive, Job, Reply, Request};
use crate::error::PyRunnerError;
use crate::tuning::{
    Supervision, BLIND_LOOK, BUSY_SILENCE_BEATS, EXIT_CHECK, EXIT_GRACE, GATHER, HOST_START_LOOK,
    INTERRUPT_GRACE, LEAVE_WINDOW_NANOS, LINK_SILENCE_BEATS, PIPE_END_GRACE, QUICK_DEATH,
    QUICK_DEATH_RETRY, START_RETRY, START_RETRY_MAX,
};
use crate::wire::{ChildCodec, FrameReader, FromChild, Outcome, ToChild};
use tokio_util::codec::Encoder;

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
    /// The runner's host functions, if it has any.
    pub host: Option<crate::host::HostSetup>,
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

pub(crate) use host::child_setting as host_setting;
pub(crate) use seat::Shared;
use seat::WaitPlan;
use start::changes_child;

pub(crate) struct Core {
    queue: Arc<CommandQueue>,
    settings: Settings,
    child: Option<ChildProcess>,
    reader: FrameReader,
    writer: ChildCodec,
    outgoing: BytesMut,
    /// Requests in flight to the child.
    flights: Flights<Job>,
    /// The streams open in the child, by their request's id (each is in
    /// `flights` too, until its reply).
    streams: std::collections::BTreeMap<u64, streams::OpenStream>,
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
    /// ... and it was a nested request (see `host`): the requests before
    /// it that wait behind its host call had not run.
    interrupted_nested: bool,
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
    /// What captured requests in flight wrote (a `captured` frame), until
    /// their replies come (see `output`).
    written: HashMap<u64, crate::output::Written>,
    /// The child's host calls (see `host`).
    host: host::HostCalls,
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
        let host = host::HostCalls::new(settings.host.clone());
        let mut core = Core {
            queue,
            reader: FrameReader::new(settings.frame_limit),
            writer: ChildCodec::new(settings.frame_limit),
            settings,
            child: None,
            outgoing: BytesMut::with_capacity(64 << 10),
            flights: Flights::default(),
            streams: std::collections::BTreeMap::new(),
            next_id: 1,
            backlog: VecDeque::new(),
            failed_starts: 0,
            ready_at: None,
            crash_loop: None,
            interrupting: None,
            interrupted: None,
            interrupted_nested: false,
            stop_sent: false,
            stop_done: None,
            lost: None,
            gather: None,
            handed_out: 0,
            retry_at: None,
            remembered,
            replay_failure: None,
            next_exit_look: None,
            written: HashMap::new(),
            host,
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
        if let Some(due) = self.link_due() {
            next = Some(next.map_or(due, |n| n.min(due)));
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
}
