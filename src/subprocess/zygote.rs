//! A pool's zygote: one child that has started Python and loaded the worker,
//! and forks a ready worker on request (see `python/PROTOCOL.md`, "The
//! zygote"). A Python start is CPU-bound, so on a machine with few cores the
//! workers of a pool could not start at once; forks of one started
//! interpreter can. The pool's workers are then its grandchildren: the
//! zygote reaps them and reports each one's wait status.
//!
//! # Caveats
//! A forked worker's parent is the zygote, so the kernel kills it when the
//! zygote dies (and the zygote when this process dies). Each forked worker
//! makes a pid namespace of its own, as a started one does (see `child`),
//! so stopping or replacing one worker ends what it started and nothing
//! of its siblings'. A worker that cannot be forked (the zygote died, say)
//! is started the usual way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::child::{signal, LaunchSpec};
use super::stderr::StderrForwarder;
use crate::error::PyRunnerError;

/// The longest sandboxed fork request: a Unix stream socket sends one of
/// up to 16 KiB as one piece, so no other writer's bytes land inside it.
const SANDBOXED_FORK_MAX: usize = 16 << 10;

/// How long a fork may take before the worker is started the usual way.
const FORK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the zygote may take to reap an ended worker when asked.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the zygote has said, as its reader thread records it.
#[derive(Default)]
struct Heard {
    /// Pids of forks, in the order the requests went (0: the fork failed).
    forked: VecDeque<u32>,
    /// Raw wait statuses of workers that ended, by pid, until taken.
    exits: HashMap<u32, i32>,
    /// Forks whose callers stopped waiting: their pids are killed on
    /// arrival, not handed to a later request.
    abandoned: usize,
    /// Pids of such forks, killed, whose ends are not waited for.
    unwanted: HashSet<u32>,
    /// Workers the zygote reaped, until the request's caller takes the word
    /// (a word nobody takes is dropped when its pid is forked again).
    reaped: HashSet<u32>,
    /// It has said it is ready.
    ready: bool,
    /// It was too slow to answer once: no more forks are asked of it.
    broken: bool,
    /// Its socket ended: it is gone.
    gone: bool,
    /// It has been reaped.
    reaped_itself: bool,
}

struct Shared {
    heard: Mutex<Heard>,
    changed: Condvar,
}

impl Shared {
    fn heard(&self) -> MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done` holds of what was heard, or `deadline` passes.
    fn wait_until<T>(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&mut Heard) -> Option<T>,
    ) -> Option<T> {
        let mut heard = self.heard();
        loop {
            if let Some(found) = done(&mut heard) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline || heard.gone {
                return None;
            }
            heard = self
                .changed
                .wait_timeout(heard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The parent's end of a zygote. Dropping the last handle closes its
/// socket, and the zygote exits.
pub(crate) struct Zygote {
    /// Requests go one at a time, so answers come in their order.
    requests: Mutex<UnixStream>,
    shared: Arc<Shared>,
    pub pid: u32,
}

impl Zygote {
    /// Starts a zygote for children launched by `spec`; waits until it is
    /// ready to fork.
    pub fn start(spec: &LaunchSpec) -> Result<Arc<Zygote>, PyRunnerError> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|err| PyRunnerError::Startup(format!("could not make a socket: {err}")))?;
        let reader = ours
            .try_clone()
            .map_err(|err| PyRunnerError::Startup(format!("could not share a socket: {err}")))?;
        let shared = Arc::new(Shared {
            heard: Mutex::default(),
            changed: Condvar::new(),
        });
        let (started_tx, started) = mpsc::channel();
        let mut launch = spec.clone();
        // The zygote's own argument comes last; its forks are told to share.
        launch.share_cores = false;
        let listening = shared.clone();
        // The thread that spawns the zygote lives as long as it: Linux's
        // parent-death signal follows the thread that forked a child.
        thread::Builder::new()
            .name("async_py-zygote".into())
            .spawn(move || {
                let mut command = launch.command("--zygote");
                command
                    .stdin(Stdio::from(OwnedFd::from(theirs)))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let spawned = command.spawn();
                // The command holds the zygote's end of the socket: with it
                // open here, the zygote's death would not end the socket.
                drop(command);
                let mut child = match spawned {
                    Ok(child) => child,
                    Err(err) => {
                        let _ = started_tx.send(Err(err));
                        return;
                    }
                };
                let pid = child.id();
                let stderr = child.stderr.take().expect("stderr is piped");
                let _ = started_tx.send(Ok(pid));
                // What the zygote says goes on until its end; nothing waits for it.
                let _ = StderrForwarder::start(pid, OwnedFd::from(stderr), None);
                listen(reader, &listening);
                // Its socket ended: it exited, or is about to.
                let _ = child.kill();
                let _ = child.wait();
                listening.heard().reaped_itself = true;
                listening.changed.notify_all();
            })
            .map_err(|err| PyRunnerError::Startup(format!("could not start a thread: {err}")))?;
        let pid = match started.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(err)) => {
                return Err(PyRunnerError::Startup(format!(
                    "could not start {}: {err}",
                    spec.python.display()
                )))
            }
            Err(_) => return Err(PyRunnerError::Startup("the zygote's thread died".into())),
        };
        let zygote = Arc::new(Zygote {
            requests: Mutex::new(ours),
            shared,
            pid,
        });
        let ready = zygote
            .shared
            .wait_until(Instant::now() + spec.hello_timeout, |heard| {
                heard.ready.then_some(())
            });
        match ready {
            Some(()) => Ok(zygote),
            None if zygote.shared.heard().gone => Err(PyRunnerError::Startup(format!(
                "{} did not start a zygote: it exited",
                spec.python.display()
            ))),
            None => Err(PyRunnerError::Startup(format!(
                "{} did not start a zygote: it was not ready within {:?} (the start timeout)",
                spec.python.display(),
                spec.hello_timeout
            ))),
        }
    }

    /// Forks a worker whose stdin, stdout and stderr are the given fds (and
    /// whose reply ring is `ring`); its pid. A sandboxed worker is given its
    /// landlock ruleset's fd and its settings (see `sandbox`).
    pub fn fork(
        &self,
        stdio: [&OwnedFd; 3],
        ring: Option<RawFd>,
        sandbox: Option<(RawFd, String)>,
    ) -> io::Result<u32> {
        let mut fds: Vec<RawFd> = stdio.iter().map(|fd| fd.as_raw_fd()).collect();
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match &sandbox {
            // A larger request could be split by the socket, and the
            // listener's words land inside it: that worker is started the
            // usual way.
            Some((_, settings)) if settings.len() > SANDBOXED_FORK_MAX => {
                return Err(io::Error::other(
                    "the sandbox's settings are too long for a fork",
                ))
            }
            Some((ruleset, settings)) => {
                fds.push(*ruleset);
                fds.extend(ring);
                // One message: the zygote's listener writes to the same
                // socket without this lock, and must not land inside it.
                let mut message = vec![b's'];
                message.extend_from_slice(&(settings.len() as u32).to_be_bytes());
                message.extend_from_slice(settings.as_bytes());
                send_with_fds(&requests, &message, &fds)
            }
            None => {
                fds.extend(ring);
                send_with_fds(&requests, b"f", &fds)
            }
        };
        if let Err(err) = sent {
            self.shared.heard().broken = true;
            return Err(err);
        }
        let pid = self
            .shared
            .wait_until(Instant::now() + FORK_TIMEOUT, |heard| {
                heard.forked.pop_front()
            });
        if pid.is_none() {
            // Its answer may still come; it must not be taken for the next.
            let mut heard = self.shared.heard();
            heard.abandoned += 1;
            heard.broken = true;
        }
        drop(requests);
        match pid {
            Some(0) => Err(io::Error::other("the zygote could not fork")),
            Some(pid) => Ok(pid),
            None => Err(io::Error::other("the zygote did not answer")),
        }
    }

    /// The wait status of forked worker `pid`, waiting up to `limit` for it;
    /// `None` if it has not exited (or the zygote is gone and cannot say).
    /// The zygote keeps an ended worker unreaped until its status is taken,
    /// so until then its pid and process group are not reused: `before_reap`
    /// runs in that window, once the end is known.
    pub fn exit_status(
        &self,
        pid: u32,
        limit: Duration,
        before_reap: impl FnOnce(),
    ) -> Option<ExitStatus> {
        let status = self
            .shared
            .wait_until(Instant::now() + limit, |heard| heard.exits.remove(&pid))?;
        before_reap();
        // Taken: the zygote may reap it now. Waiting for its word keeps the
        // promise that a child is reaped once its end is known.
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if (&*requests).write_all(&reap_request(pid)).is_ok() {
            drop(requests);
            self.shared
                .wait_until(Instant::now() + REAP_TIMEOUT, |heard| {
                    heard.reaped.remove(&pid).then_some(())
                });
        }
        Some(ExitStatus::from_raw(status))
    }

    /// Whether the zygote has said that forked worker `pid` ended (and its
    /// word is not taken yet).
    pub fn has_reported_exit(&self, pid: u32) -> bool {
        self.shared.heard().exits.contains_key(&pid)
    }

    /// Whether the zygote can still fork.
    pub fn alive(&self) -> bool {
        let heard = self.shared.heard();
        !heard.gone && !heard.broken
    }

    /// Ends the zygote (its workers should be gone by now) and waits, a
    /// little, until it is reaped.
    pub fn end(&self) {
        self.close();
        let deadline = Instant::now() + REAP_TIMEOUT;
        let mut heard = self.shared.heard();
        while !heard.reaped_itself && Instant::now() < deadline {
            heard = self
                .shared
                .changed
                .wait_timeout(heard, deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn close(&self) {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let _ = requests.shutdown(std::net::Shutdown::Both);
    }
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote").field("pid", &self.pid).finish()
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads what the zygote says until its socket ends.
fn listen(mut socket: UnixStream, shared: &Shared) {
    loop {
        let mut tag = [0u8; 1];
        if socket.read_exact(&mut tag).is_err() {
            break;
        }
        let mut body = [0u8; 8];
        let size = match tag[0] {
            b'r' => 0,
            b'p' | b'd' => 4,
            b'x' => 8,
            _ => break, // not the zygote's protocol: take it as gone
        };
        if socket.read_exact(&mut body[..size]).is_err() {
            break;
        }
        let pid = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        let mut reap = None;
        let mut heard = shared.heard();
        if tag[0] == b'p' {
            // A word of a reaped worker whose pid is now another's is stale
            // (its waiter gave up, or it was reaped unwanted).
            heard.reaped.remove(&pid);
        }
        match tag[0] {
            b'r' => heard.ready = true,
            b'p' if heard.abandoned > 0 => {
                // A fork whose caller gave up and started a worker itself.
                heard.abandoned -= 1;
                if pid != 0 {
                    // The group is the unreaped worker's own.
                    signal(-(pid as libc::pid_t), libc::SIGKILL);
                    heard.unwanted.insert(pid);
                }
            }
            b'p' => heard.forked.push_back(pid),
            b'd' => {
                heard.reaped.insert(pid);
            }
            _ if heard.unwanted.remove(&pid) => reap = Some(pid),
            _ => {
                let status = i32::from_be_bytes(body[4..].try_into().expect("4 bytes"));
                heard.exits.insert(pid, status);
            }
        }
        drop(heard);
        shared.changed.notify_all();
        if let Some(pid) = reap {
            let _ = socket.write_all(&reap_request(pid));
        }
    }
    shared.heard().gone = true;
    shared.changed.notify_all();
}

/// Asks the zygote to reap ended worker `pid`.
fn reap_request(pid: u32) -> [u8; 5] {
    let mut request = [b'w', 0, 0, 0, 0];
    request[1..].copy_from_slice(&pid.to_be_bytes());
    request
}

/// Sends `data` with `fds` attached (SCM_RIGHTS) in one `sendmsg`; a short
/// one (see [`SANDBOXED_FORK_MAX`]) goes as one piece or not at all.
fn send_with_fds(socket: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut data = data.to_vec();
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // u64s: the buffer must be aligned for a cmsghdr.
    let mut buffer = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is a valid empty one; the fields set below
    // point at `iov` and `buffer`, which outlive the sendmsg call.
    let sent = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = buffer.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(header).cast::<RawFd>(),
            fds.len(),
        );
        libc::sendmsg(socket.as_raw_fd(), &message, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != data.len() {
        // The rest of a partly sent message would follow the listener's
        // words: the zygote is no longer to be trusted with requests.
        return Err(io::Error::other(
            "the zygote's socket took part of a request",
        ));
    }
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-int array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are new and owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}
