//! One child interpreter: its process, its pipes, its stderr.
//!
//! # Caveats
//! The child is the leader of its own process group, so killing the group
//! also ends the processes user code started. The child asks the kernel to
//! kill it when its parent dies (Linux) and exits on end of file of its
//! request pipe; dropping a `ChildProcess` kills the group and reaps the
//! child, so no zombie is left behind. Its death is judged by a pidfd
//! (or, without one, by looking every [`EXIT_CHECK`]), never by end of
//! file on its pipes alone: a copy it forked may hold them open. A pool's
//! children are forked by its zygote (see `zygote`), their parent, which
//! reaps them and reports how they ended.
//!
//! On Linux the process behind `pid` is a stand-in: the worker runs in a
//! pid namespace of its own, with a small init, and everything it starts
//! (a process that left the group with `setsid()` too) is killed by the
//! kernel when that init dies: after the worker, or with the stand-in,
//! which dies with this process by any route, SIGKILL included. The
//! stand-in passes SIGINT and SIGTERM on, keeps the worker's pipes open
//! until it ends, and ends as the worker did, after all of it: its end,
//! its status, and end of file or a broken pipe read as the worker's own
//! (`python/PROTOCOL.md`, "Containment").
//! The worker's `os.getpid()` is `pid` where the kernel lets the init
//! choose it; its children see pids of the namespace, not the ones this
//! process sees. A SIGKILL to `pid` alone ends the worker a moment later,
//! so a reply it was writing may still come. Where no namespace can be
//! made (not Linux, or neither `CLONE_NEWPID` nor a user namespace
//! allowed), the child is the worker, and what left its group lives on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::launcher;
use super::ring::ReplyRing;
use super::sandbox::{self, SandboxPlan, SandboxSeat};
use super::stderr::StderrForwarder;
use super::zygote::{self, Zygote};
use crate::error::PyRunnerError;
use crate::tuning::{CHILD_MALLOC, EXIT_CHECK};
use crate::wire::{FrameReader, FromChild, Hello, WireError};

/// Set in a child's environment (`ENV_OUTPUT` and `OUTPUT_FRAMES` of
/// `python/protocol.py`): it sends what it writes through `sys.stdout`
/// and `sys.stderr` as `output` frames. The child removes it before any
/// user code runs.
const OUTPUT_ENV: &str = "ASYNC_PY_OUTPUT";
const OUTPUT_FRAMES: &str = "frames";

/// Set in a child's environment (`ENV_HOST` of `python/protocol.py`): the
/// runner's host functions, which the child's `async_py.host` names. The
/// child removes it before any user code runs.
const HOST_ENV: &str = "ASYNC_PY_HOST";

/// The largest piece of the worker's source passed as one argument: Linux
/// refuses an argument past 128 KiB (`MAX_ARG_STRLEN`), and the joined
/// worker is larger.
const SOURCE_PIECE: usize = 96 << 10;

/// The worker's source in pieces of at most [`SOURCE_PIECE`] bytes, each
/// cut after a line's end (so never inside a character), for the
/// bootstrap to join.
fn source_pieces(source: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = source;
    while rest.len() > SOURCE_PIECE {
        let cut = rest[..SOURCE_PIECE]
            .rfind('\n')
            .map(|at| at + 1)
            .unwrap_or_else(|| {
                (1..=SOURCE_PIECE)
                    .rev()
                    .find(|&at| rest.is_char_boundary(at))
                    .unwrap_or(rest.len())
            });
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    pieces
}

/// How a child starts the worker; see the file for the arguments.
const BOOTSTRAP: &str = include_str!("../../python/bootstrap.py");

/// How to start a child.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub python: PathBuf,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub env_clear: bool,
    pub current_dir: Option<PathBuf>,
    pub hello_timeout: Duration,
    /// A pool's zygote, which forks children instead (see `zygote`).
    pub zygote: Option<Arc<Zygote>>,
    /// The child is a pool's worker, which shares the cores with its
    /// siblings: it yields its core while it polls for a request.
    pub share_cores: bool,
    /// The runner's `on_output`: the child sends its text output as
    /// frames, and its stderr's lines go here instead of this process's
    /// stderr.
    pub output: Option<crate::output::OutputSink>,
    /// The runner's host functions as the child is told them, if it has any.
    pub host: Option<String>,
    /// The child's `RLIMIT_DATA`, in bytes; the zygote's too, so that every
    /// child it forks inherits it.
    pub memory_limit: Option<u64>,
    /// The runner's sandbox: each child gets a seat of its own.
    pub sandbox: Option<Arc<SandboxPlan>>,
    /// The command the child is started through, if any (see `launcher`).
    pub launcher: Option<Vec<std::ffi::OsString>>,
    /// A launched child's heartbeat interval.
    pub heartbeat: Duration,
}

impl LaunchSpec {
    /// The variables the worker reads its settings from (and removes).
    pub fn worker_settings(&self) -> Vec<(&'static str, String)> {
        let mut settings = Vec::new();
        if self.output.is_some() {
            settings.push((OUTPUT_ENV, OUTPUT_FRAMES.to_string()));
        }
        if let Some(host) = &self.host {
            settings.push((HOST_ENV, host.clone()));
        }
        settings
    }

    /// The command that starts the worker (`last` is its own argument: the
    /// reply ring, or `--zygote`) as the leader of a process group, with
    /// this spec's environment and folder; stdio is the caller's to set.
    pub fn command(&self, last: impl AsRef<std::ffi::OsStr>) -> Command {
        if let Some(prefix) = &self.launcher {
            return launcher::command(prefix, &self.python, last.as_ref());
        }
        let mut command = Command::new(&self.python);
        let source = source_pieces(crate::worker_source::WORKER_PY);
        command
            .arg("-u")
            .arg("-c")
            .arg(BOOTSTRAP)
            .arg(source.len().to_string())
            .args(source)
            .arg(compiled_worker_cache());
        if self.share_cores {
            command.arg("--share-cores");
        }
        command.arg(last).process_group(0);
        if self.env_clear {
            command.env_clear();
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let tunables = std::ffi::OsStr::new("GLIBC_TUNABLES");
        let given = self.env.iter().any(|(key, _)| key == tunables)
            || (!self.env_clear && std::env::var_os(tunables).is_some());
        if !given {
            command.env(tunables, CHILD_MALLOC);
        }
        if self.output.is_some() {
            command.env(OUTPUT_ENV, OUTPUT_FRAMES);
        }
        if let Some(host) = &self.host {
            command.env(HOST_ENV, host);
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        if let Some(bytes) = self.memory_limit {
            limit_memory(&mut command, bytes);
        }
        command
    }
}

/// Has `command`'s process limit its private memory to `bytes` before it
/// runs the interpreter: `RLIMIT_DATA` rather than `RLIMIT_AS`, which also
/// counts what is only reserved (glibc's 64 MiB arena per thread, shared
/// libraries, the reply ring), so that a worker's threads would use up a
/// limit its data never reached.
fn limit_memory(command: &mut Command, bytes: u64) {
    let wanted = libc::rlim_t::try_from(bytes).unwrap_or(libc::RLIM_INFINITY);
    let set_limit = move || {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit are plain system calls, safe
        // between fork and exec; `limit` is a valid rlimit for both.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_DATA, &mut limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A hard limit may only be lowered: a lower one already set stays.
            let bound = wanted.min(limit.rlim_max);
            limit.rlim_cur = bound;
            limit.rlim_max = bound;
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure makes only async-signal-safe calls (getrlimit,
    // setrlimit, reading errno) and allocates nothing.
    unsafe {
        command.pre_exec(set_limit);
    }
}

/// The process behind a child: started here, or forked by a pool's zygote
/// (which reaps it and reports how it ended).
enum Process {
    Spawned(Child),
    Forked(Arc<Zygote>),
}

pub(crate) struct ChildProcess {
    process: Process,
    pub pid: u32,
    stdin: Option<File>,
    pub stdout: File,
    stderr: Arc<StderrForwarder>,
    pub hello: Hello,
    /// Shared memory the child's replies come through, if it took it (see
    /// `ring`); its stdout then carries only doorbells.
    pub ring: Option<Arc<ReplyRing>>,
    reaped: Option<ExitStatus>,
    group_killed: bool,
    /// A pidfd of the child, readable once it has exited: its death is
    /// judged by the process, as a copy it forked may hold its pipes open.
    exit_fd: Option<OwnedFd>,
    /// A launched child's heartbeat interval (see `launcher`): no signal
    /// reaches it, and its link is watched instead.
    pub launched: Option<Duration>,
    /// When it last wrote anything, and when anything was last written to
    /// it: a launched child's link is judged by these.
    pub last_heard: Instant,
    pub last_sent: Instant,
    /// Why its link was given up, for the description of its end.
    pub link_lost: Option<String>,
    /// Its sandbox's scratch folder and cgroup, removed once it is reaped
    /// (a field drops after `drop` has killed and reaped the child).
    _sandbox: Option<SandboxSeat>,
}

impl ChildProcess {
    /// Starts the child and waits for its hello.
    pub fn start(
        spec: &LaunchSpec,
        reader: &mut FrameReader,
    ) -> Result<ChildProcess, PyRunnerError> {
        // Without a ring (no memfd here) replies take the pipe, only slower;
        // a launcher's child may be on another machine.
        let ring = match spec.launcher {
            Some(_) => None,
            None => ReplyRing::create().ok(),
        };
        let seat = match &spec.sandbox {
            Some(plan) => Some(plan.seat()?),
            None => None,
        };
        let forked = spec
            .zygote
            .as_ref()
            .filter(|zygote| zygote.alive())
            .and_then(|zygote| fork(zygote, ring.as_ref(), seat.as_ref()).ok());
        let (process, pid, mut stdin, stdout, stderr) = match forked {
            Some(forked) => forked,
            None => spawn(spec, ring.as_ref(), seat.as_ref())?,
        };
        if spec.launcher.is_some() {
            // Its source and settings, within the start's time: a launcher
            // that never reads (a host that does not answer, a password
            // prompt) must not hold the start beyond it.
            let deadline = Instant::now() + spec.hello_timeout;
            if let Err(err) = write_within(&mut stdin, &launcher::preamble(spec), deadline) {
                let mut process = process;
                signal(-(pid as libc::pid_t), libc::SIGKILL);
                let status = reap(&mut process, pid);
                // What it said, as far as it is there (nothing is waited for).
                let mut said = vec![0u8; 64 << 10];
                let _ = set_nonblocking(&stderr);
                let read = (&stderr).read(&mut said).unwrap_or(0);
                let rest = String::from_utf8_lossy(&said[..read]).into_owned();
                return Err(PyRunnerError::Startup(format!(
                    "could not send the worker through the launcher {:?}: {err}; it {}{}",
                    spec.launcher.as_deref().unwrap_or_default(),
                    status.map_or_else(|| "could not be reaped".into(), describe_status),
                    if rest.trim().is_empty() {
                        String::new()
                    } else {
                        format!("; it wrote:\n{}", rest.trim())
                    }
                )));
            }
        }
        // At once: the move may wait for the kernel, while the child starts.
        if let Some(Err(err)) = seat.as_ref().map(|seat| seat.admit(pid)) {
            // A child that ended first is what to tell (a started one can say).
            let ended = has_exited(pid) == Some(true);
            signal(-(pid as libc::pid_t), libc::SIGKILL);
            let mut process = process;
            let status = reap(&mut process, pid);
            let how = match status {
                Some(status) if ended => format!(" (it had ended: {})", describe_status(status)),
                _ => String::new(),
            };
            return Err(PyRunnerError::Startup(format!("{err}{how}")));
        }
        // The child cannot be reaped yet (a forked one is kept unreaped by
        // the zygote until asked), so the pid is still its own.
        let exit_fd = open_pidfd(pid);
        let stderr = match StderrForwarder::start(pid, OwnedFd::from(stderr), spec.output.clone()) {
            Ok(stderr) => stderr,
            Err(err) => {
                signal(-(pid as libc::pid_t), libc::SIGKILL);
                let mut process = process;
                reap(&mut process, pid);
                return Err(PyRunnerError::Startup(format!(
                    "could not start forwarding the child's stderr: {err}"
                )));
            }
        };
        widen_pipe(&stdin);
        widen_pipe(&stdout);
        if let Err(err) = set_nonblocking(&stdin).and_then(|_| set_nonblocking(&stdout)) {
            signal(-(pid as libc::pid_t), libc::SIGKILL);
            let mut process = process;
            reap(&mut process, pid);
            return Err(PyRunnerError::Startup(format!(
                "could not set up the child's pipes: {err}"
            )));
        }
        let mut process = ChildProcess {
            process,
            pid,
            stdin: Some(stdin),
            stdout,
            stderr,
            hello: Hello {
                python_version: "version unknown".into(),
                ring: false,
            },
            ring: None,
            reaped: None,
            group_killed: false,
            exit_fd,
            launched: spec.launcher.as_ref().map(|_| spec.heartbeat),
            last_heard: Instant::now(),
            last_sent: Instant::now(),
            link_lost: None,
            _sandbox: seat,
        };
        match process.await_hello(reader, spec.hello_timeout) {
            Ok(hello) => {
                if hello.ring {
                    process.ring = ring.map(Arc::new);
                }
                process.hello = hello;
                Ok(process)
            }
            Err(why) => {
                let reason = process.kill_and_describe();
                Err(PyRunnerError::Startup(format!(
                    "{} did not start async_py's worker: {why}; {reason}",
                    spec.python.display()
                )))
            }
        }
    }

    fn await_hello(&mut self, reader: &mut FrameReader, limit: Duration) -> Result<Hello, String> {
        let message = self.next_message(reader, Instant::now() + limit);
        // What the child wrote, to quote if it is not a hello: a frame the
        // codec refused, or a partial one, is still in the buffer.
        let seen = |reader: &mut FrameReader| {
            let buffered = reader.buffer();
            String::from_utf8_lossy(&buffered[..buffered.len().min(120)]).into_owned()
        };
        match message {
            Ok(FromChild::Hello(hello)) => Ok(hello),
            Ok(
                FromChild::Reply { .. }
                | FromChild::OutputMark
                | FromChild::Beat
                | FromChild::Awaiting { .. }
                | FromChild::Output { .. }
                | FromChild::Captured { .. }
                | FromChild::Streaming { .. }
                | FromChild::Item { .. }
                | FromChild::Host { .. }
                | FromChild::HostCancel { .. },
            ) => Err("its first frame was not a hello".into()),
            // A frame that did not decode comes with the error.
            Err(NoFrame::Bad(err)) => {
                let began = match err.frame() {
                    Some(frame) => {
                        String::from_utf8_lossy(&frame[..frame.len().min(120)]).into_owned()
                    }
                    None => seen(reader),
                };
                Err(format!("{err}; its stdout began with {began:?}"))
            }
            Err(NoFrame::Late) => Err(format!("no hello within {limit:?} (the start timeout)")),
            Err(NoFrame::Closed) if reader.buffer().is_empty() => {
                Err("it closed its stdout without a word".into())
            }
            Err(NoFrame::Closed) => Err(format!(
                "it closed its stdout after writing {:?}",
                seen(reader)
            )),
            Err(NoFrame::Io(err)) => Err(format!("reading its stdout failed: {err}")),
        }
    }

    /// Waits until `deadline` for the child's next message.
    pub fn next_message(
        &mut self,
        reader: &mut FrameReader,
        deadline: Instant,
    ) -> Result<FromChild, NoFrame> {
        let mut closed = false;
        loop {
            if let Some(message) = reader.next_message().map_err(NoFrame::Bad)? {
                return Ok(message);
            }
            if closed {
                return Err(NoFrame::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NoFrame::Late);
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.stdout.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.exit_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let limit = self.exit_check(deadline - now);
            match &self.ring {
                Some(ring) => ring.sleep(&mut fds, Some(limit)),
                None => poll(&mut fds, Some(limit)),
            }
            // Looked at before reading: all a dead child wrote is there to
            // read, a pipe's worth at most (a copy it forked may write on,
            // and is not waited for).
            let exited = self.exited();
            let mut reads = if exited { DEAD_CHILD_READS } else { 1 };
            while reads > 0 {
                reads -= 1;
                match self.receive(reader, true) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(NoFrame::Io(err)),
                }
            }
            closed |= exited;
        }
    }

    /// Moves what the child sent into `reader`: `Ok(0)` is end of file (what
    /// the child published before it is taken too), `WouldBlock` nothing new.
    /// With a ring the pipe holds only doorbells and end of file, and is
    /// read only if `pipe_too`: a caller spinning for replies then makes no
    /// system call.
    pub fn receive(&mut self, reader: &mut FrameReader, pipe_too: bool) -> io::Result<usize> {
        let Some(ring) = &self.ring else {
            let read = read_some(&mut self.stdout, reader);
            if self.launched.is_some() && matches!(read, Ok(n) if n > 0) {
                self.last_heard = Instant::now();
            }
            return read;
        };
        let taken = ring.take_into(reader.buffer())?;
        if pipe_too {
            // One read: a child that floods its stdout with zeros must not
            // keep this turn (and the state's lock) for ever.
            let mut doorbells = [0u8; 4096];
            let read = loop {
                match self.stdout.read(&mut doorbells) {
                    Ok(read) => break Some(read),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break None,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            };
            match read {
                Some(0) => {
                    // The child is gone: all it published is there now.
                    ring.take_into(reader.buffer())?;
                    return Ok(0);
                }
                Some(read) if doorbells[..read].iter().any(|&byte| byte != 0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the child wrote to its stdout what is not a doorbell \
                         (with a reply ring, a frame there is out of place)",
                    ));
                }
                _ => {}
            }
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Waits until `deadline` for room in the request pipe, or the child's end.
    pub fn wait_writable(&self, deadline: Instant) {
        let mut fds = [
            libc::pollfd {
                fd: self.requests_fd(),
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: self.exit_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        poll(
            &mut fds,
            Some(self.exit_check(deadline.saturating_duration_since(Instant::now()))),
        );
    }

    /// The child's pidfd, for poll(2) to watch for its end (POLLIN), or -1
    /// (which poll ignores) if there is none: then waits are cut to
    /// [`EXIT_CHECK`] (see [`ChildProcess::exit_check`]).
    pub fn exit_fd(&self) -> i32 {
        self.exit_fd.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// `limit`, or less if the child's end can only be seen by looking.
    pub fn exit_check(&self, limit: Duration) -> Duration {
        match self.exit_fd {
            Some(_) => limit,
            None => limit.min(EXIT_CHECK),
        }
    }

    /// Whether the child has exited (reaped or not). Judged by the process
    /// itself: end of file on its pipes says nothing while a copy it forked
    /// holds them.
    pub fn exited(&self) -> bool {
        if self.reaped.is_some() {
            return true;
        }
        if self.exit_fd.is_some() {
            let mut fds = [libc::pollfd {
                fd: self.exit_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            poll(&mut fds, Some(Duration::ZERO));
            return fds[0].revents != 0;
        }
        match &self.process {
            Process::Spawned(_) => has_exited(self.pid) == Some(true),
            // Not ours to wait for: the zygote, its parent, says.
            Process::Forked(zygote) => zygote.has_reported_exit(self.pid),
        }
    }

    /// Writes request bytes without blocking.
    pub fn write_requests(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write(bytes),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        if self.launched.is_some() && matches!(written, Ok(n) if n > 0) {
            self.last_sent = Instant::now();
        }
        written
    }

    /// The request pipe's fd, or -1 (which poll ignores) once it is closed.
    pub fn requests_fd(&self) -> i32 {
        self.stdin.as_ref().map_or(-1, |stdin| stdin.as_raw_fd())
    }

    /// Closes the request pipe: the child sees end of file and exits.
    pub fn close_requests(&mut self) {
        self.stdin = None;
    }

    /// Sends SIGINT to the child alone, so the `finally` blocks of the
    /// request `target` run. (Not to the pid its hello names: a child's
    /// word is not trusted with signals.) With a ring, the child learns
    /// which request the signal is for: it stops that one and then exits,
    /// or, if it had ended, ignores the signal and goes on. Without one,
    /// it stops whatever request runs, and exits.
    pub fn interrupt(&self, target: u64) {
        if self.launched.is_some() {
            // No signal crosses its link: it interrupts itself at the limit
            // it was sent (`send`), and the grace that follows is the same.
            return;
        }
        if let Some(ring) = &self.ring {
            ring.target_interrupt(target);
        }
        signal(self.pid as libc::pid_t, libc::SIGINT);
    }

    /// Kills the whole process group and reaps the child.
    pub fn kill_group(&mut self) -> Option<ExitStatus> {
        kill_group_once(self.pid, &mut self.group_killed);
        if self.reaped.is_none() {
            self.reaped = reap(&mut self.process, self.pid);
        }
        self.reaped
    }

    /// Waits up to `limit` for the child to exit by itself. What it left in
    /// its process group is killed before the child is reaped, while its
    /// pid, and so its group id, cannot yet be reused.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        let (pid, killed) = (self.pid, &mut self.group_killed);
        self.reaped = match &mut self.process {
            // The zygote's word is waited for until the limit, or its end.
            Process::Forked(zygote) => {
                zygote.exit_status(pid, limit, || kill_group_once(pid, killed))
            }
            Process::Spawned(child) => {
                let deadline = Instant::now() + limit;
                loop {
                    match has_exited(pid) {
                        Some(true) => {
                            kill_group_once(pid, killed);
                            break child.wait().ok();
                        }
                        // Not ours to wait for (reaped elsewhere): say so at once.
                        None => break child.try_wait().ok().flatten(),
                        Some(false) if Instant::now() >= deadline => break None,
                        Some(false) => thread::sleep(Duration::from_millis(1)),
                    }
                }
            }
        };
        self.reaped
    }

    /// Forwards what the child has written to its stderr so far.
    pub fn forward_stderr(&self) {
        self.stderr.forward_pending();
    }

    /// Once the child is reaped: forwards the rest of what it wrote to its
    /// stderr, the start of a line it never ended too.
    pub fn forward_last_stderr(&self) {
        self.stderr.forward_rest();
    }

    /// Kills the group, reaps the child, and says how it ended and what it
    /// last wrote to stderr.
    pub fn kill_and_describe(&mut self) -> String {
        let status = self.kill_group();
        // Reaped, it wrote all it will: its last lines are in the pipe.
        self.forward_last_stderr();
        let who = format!("child {} (Python {})", self.pid, self.hello.python_version);
        let mut reason = match status {
            Some(status) => format!("{who} {}", describe_status(status)),
            None => format!("{who} could not be reaped"),
        };
        if let Some(lost) = &self.link_lost {
            reason = format!("{lost}; {reason}");
        }
        let tail = self.stderr.tail();
        if !tail.is_empty() {
            reason.push_str("; last stderr lines:\n");
            reason.push_str(&tail.join("\n"));
        }
        reason
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// What a started child is made of: its process, pid, and pipes.
type Started = (Process, u32, File, File, File);

/// Starts a child from `spec`'s interpreter.
fn spawn(
    spec: &LaunchSpec,
    ring: Option<&ReplyRing>,
    seat: Option<&SandboxSeat>,
) -> Result<Started, PyRunnerError> {
    let mut command = spec.command(ring.map_or(String::new(), ReplyRing::path_for_child));
    if let Some(seat) = seat {
        command
            .env(sandbox::ENV, seat.settings(true))
            .current_dir(seat.scratch());
        inherit_fd(&mut command, seat.ruleset());
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            PyRunnerError::Startup(format!("could not start {}: {err}", spec.python.display()))
        })?;
    let pid = child.id();
    let stdin = OwnedFd::from(child.stdin.take().expect("stdin is piped"));
    let stdout = OwnedFd::from(child.stdout.take().expect("stdout is piped"));
    let stderr = OwnedFd::from(child.stderr.take().expect("stderr is piped"));
    Ok((
        Process::Spawned(child),
        pid,
        stdin.into(),
        stdout.into(),
        stderr.into(),
    ))
}

/// Writes all of `bytes` to the pipe `to` by `deadline` (non-blocking from
/// then on).
fn write_within(to: &mut File, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    widen_pipe(to);
    set_nonblocking(to)?;
    let mut rest = bytes;
    while !rest.is_empty() {
        match to.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the launcher did not take the worker's source within the start timeout",
                    ));
                }
                let mut fds = [libc::pollfd {
                    fd: to.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                poll(&mut fds, Some(left));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Has `command`'s process keep `fd` open across its exec.
fn inherit_fd(command: &mut Command, fd: std::os::fd::RawFd) {
    let keep = move || {
        // SAFETY: fcntl(2) on an fd this process holds is async-signal-safe
        // and touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure makes one async-signal-safe call and allocates
    // nothing.
    unsafe {
        command.pre_exec(keep);
    }
}

/// Has the zygote fork a child, with pipes made here.
fn fork(
    zygote: &Arc<Zygote>,
    ring: Option<&ReplyRing>,
    seat: Option<&SandboxSeat>,
) -> io::Result<Started> {
    let (their_stdin, stdin) = zygote::pipe()?;
    let (stdout, their_stdout) = zygote::pipe()?;
    let (stderr, their_stderr) = zygote::pipe()?;
    let theirs = [their_stdin, their_stdout, their_stderr].map(OwnedFd::from);
    let pid = zygote.fork(
        [&theirs[0], &theirs[1], &theirs[2]],
        ring.map(ReplyRing::raw_fd),
        seat.map(|seat| (seat.ruleset(), seat.settings(false))),
    )?;
    // Their ends close here: the child holds its own copies.
    Ok((Process::Forked(zygote.clone()), pid, stdin, stdout, stderr))
}

/// Reaps a killed child: waits for it, or for the zygote's word of it.
fn reap(process: &mut Process, pid: u32) -> Option<ExitStatus> {
    match process {
        Process::Spawned(child) => child.wait().ok(),
        Process::Forked(zygote) => zygote.exit_status(pid, REAP_LIMIT, || {}),
    }
}

/// Whether our child `pid` has ended, leaving it unreaped; `None` if it
/// cannot be waited for (it is not, or no longer, a child to reap).
fn has_exited(pid: u32) -> Option<bool> {
    // SAFETY: siginfo_t is plain data that waitid fills in; zeroed, its pid
    // reads 0 when no child has changed state.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(2) writes only into `info`; WNOWAIT leaves the child
    // to be reaped by `Child::wait`.
    let found = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if found != 0 {
        let error = io::Error::last_os_error();
        return (error.raw_os_error() == Some(libc::EINTR)).then_some(false);
    }
    // SAFETY: si_pid is the field waitid sets for WEXITED.
    Some(unsafe { info.si_pid() } != 0)
}

/// A pidfd for process `pid` (Linux 5.3 and later), or `None`.
fn open_pidfd(pid: u32) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open(2) takes a pid and flags and touches no memory;
        // it returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd >= 0 {
            // SAFETY: the fd was just made for us and nothing else owns it.
            return Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
    None
}

/// How many reads take what a dead child left in its 1 MiB pipe.
const DEAD_CHILD_READS: usize = 2 * (1 << 20) / READ_CHUNK;

/// How long a killed forked child's end is waited for.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Why [`ChildProcess::next_message`] has no message.
pub(crate) enum NoFrame {
    /// The deadline passed.
    Late,
    /// The child closed its stdout: it is dead or dying.
    Closed,
    Io(io::Error),
    /// Bytes that are not a message.
    Bad(WireError),
}

/// The folder children load the compiled worker from, if they have one.
pub(crate) fn compiled_worker_folder() -> Option<PathBuf> {
    let prefix = compiled_worker_cache();
    (!prefix.is_empty())
        .then(|| PathBuf::from(prefix).parent().map(PathBuf::from))
        .flatten()
}

/// Where children cache the compiled worker: `$XDG_CACHE_HOME/async_py`
/// (or `~/.cache/async_py`), a folder only this user may write, named by a
/// hash of the worker's source. Empty (no cache) if there is no such folder.
fn compiled_worker_cache() -> &'static std::ffi::OsStr {
    static PREFIX: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            });
        let Some(dir) = base.map(|base| base.join("async_py")) else {
            return std::ffi::OsString::new();
        };
        if std::fs::create_dir_all(&dir).is_err() || !private_to_us(&dir) {
            return std::ffi::OsString::new();
        }
        // FNV-1a: a fresh file for every change of the source.
        let hash = crate::worker_source::WORKER_PY
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        dir.join(format!("worker-{hash:016x}")).into_os_string()
    })
}

/// True if `dir` belongs to this user and no one else may write to it: the
/// children load code from it.
fn private_to_us(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return false;
    }
    if meta.mode() & 0o022 != 0 {
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_ok();
    }
    true
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGINT => " (SIGINT)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGBUS => " (SIGBUS)",
            _ => "",
        };
        format!("killed by signal {signal}{name}")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

/// Kills child `pid`'s process group unless `killed` says it was. Done
/// before the child is reaped: an unreaped leader keeps its group id from
/// being reused. The group outlives its leader while grandchildren live in it.
fn kill_group_once(pid: u32, killed: &mut bool) {
    if !*killed {
        signal(-(pid as libc::pid_t), libc::SIGKILL);
        *killed = true;
    }
}

pub(super) fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid or
    // group only makes it fail with ESRCH.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Asks for a 1 MiB pipe buffer (Linux's default limit for unprivileged
/// processes) instead of 64 KiB: a large value then crosses in one write
/// and a few reads rather than a wake-up per 64 KiB. A refusal leaves the
/// default, which works, only slower.
fn widen_pipe(fd: &impl AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: fcntl on a file descriptor this process owns, with an integer argument.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

pub(super) fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a file descriptor this process owns, with integer
    // arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// poll(2) over `fds`; `None` waits without limit. Interruptions count as a
/// wake-up: callers re-check their state anyway.
pub(crate) fn poll(fds: &mut [libc::pollfd], limit: Option<Duration>) {
    let timeout = match limit {
        None => -1,
        Some(limit) => {
            limit.as_millis().min(i32::MAX as u128) as i32
                + i32::from(limit.subsec_nanos() % 1_000_000 != 0)
        }
    };
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the
    // whole call, and its length is passed alongside.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout);
    }
}

/// Reads what the child has written into the reader's buffer. `Ok(0)` is end
/// of file.
pub(crate) fn read_some(stdout: &mut File, reader: &mut FrameReader) -> io::Result<usize> {
    let buffer = reader.buffer();
    buffer.reserve(READ_CHUNK);
    let spare = buffer.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into memory the
    // buffer owns and reserved; only the count it reports becomes part of
    // the buffer.
    let read = unsafe { libc::read(stdout.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let read = read as usize;
    // SAFETY: the first `read` bytes of the spare capacity were written above.
    unsafe { buffer.set_len(buffer.len() + read) };
    Ok(read)
}

/// How much room a read of the reply pipe offers: a full pipe's worth.
const READ_CHUNK: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_goes_in_pieces_under_the_argument_limit_cut_after_lines() {
        let source = crate::worker_source::WORKER_PY;
        let pieces = source_pieces(source);
        assert_eq!(pieces.concat(), source);
        assert!(pieces.iter().all(|piece| piece.len() <= SOURCE_PIECE));
        assert!(pieces[..pieces.len() - 1]
            .iter()
            .all(|piece| piece.ends_with('\n')));
        // A text without line ends is cut between characters.
        let long = "é".repeat(SOURCE_PIECE);
        let pieces = source_pieces(&long);
        assert_eq!(pieces.concat(), long);
        assert!(pieces.iter().all(|piece| piece.len() <= SOURCE_PIECE));
        assert_eq!(source_pieces(""), vec![""]);
    }
}
