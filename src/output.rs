//! What Python writes: captured per command ([`Captured`]), or handed line
//! by line to a callback ([`OutputLine`], `on_output`).

use std::fmt;
use std::sync::Arc;

/// Which of Python's two output streams a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// `sys.stdout` (and, in a child, fd 1).
    Stdout,
    /// `sys.stderr` (and, in a child, fd 2).
    Stderr,
}

/// One line that Python code wrote outside a captured command, as given to
/// the builder's `on_output` callback. `text` has no line ending; a line
/// longer than 64 KiB arrives in pieces of at most 64 KiB, each but the
/// last ending where it was cut (at a character's boundary), so a line
/// that never ends cannot grow memory.
///
/// With `on_output`, every line that Python code writes to `sys.stdout` or
/// `sys.stderr` outside a captured command goes to the callback instead of
/// the terminal, on every backend; without it, output goes where it always
/// did (in-process: where Python's own goes; a child's: to this process's
/// stderr as `[python <pid>] <line>`).
///
/// - **Order.** A command's reply comes after the lines it wrote before it
///   returned have been handed to the callback; `stop()` returns after
///   every line has been. A line still open (no `\n` yet) is handed on
///   when the command that wrote it ends (in a child, when any command
///   ends), or at `stop()`.
/// - **In-process** (PyO3, RustPython): the callback runs on the runner's
///   own thread, during the write (PyO3 releases the GIL meanwhile).
///   Several PyO3 runners share one `sys.stdout`; each routes the writes of
///   its own thread (and of the coroutines on its loop). Output of threads
///   that user code starts is not routed: it goes where Python's own goes.
///   Writes to file descriptors (`os.write(1, ..)`, C `printf`) are never
///   seen.
/// - **In a child**: text written through `sys.stdout` and `sys.stderr` by
///   the worker's main thread (commands and coroutines) comes as protocol
///   frames, in order with the replies, with its stream. Everything else
///   (writes to fds 1 and 2, C code, processes the child starts, threads
///   user code starts) reaches the callback from the child's stderr pipe,
///   as `Stderr` lines (fd 1 is joined to fd 2 in a child), in no set
///   order with replies.
///
/// # Caveats
/// The callback runs on whichever thread hands the line on: in-process the
/// runner's thread; for a child, the one reading its replies at that
/// moment (the runner's own thread, or a caller's thread that waits for a
/// reply, holding the runner's state) or the thread forwarding its stderr.
/// It should return quickly and must not send commands to the same runner,
/// which cannot answer until it returns. A panic in it loses that line and
/// nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Where Python wrote it.
    pub stream: OutputStream,
    /// The line, without its `\n`.
    pub text: String,
}

/// A command's result with what its Python code wrote while it ran, made
/// by `.capture_output()` on a call or an exec (`PyRunner` or `PyPool`).
///
/// - **What is captured**: what the command writes to `sys.stdout` and
///   `sys.stderr` while it runs, including the coroutine it returns (which
///   the runner awaits) and the tasks that coroutine starts; not what
///   other commands write meanwhile, even coroutines interleaving with it
///   (the capture lives in a `contextvars` variable, which asyncio tasks
///   copy when they are made).
/// - **In a child**, the synchronous part of the command runs with fds 1
///   and 2 pointed at two temporary files, so writes to them
///   (`os.write(1, ..)`, C `printf`, processes it starts) are captured too,
///   in order with its `print`s; its coroutine's fd writes are not.
///   **In-process** (PyO3, RustPython) only `sys.stdout` and `sys.stderr`
///   are captured; writes to fds go where they always go.
/// - **Caps**: each stream keeps at most 16 MiB (of UTF-8); past that the
///   text is cut at a character's boundary and one line
///   `[async_py: output cut at 16777216 bytes]` is added. A flood past the
///   cap costs no memory beyond it (a child's fd writes go to a file on
///   disk, of which 16 MiB is read back).
/// - **Failure**: a captured command that fails returns its error alone;
///   what it wrote is dropped.
/// - Code that replaces `sys.stdout` itself (`contextlib.redirect_stdout`)
///   takes that output away from the capture, as it would from a
///   terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured<R> {
    /// The command's own result.
    pub value: R,
    /// What it wrote to `sys.stdout`.
    pub stdout: String,
    /// What it wrote to `sys.stderr`.
    pub stderr: String,
}

/// The `on_output` callback, shared by a runner's threads.
#[derive(Clone)]
pub(crate) struct OutputSink(pub Arc<dyn Fn(OutputLine) + Send + Sync>);

impl OutputSink {
    /// Calls the callback. A panic in it is caught (the panic hook has
    /// reported it): the line is lost, the runner's thread goes on.
    pub fn send(&self, stream: OutputStream, text: String) {
        let line = OutputLine { stream, text };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(line)));
    }

    /// Hands on one line (without its `\n`), in pieces of at most
    /// [`OUTPUT_LINE_CAP`](crate::tuning::OUTPUT_LINE_CAP) bytes, each cut
    /// at a character's boundary.
    #[cfg_attr(
        not(any(feature = "pyo3", feature = "subprocess", feature = "rustpython")),
        allow(dead_code)
    )]
    pub fn send_line(&self, stream: OutputStream, text: &str) {
        let mut rest = text;
        while rest.len() > crate::tuning::OUTPUT_LINE_CAP {
            let mut cut = crate::tuning::OUTPUT_LINE_CAP;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            self.send(stream, rest[..cut].to_owned());
            rest = &rest[cut..];
        }
        self.send(stream, rest.to_owned());
    }

    /// The stream of a wire or helper index: 0 is stdout, anything else
    /// stderr.
    #[cfg_attr(
        not(any(feature = "pyo3", feature = "subprocess", feature = "rustpython")),
        allow(dead_code)
    )]
    pub fn stream_of(index: u64) -> OutputStream {
        if index == 0 {
            OutputStream::Stdout
        } else {
            OutputStream::Stderr
        }
    }
}

impl fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OutputSink")
    }
}

/// What a captured command wrote, as a backend answers it alongside the
/// command's own answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Written {
    pub stdout: String,
    pub stderr: String,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::tuning::OUTPUT_LINE_CAP;

    fn pieces_of(text: &str) -> Vec<String> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        let sink = OutputSink(Arc::new(move |line: OutputLine| {
            assert_eq!(line.stream, OutputStream::Stderr);
            kept.lock().unwrap().push(line.text);
        }));
        sink.send_line(OutputStream::Stderr, text);
        let pieces = got.lock().unwrap().clone();
        pieces
    }

    #[test]
    fn a_line_past_the_cap_goes_in_pieces_cut_between_characters() {
        assert_eq!(pieces_of(""), vec![String::new()]);
        assert_eq!(pieces_of("short"), vec!["short".to_owned()]);
        let exact = "x".repeat(OUTPUT_LINE_CAP);
        assert_eq!(pieces_of(&exact), vec![exact.clone()]);
        // 'é' is two bytes: one byte before the cap, a character would
        // straddle it, and the piece ends before it.
        let text = format!("{}é{}", "a".repeat(OUTPUT_LINE_CAP - 1), "b".repeat(10));
        let pieces = pieces_of(&text);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), OUTPUT_LINE_CAP - 1);
        assert_eq!(pieces.concat(), text);
        let long = "é".repeat(3 * OUTPUT_LINE_CAP);
        let pieces = pieces_of(&long);
        assert!(pieces.iter().all(|piece| piece.len() <= OUTPUT_LINE_CAP));
        assert_eq!(pieces.concat(), long);
    }
}
