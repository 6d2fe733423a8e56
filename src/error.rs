//! The one error type every command returns.

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong when a runner or pool carries out a command.
///
/// Variants name the phase that failed: the Python code itself (`Python`), the
/// clock (`Timeout`), the interpreter's process or thread (`WorkerDied`,
/// `Stopped`, `Startup`), the wire (`Protocol`), or the value table
/// (`Conversion`). A runner stays usable after every variant except `Stopped`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyRunnerError {
    /// Python raised an exception.
    Python {
        /// The exception's class name, e.g. `"ZeroDivisionError"`.
        kind: String,
        /// `str()` of the exception.
        message: String,
        /// The formatted traceback, where the backend has one.
        traceback: Option<String>,
    },
    /// The command ran past its limit.
    Timeout(Duration),
    /// The interpreter's process exited or was killed while the command ran.
    WorkerDied {
        /// Exit status or signal, and the last lines the child wrote to stderr.
        reason: String,
    },
    /// The runner was stopped, or every handle to it was dropped.
    Stopped,
    /// The interpreter could not be started: no interpreter, a bad venv, a
    /// failed handshake.
    Startup(String),
    /// A malformed or oversized frame on the wire.
    Protocol(String),
    /// A value that has no faithful form on the other side.
    Conversion(String),
    /// The backend cannot do this, e.g. `call_async_function` on RustPython.
    Unsupported(String),
}

impl PyRunnerError {
    #[cfg(any(feature = "pyo3", feature = "rustpython"))]
    /// Shorthand for a Python exception without a traceback.
    pub(crate) fn python(kind: impl Into<String>, message: impl Into<String>) -> Self {
        PyRunnerError::Python {
            kind: kind.into(),
            message: message.into(),
            traceback: None,
        }
    }
}

impl fmt::Display for PyRunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyRunnerError::Python { kind, message, .. } if message.is_empty() => {
                write!(f, "Python raised {kind}")
            }
            PyRunnerError::Python { kind, message, .. } => {
                write!(f, "Python raised {kind}: {message}")
            }
            PyRunnerError::Timeout(limit) => write!(f, "command ran past its limit of {limit:?}"),
            PyRunnerError::WorkerDied { reason } => write!(f, "Python worker died: {reason}"),
            PyRunnerError::Stopped => f.write_str("the runner is stopped"),
            PyRunnerError::Startup(why) => write!(f, "could not start Python: {why}"),
            PyRunnerError::Protocol(why) => write!(f, "protocol error: {why}"),
            PyRunnerError::Conversion(why) => write!(f, "value conversion failed: {why}"),
            PyRunnerError::Unsupported(why) => write!(f, "unsupported: {why}"),
        }
    }
}

impl std::error::Error for PyRunnerError {}
