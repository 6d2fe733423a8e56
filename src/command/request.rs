//! A command as it travels to a backend, and the limits and paths it carries.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{ReplySlot, Responder};
use crate::call::Packed;
use crate::error::PyRunnerError;
use crate::value::checked_args;

/// Limits longer than this (about a century) are no limit: every deadline
/// is the clock plus a limit plus a little slack, and a user's
/// `Duration::MAX` must not overflow that sum anywhere.
pub(crate) const NO_LIMIT_PAST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A limit as a user gave it, as the crate keeps it: `None` for no limit.
pub(crate) fn user_limit(limit: Duration) -> Option<Duration> {
    (limit <= NO_LIMIT_PAST).then_some(limit)
}

/// A path as the Python side takes it (`run_file`, `set_venv`): its text,
/// or, for one that is not UTF-8, its bytes, which the helpers decode as
/// `os.fsdecode` does so that the os functions find the same file.
pub(crate) enum PathArg<'a> {
    Text(&'a str),
    Bytes(std::borrow::Cow<'a, [u8]>),
}

pub(crate) fn path_arg(path: &std::path::Path) -> PathArg<'_> {
    if let Some(text) = path.to_str() {
        return PathArg::Text(text);
    }
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        std::borrow::Cow::Borrowed(path.as_os_str().as_bytes())
    };
    // Elsewhere a path that is not Unicode has no bytes of its own to pass.
    #[cfg(not(unix))]
    let bytes = std::borrow::Cow::Owned(path.to_string_lossy().into_owned().into_bytes());
    PathArg::Bytes(bytes)
}

/// One command, as every backend receives it.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    Run {
        code: String,
    },
    RunFile {
        path: PathBuf,
    },
    Eval {
        expr: String,
    },
    ReadVariable {
        name: String,
    },
    CallFunction {
        name: String,
        args: Vec<Value>,
    },
    #[cfg_attr(not(any(feature = "pyo3", feature = "subprocess")), allow(dead_code))]
    CallAsyncFunction {
        name: String,
        args: Vec<Value>,
    },
    SetVenv {
        dir: PathBuf,
    },
    /// `run` whose output is captured (`exec(code).capture_output()`):
    /// remembered and replayed as a `Run` is; answered with
    /// `Answer::Captured`.
    RunCaptured {
        code: String,
    },
    /// A call made with the call builder (`PyRunner::call`).
    /// Not boxed: an allocation is a good part of a fast call's cost.
    Invoke(Invoke),
    /// The consumer of a stream's feed took items or dropped the stream:
    /// the backend that opened it looks at the feed again (makes more
    /// items, or closes the generator). Answered by no one.
    Stream(std::sync::Arc<crate::call::Feed>),
    /// The caller of the command answered in this slot dropped its future:
    /// a coroutine it started is cancelled. Sent by the drop, answered by
    /// no one.
    Cancel(
        #[cfg_attr(not(any(feature = "pyo3", feature = "subprocess")), allow(dead_code))]
        CancelTarget,
    ),
    Stop,
    /// A host function a child called returned: the supervisor sends its
    /// reply to the child; `token` names the call. Answered by no one. (The
    /// in-process backends hand an async host function's result to the
    /// loop that awaits it directly, and never queue this.)
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    HostDone {
        token: u64,
        result: crate::host::HostResult,
    },
    /// A pool's `run`: entry `index` of its replay log (see `pool::replay`).
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    Broadcast {
        code: String,
        index: usize,
    },
}

impl Request {
    /// `eval(expr)`, as a runner or a pool sends it.
    pub fn eval(expr: &str) -> Request {
        Request::Eval {
            expr: expr.to_owned(),
        }
    }

    /// `call_function(name, args)`; arguments nested too deeply are
    /// refused here (see [`checked_args`]).
    pub fn call(name: &str, args: Vec<Value>) -> Result<Request, PyRunnerError> {
        Ok(Request::CallFunction {
            name: name.to_owned(),
            args: checked_args(args)?,
        })
    }

    /// `call_async_function(name, args)`, checked as [`Request::call`].
    pub fn call_async(name: &str, args: Vec<Value>) -> Result<Request, PyRunnerError> {
        Ok(Request::CallAsyncFunction {
            name: name.to_owned(),
            args: checked_args(args)?,
        })
    }
}

/// A call of the call builder: arguments packed on the caller's thread,
/// and how its result is read.
#[derive(Debug, Clone)]
pub(crate) struct Invoke {
    pub name: String,
    pub args: Packed,
    pub kwargs: Packed,
    pub returns: Returns,
    /// `.stream()`: the result is iterated, its items go to this feed, and
    /// the call's answer (`Value(Null)`) only says the stream is open.
    pub stream: Option<std::sync::Arc<crate::call::Feed>>,
    /// `.capture_output()`: answered with `Answer::Captured`.
    pub capture: bool,
}

/// How a call's result is read.
#[derive(Clone, Copy)]
pub(crate) enum Returns {
    /// By the value table, into a `Value` (bytes become arrays of numbers).
    Value,
    /// Into a serde type, bytes kept as bytes; the in-process backends read
    /// it with these.
    Typed(Readers),
}

impl std::fmt::Debug for Returns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Returns::Value => "Value",
            Returns::Typed(_) => "Typed",
        })
    }
}

/// Readers of one serde type from a Python object, one per in-process
/// backend, with the type erased (`Box<dyn Any + Send>` holds it).
#[derive(Clone, Copy)]
pub(crate) struct Readers {
    #[cfg(feature = "pyo3")]
    pub pyo3: crate::pyo3_backend::ReadTyped,
    #[cfg(feature = "rustpython")]
    pub rustpython: crate::rustpython_backend::ReadTyped,
}

impl Readers {
    // A subprocess-only build reads typed results in the caller instead.
    #[cfg_attr(
        not(any(feature = "pyo3", feature = "rustpython")),
        allow(clippy::extra_unused_type_parameters)
    )]
    pub fn of<T: serde::de::DeserializeOwned + Send + 'static>() -> Readers {
        Readers {
            #[cfg(feature = "pyo3")]
            pyo3: crate::pyo3_backend::read_typed::<T>,
            #[cfg(feature = "rustpython")]
            rustpython: crate::rustpython_backend::read_typed::<T>,
        }
    }
}

/// The reply slot of a command whose caller gave up (see [`Request::Cancel`]).
#[derive(Clone)]
pub(crate) struct CancelTarget(
    #[cfg_attr(not(any(feature = "pyo3", feature = "subprocess")), allow(dead_code))]
    pub  std::sync::Arc<ReplySlot>,
);

impl std::fmt::Debug for CancelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelTarget")
    }
}

#[cfg(any(feature = "pyo3", feature = "subprocess"))]
impl CancelTarget {
    /// Whether `reply` answers the command this cancel is for.
    pub fn is_for(&self, reply: &Responder) -> bool {
        std::sync::Arc::ptr_eq(&self.0, reply.slot())
    }
}

/// A request with the slot its reply goes to.
pub(crate) struct Job {
    pub request: Request,
    pub reply: Responder,
    /// The limit for this command, counted from the moment it starts to run.
    pub timeout: Option<Duration>,
    /// What its sender attached to follow it wherever it goes (a pool
    /// counts a call against the worker that holds it this way); dropped
    /// with the job, once it is answered.
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub follow: Option<Follow>,
    /// Sent by a host function to the runner that waits for it (see
    /// `host::nest`): a child serves it while it waits.
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub nested: bool,
}

/// See [`Job::follow`].
pub(crate) type Follow = std::sync::Arc<dyn std::any::Any + Send + Sync>;

impl Job {
    /// A job whose answer nobody waits for: a stream's signal to the
    /// backend that opened it (see [`Request::Stream`]).
    pub fn unanswered(request: Request) -> Job {
        Job {
            request,
            reply: Responder(std::sync::Arc::new(ReplySlot::default())),
            timeout: None,
            follow: None,
            nested: false,
        }
    }
}
