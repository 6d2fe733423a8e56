//! A child's stderr (where its stdout goes too), forwarded line by line to
//! this process's stderr as `[python <pid>] <line>`, or, for a runner with
//! `on_output`, handed to that callback as `Stderr` lines.
//!
//! A thread of its own forwards what comes, as it comes. Whoever needs all
//! the child wrote so far to be out (a reply that follows output, `stop`, a
//! dead child's last words) forwards the rest of the pipe itself, under the
//! same lock as the thread: lines go out whole, once, and in order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use super::child::poll;
use crate::output::{OutputSink, OutputStream};

/// How many of the child's last lines are kept for a `WorkerDied` reason.
const TAIL_LINES: usize = 20;

/// The longest piece of a line forwarded (and kept) at once: a line
/// without end is forwarded in pieces, never held whole.
const LINE_PIECE: usize = 64 << 10;

/// How much the thread reads per turn under the lock, so that a flood
/// (from a process the child started, say) never keeps the lock from a
/// caller that waits to forward the rest.
const THREAD_TURN: usize = 256 << 10;

/// How much one read takes.
const READ_SIZE: usize = 64 << 10;

/// The most read when the pipe cannot say how much it holds.
const UNKNOWN_PENDING: usize = 16 << 20;

/// One child's stderr pipe and what was read of it.
pub(crate) struct StderrForwarder {
    state: Mutex<Forwarding>,
}

struct Forwarding {
    pipe: File,
    /// Where reads land.
    chunk: Box<[u8]>,
    lines: Lines,
    /// The pipe reached end of file: every process that held it is gone.
    ended: bool,
    /// This process's stderr failed: what comes is read and dropped, so
    /// that the child never blocks on a full pipe.
    silenced: bool,
}

/// The child's text, cut into lines.
struct Lines {
    pid: u32,
    /// Where lines go instead of this process's stderr.
    sink: Option<OutputSink>,
    /// The start of a line whose end has not come yet.
    unended: Vec<u8>,
    tail: VecDeque<String>,
}

impl StderrForwarder {
    /// Forwards `pipe`, the stderr of child `pid`, from a thread of its own
    /// until end of file.
    pub fn start(
        pid: u32,
        pipe: OwnedFd,
        sink: Option<OutputSink>,
    ) -> io::Result<Arc<StderrForwarder>> {
        let pipe = File::from(pipe);
        super::child::set_nonblocking(&pipe)?;
        let forwarder = Arc::new(StderrForwarder {
            state: Mutex::new(Forwarding {
                pipe,
                chunk: vec![0; READ_SIZE].into_boxed_slice(),
                lines: Lines {
                    pid,
                    sink,
                    unended: Vec::new(),
                    tail: VecDeque::with_capacity(TAIL_LINES),
                },
                ended: false,
                silenced: false,
            }),
        });
        let running = forwarder.clone();
        thread::Builder::new()
            .name(format!("async_py-stderr-{pid}"))
            .spawn(move || running.forward_as_it_comes())?;
        Ok(forwarder)
    }

    /// Forwards every line the pipe holds now, before returning: what the
    /// child wrote before it sent the frame being read is out after this.
    /// The start of a line whose end has not come stays for later.
    pub fn forward_pending(&self) {
        let mut state = self.lock();
        let pending = state.pending();
        state.forward(pending);
    }

    /// For a child that is gone: forwards what the pipe holds, and the start
    /// of a line it never ended. (A process it started may still hold the
    /// pipe: the thread forwards what that writes later.)
    pub fn forward_rest(&self) {
        let mut state = self.lock();
        let pending = state.pending();
        state.forward(pending);
        let mut out = String::new();
        state.lines.end_unended(&mut out);
        state.write_out(&out);
    }

    /// The child's last lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.lock().lines.tail.iter().cloned().collect()
    }

    fn forward_as_it_comes(&self) {
        let fd = self.lock().pipe.as_raw_fd();
        loop {
            // Without the lock: a caller may forward meanwhile.
            let mut fds = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            poll(&mut fds, None);
            let mut state = self.lock();
            if !state.ended {
                state.forward(THREAD_TURN);
            }
            if state.ended {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Forwarding> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Forwarding {
    /// How many bytes the pipe holds now.
    fn pending(&self) -> usize {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, into `pending`, for a pipe fd
        // this process owns.
        let asked = unsafe { libc::ioctl(self.pipe.as_raw_fd(), libc::FIONREAD, &mut pending) };
        if asked == 0 {
            usize::try_from(pending).unwrap_or(0)
        } else {
            UNKNOWN_PENDING
        }
    }

    /// Reads up to `budget` bytes (less if the pipe runs dry) and forwards
    /// the lines they end, in one write; at end of file, the start of a line
    /// never ended too.
    fn forward(&mut self, budget: usize) {
        let mut out = String::new();
        let mut left = budget;
        while left > 0 {
            let room = left.min(self.chunk.len());
            match self.pipe.read(&mut self.chunk[..room]) {
                Ok(0) => {
                    self.ended = true;
                    self.lines.end_unended(&mut out);
                    break;
                }
                Ok(read) => {
                    left -= read;
                    self.lines.take(&self.chunk[..read], &mut out);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.ended = true;
                    break;
                }
            }
        }
        self.write_out(&out);
    }

    /// Writes forwarded lines to this process's stderr, through `eprint!`
    /// (so a test harness captures them as it captures ours). Should that
    /// fail, later lines are dropped instead.
    fn write_out(&mut self, out: &str) {
        if out.is_empty() || self.silenced {
            return;
        }
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| eprint!("{out}")));
        self.silenced = written.is_err();
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is
/// not complete there.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: its lead is further back
        }
        let needs = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needs > back { back } else { 0 };
    }
    0
}

impl Lines {
    /// Adds the lines `bytes` ends (and pieces of a line grown past
    /// [`LINE_PIECE`]) to `out`; the rest waits in `unended`.
    fn take(&mut self, mut bytes: &[u8], out: &mut String) {
        while !bytes.is_empty() {
            let room = LINE_PIECE - self.unended.len();
            let looked = &bytes[..bytes.len().min(room)];
            match looked.iter().position(|&byte| byte == b'\n') {
                Some(end) => {
                    self.unended.extend_from_slice(&looked[..end]);
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.unended.extend_from_slice(looked);
                    bytes = &bytes[looked.len()..];
                    if self.unended.len() < LINE_PIECE {
                        return;
                    }
                    // A full piece is cut between characters: a character
                    // it would cut in two waits for the next piece.
                    let keep = incomplete_tail(&self.unended);
                    let tail = self.unended.split_off(self.unended.len() - keep);
                    self.end_line(out);
                    self.unended = tail;
                    continue;
                }
            }
            self.end_line(out);
        }
    }

    /// Adds the start of a line that will not be ended to `out`, if any.
    fn end_unended(&mut self, out: &mut String) {
        if !self.unended.is_empty() {
            self.end_line(out);
        }
    }

    /// Adds what `unended` holds to `out` as one line (an empty one too).
    fn end_line(&mut self, out: &mut String) {
        let text = String::from_utf8_lossy(&self.unended);
        let text = text.trim_end_matches('\r');
        if let Some(sink) = &self.sink {
            sink.send(OutputStream::Stderr, text.to_owned());
        } else {
            out.push_str("[python ");
            out.push_str(&self.pid.to_string());
            out.push_str("] ");
            out.push_str(text);
            out.push('\n');
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.to_owned());
        self.unended.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::incomplete_tail;

    #[test]
    fn a_character_cut_in_two_is_found_at_the_end() {
        let text = "aé€😀".as_bytes(); // 1, 2, 3 and 4 bytes
        assert_eq!(incomplete_tail(text), 0);
        assert_eq!(incomplete_tail(&text[..text.len() - 1]), 3);
        assert_eq!(incomplete_tail(&text[..text.len() - 3]), 1);
        assert_eq!(incomplete_tail(&text[..3]), 0); // "aé"
        assert_eq!(incomplete_tail(&text[..2]), 1); // "a" and half of "é"
        assert_eq!(incomplete_tail(&text[..5]), 2); // "aé" and two thirds of "€"
        assert_eq!(incomplete_tail(b"\x80\x80\x80\x80"), 0); // no lead: nothing to wait for
    }
}
