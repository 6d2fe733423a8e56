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
/// longer than the cap (see the crate docs, "Output") arrives in pieces,
/// each but the last ending where it was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Where Python wrote it.
    pub stream: OutputStream,
    /// The line, without its `\n`.
    pub text: String,
}

/// A command's result with what its Python code wrote while it ran, made
/// by `.capture_output()` on a call or an exec.
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
    #[cfg_attr(
        not(any(feature = "pyo3", feature = "subprocess", feature = "rustpython")),
        allow(dead_code)
    )]
    pub fn send(&self, stream: OutputStream, text: String) {
        (self.0)(OutputLine { stream, text });
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
