//! The thread that owns a runner's child: it sends commands, reads replies,
//! enforces limits, and replaces the child when it dies.
//!
//! One thread does all of it with non-blocking pipes and poll(2), so a child
//! that stops reading can never deadlock a parent that is writing, and no
//! lock guards the table of requests in flight. Before it blocks, the thread
//! spins briefly on the pipe and the queue: a pipe wake-up costs tens of
//! microseconds, a fast Python call less.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde_json::Value;

use super::child::{poll, read_some, wait_readable, ChildProcess, LaunchSpec};
use crate::command::{CommandQueue, Job, Request};
use crate::error::PyRunnerError;
use crate::wire::{decode_message, FrameReader, FrameWriter, Message, Outcome};

/// How long the thread spins for a reply or a command before it polls.
const SPIN: Duration = Duration::from_micros(50);

/// After SIGINT, how long a timed-out child gets to unwind before SIGKILL.
const INTERRUPT_GRACE: Duration = Duration::from_millis(250);

/// A coroutine's limit is enforced in the child; past it by this much, the
/// child is taken to be stuck and is killed.
const COROUTINE_BACKSTOP: Duration = Duration::from_secs(2);

/// Children that die before they are ready this many times in a row make
/// queued commands fail with `Startup` instead of a busy restart loop.
const MAX_FAILED_STARTS: u32 = 3;

/// How long a dropped runner's child gets to exit on end of file.
const EXIT_GRACE: Duration = Duration::from_millis(500);

pub(crate) struct Settings {
    pub spec: LaunchSpec,
    pub startup: Option<String>,
    pub frame_limit: usize,
}

struct Inflight {
    job: Job,
    /// A sync request's limit runs from when it reaches the head of the
    /// child's line; a coroutine's from when it was sent.
    deadline: Option<Instant>,
    is_coroutine: bool,
}

/// Why a child is being replaced.
enum Loss {
    Died,
    Protocol(String),
    TimedOut,
}

pub(crate) struct Supervisor {
    queue: Arc<CommandQueue>,
    settings: Settings,
    child: Option<ChildProcess>,
    reader: FrameReader,
    writer: FrameWriter,
    outgoing: BytesMut,
    /// Requests in flight by id; ids grow, so this is also send order.
    inflight: BTreeMap<u64, Inflight>,
    /// Ids of sync requests in flight, in the order the child runs them.
    sync_line: VecDeque<u64>,
    next_id: u64,
    backlog: VecDeque<Job>,
    failed_starts: u32,
    /// Set while a timed-out child unwinds after SIGINT.
    interrupting: Option<Instant>,
    /// `stop` was sent: no more commands, no more restarts.
    stop_sent: bool,
    /// `stop` was answered by the child: shut down now.
    stop_done: bool,
    wake: UnixStream,
}

impl Supervisor {
    /// Starts the first child; errors here are `build()`'s errors.
    pub fn start(queue: Arc<CommandQueue>, settings: Settings) -> Result<Supervisor, PyRunnerError> {
        let (wake, wake_write) = UnixStream::pair()
            .map_err(|err| PyRunnerError::Startup(format!("could not make a wake-up socket: {err}")))?;
        wake.set_nonblocking(true)
            .and_then(|_| wake_write.set_nonblocking(true))
            .map_err(|err| PyRunnerError::Startup(format!("could not set up the wake-up socket: {err}")))?;
        queue.set_loop_wake(wake_write);
        let mut supervisor = Supervisor {
            queue,
            reader: FrameReader::new(settings.frame_limit),
            writer: FrameWriter::new(settings.frame_limit),
            settings,
            child: None,
            outgoing: BytesMut::with_capacity(64 << 10),
            inflight: BTreeMap::new(),
            sync_line: VecDeque::new(),
            next_id: 1,
            backlog: VecDeque::new(),
            failed_starts: 0,
            interrupting: None,
            stop_sent: false,
            stop_done: false,
            wake,
        };
        supervisor.start_child()?;
        Ok(supervisor)
    }

    /// Starts a child, runs the startup code, and counts failures.
    fn start_child(&mut self) -> Result<(), PyRunnerError> {
        self.reader = FrameReader::new(self.settings.frame_limit);
        self.outgoing.clear();
        let started = ChildProcess::start(&self.settings.spec, &mut self.reader).and_then(|child| {
            self.child = Some(child);
            match self.settings.startup.clone() {
                Some(code) => self.run_startup(&code),
                None => Ok(()),
            }
        });
        match started {
            Ok(()) => {
                self.failed_starts = 0;
                Ok(())
            }
            Err(err) => {
                self.failed_starts += 1;
                if let Some(mut child) = self.child.take() {
                    child.kill_group();
                }
                Err(err)
            }
        }
    }

    /// Runs the startup code synchronously, before any queued command.
    fn run_startup(&mut self, code: &str) -> Result<(), PyRunnerError> {
        let id = self.take_id();
        let request = Request::Run { code: code.to_owned() };
        self.writer.request(&mut self.outgoing, id, &request, None)?;
        let deadline = Instant::now() + self.settings.spec.hello_timeout.max(Duration::from_secs(60));
        loop {
            self.flush()
                .map_err(|err| PyRunnerError::Startup(format!("the child stopped reading: {err}")))?;
            while let Some(frame) = self.reader.next_frame()? {
                if let Message::Reply { id: got, outcome } = decode_message(&frame)? {
                    if got == id {
                        return match outcome {
                            Outcome::Done(Ok(_)) => Ok(()),
                            Outcome::Done(Err(err)) => {
                                Err(PyRunnerError::Startup(format!("startup code failed: {err}")))
                            }
                            Outcome::TimedOut => Err(PyRunnerError::Startup("startup code timed out".into())),
                        };
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PyRunnerError::Startup("startup code did not finish in time".into()));
            }
            let child = self.child.as_mut().expect("started above");
            wait_readable(child.stdout.as_raw_fd(), Some(deadline - now));
            match read_some(&mut child.stdout, &mut self.reader) {
                Ok(0) => {
                    let reason = child.kill_and_describe();
                    return Err(PyRunnerError::Startup(format!(
                        "the child died running the startup code: {reason}"
                    )));
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(PyRunnerError::Startup(format!("reading from the child failed: {err}"))),
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The command loop. Returns when the runner is stopped or dropped.
    pub fn run(mut self) {
        loop {
            self.queue.take_all(&mut self.backlog);
            if self.queue.is_closed() && !self.stop_sent {
                self.shut_down(false);
                return;
            }
            if self.interrupting.is_none() {
                self.send_backlog();
            }
            if let Err(err) = self.flush() {
                self.replace_child(Loss::Protocol(format!("writing to the child failed: {err}")));
                continue;
            }
            match self.read_replies() {
                Ok(true) => {}
                Ok(false) if self.interrupting.is_some() => self.replace_child(Loss::TimedOut),
                Ok(false) => self.replace_child(Loss::Died),
                Err(err) => self.replace_child(Loss::Protocol(err.to_string())),
            }
            if self.stop_done || (self.stop_sent && self.child.is_none()) {
                self.shut_down(true);
                return;
            }
            self.enforce_deadlines();
            self.wait();
        }
    }

    /// Sends what is queued, starting a child first if there is none.
    fn send_backlog(&mut self) {
        while let Some(job) = self.backlog.pop_front() {
            if job.reply.is_abandoned() {
                continue;
            }
            if self.stop_sent {
                job.reply.send(Err(PyRunnerError::Stopped));
                continue;
            }
            if self.child.is_none() {
                // A fresh command gets one fresh try even after a crash loop.
                self.failed_starts = self.failed_starts.min(MAX_FAILED_STARTS - 1);
                if let Err(err) = self.start_child() {
                    job.reply.send(Err(err.clone()));
                    if self.failed_starts >= MAX_FAILED_STARTS {
                        for job in self.backlog.drain(..) {
                            job.reply.send(Err(err.clone()));
                        }
                    }
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

    fn send(&mut self, job: Job) {
        let id = self.take_id();
        let is_coroutine = matches!(job.request, Request::CallAsyncFunction { .. });
        let limit = if is_coroutine { job.timeout.map(|d| d.as_secs_f64()) } else { None };
        if let Err(err) = self.writer.request(&mut self.outgoing, id, &job.request, limit) {
            job.reply.send(Err(err));
            return;
        }
        let now = Instant::now();
        let deadline = match (is_coroutine, job.timeout) {
            (true, Some(limit)) => Some(now + limit + COROUTINE_BACKSTOP),
            (false, Some(limit)) if self.sync_line.is_empty() => Some(now + limit),
            _ => None,
        };
        if !is_coroutine {
            self.sync_line.push_back(id);
        }
        self.inflight.insert(
            id,
            Inflight {
                job,
                deadline,
                is_coroutine,
            },
        );
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
    /// its end, so it is dead or dying.
    fn read_replies(&mut self) -> Result<bool, PyRunnerError> {
        loop {
            self.answer_frames()?;
            let Some(child) = self.child.as_mut() else {
                return Ok(true);
            };
            match read_some(&mut child.stdout, &mut self.reader) {
                Ok(0) => {
                    self.answer_frames()?;
                    return Ok(false);
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(PyRunnerError::Protocol(format!("reading from the child failed: {err}"))),
            }
        }
    }

    fn answer_frames(&mut self) -> Result<(), PyRunnerError> {
        while let Some(frame) = self.reader.next_frame()? {
            let Message::Reply { id, outcome } = decode_message(&frame)? else {
                return Err(PyRunnerError::Protocol("a second hello from the child".into()));
            };
            let Some(done) = self.inflight.remove(&id) else {
                return Err(PyRunnerError::Protocol(format!("a reply to unknown request {id}")));
            };
            if !done.is_coroutine {
                if self.sync_line.front() == Some(&id) {
                    self.sync_line.pop_front();
                } else {
                    self.sync_line.retain(|&queued| queued != id);
                }
                self.start_next_clock();
            }
            if matches!(done.job.request, Request::Stop) {
                self.stop_done = true;
            }
            let reply = match outcome {
                Outcome::Done(reply) => reply,
                Outcome::TimedOut => Err(PyRunnerError::Timeout(done.job.timeout.unwrap_or_default())),
            };
            done.job.reply.send(reply);
        }
        Ok(())
    }

    /// The sync request now at the head of the child's line starts its clock.
    fn start_next_clock(&mut self) {
        let Some(head) = self.sync_line.front() else {
            return;
        };
        if let Some(next) = self.inflight.get_mut(head) {
            if let (None, Some(limit)) = (next.deadline, next.job.timeout) {
                next.deadline = Some(Instant::now() + limit);
            }
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
        if let Some(running) = self.sync_line.front().and_then(|head| self.inflight.get(head)) {
            if running.deadline.is_some_and(|deadline| now >= deadline) {
                let limit = running.job.timeout.unwrap_or_default();
                // The caller hears at the deadline; the child gets to unwind.
                running.job.reply.slot().complete(Err(PyRunnerError::Timeout(limit)));
                if let Some(child) = &self.child {
                    child.interrupt();
                }
                self.interrupting = Some(now);
                return;
            }
        }
        let stuck = self
            .inflight
            .values()
            .any(|flight| flight.is_coroutine && flight.deadline.is_some_and(|deadline| now >= deadline));
        if stuck {
            self.replace_child(Loss::TimedOut);
        }
    }

    /// Kills the child; fails the requests it had started and queues the
    /// ones it had not for a fresh child, which starts at once.
    fn replace_child(&mut self, loss: Loss) {
        self.interrupting = None;
        let reason = match self.child.as_mut() {
            Some(child) => child.kill_and_describe(),
            None => "there was no child".into(),
        };
        self.child = None;
        self.outgoing.clear();
        // The child runs requests in order: everything up to and including
        // the first sync request in flight had started, the rest had not.
        let head = self.sync_line.front().copied();
        self.sync_line.clear();
        let mut replay = Vec::new();
        for (id, flight) in std::mem::take(&mut self.inflight) {
            if head.is_some_and(|head| id > head) {
                replay.push(flight.job);
                continue;
            }
            let err = match &loss {
                _ if matches!(flight.job.request, Request::Stop) => {
                    self.stop_done = true;
                    flight.job.reply.send(Ok(Value::Null));
                    continue;
                }
                Loss::Died => PyRunnerError::WorkerDied { reason: reason.clone() },
                Loss::Protocol(why) => PyRunnerError::Protocol(format!("{why}; the child was replaced")),
                Loss::TimedOut if Some(id) == head => PyRunnerError::Timeout(flight.job.timeout.unwrap_or_default()),
                Loss::TimedOut => PyRunnerError::WorkerDied {
                    reason: format!("the child was killed after a command ran past its limit; {reason}"),
                },
            };
            flight.job.reply.send(Err(err));
        }
        for job in replay.into_iter().rev() {
            self.backlog.push_front(job);
        }
        if self.stop_sent || self.queue.is_closed() {
            return;
        }
        // A fresh child now, so the next command does not wait for a start.
        if let Err(err) = self.start_child() {
            if self.failed_starts >= MAX_FAILED_STARTS {
                for job in self.backlog.drain(..) {
                    job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Blocks until a reply, a command, room in the pipe, or the next deadline.
    fn wait(&mut self) {
        if !self.backlog.is_empty() && self.interrupting.is_none() && self.child.is_some() {
            return;
        }
        let Some(child) = self.child.as_mut() else {
            let wake = self.wake.as_raw_fd();
            self.queue.wait_in_loop(|| wait_readable(wake, None));
            drain(&mut self.wake);
            return;
        };
        if !self.inflight.is_empty() || self.queue.has_jobs() {
            // Spin briefly: a fast reply or the next command may be microseconds away.
            let start = Instant::now();
            loop {
                if self.queue.has_jobs() {
                    return;
                }
                if !self.inflight.is_empty() {
                    match read_some(&mut child.stdout, &mut self.reader) {
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                        _ => return,
                    }
                }
                if start.elapsed() >= SPIN {
                    break;
                }
                std::hint::spin_loop();
            }
        } else if self.queue.spin_for_jobs(SPIN) {
            return;
        }
        let now = Instant::now();
        let mut next = self.interrupting.map(|since| since + INTERRUPT_GRACE);
        for flight in self.inflight.values() {
            if let Some(deadline) = flight.deadline {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        let limit = next.map(|deadline| deadline.saturating_duration_since(now));
        let mut fds = [
            libc::pollfd {
                fd: child.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child.requests_fd(),
                events: if self.outgoing.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
        ];
        self.queue.wait_in_loop(|| poll(&mut fds, limit));
        drain(&mut self.wake);
    }

    /// Ends the child: on `stop`, after it has answered; when dropped, by end
    /// of file on its requests and then, after a grace, by force.
    fn shut_down(&mut self, stopped: bool) {
        for job in self.queue.close() {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        for job in self.backlog.drain(..) {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        if let Some(mut child) = self.child.take() {
            if !stopped {
                child.close_requests();
                child.wait_for_exit(EXIT_GRACE);
            }
            child.kill_group();
        }
        for (_, flight) in std::mem::take(&mut self.inflight) {
            let reply = if matches!(flight.job.request, Request::Stop) {
                Ok(Value::Null)
            } else {
                Err(PyRunnerError::Stopped)
            };
            flight.job.reply.send(reply);
        }
    }
}

fn drain(wake: &mut UnixStream) {
    let mut sink = [0u8; 64];
    while matches!(wake.read(&mut sink), Ok(n) if n > 0) {}
}
