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
#[allow(dead_code)] // until a backend sends output to it
pub(crate) struct OutputSink(pub Arc<dyn Fn(OutputLine) + Send + Sync>);

impl OutputSink {
    #[allow(dead_code)] // until a backend sends output to it
    pub fn send(&self, stream: OutputStream, text: String) {
        (self.0)(OutputLine { stream, text });
    }
}

impl fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OutputSink")
    }
}

/// What a captured command wrote, as a backend answers it alongside the
/// command's own answer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Written {
    pub stdout: String,
    pub stderr: String,
}
