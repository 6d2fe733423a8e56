//! What every backend is started from: a leaf, so that no backend depends on
//! the builder that fills it in.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::PyRunnerError;

/// Frames over this many bytes are a `Protocol` error unless configured otherwise.
pub(crate) const DEFAULT_FRAME_LIMIT: usize = 64 << 20;

/// Where a runner's Python runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// CPython in this process, on one dedicated thread (feature `pyo3`).
    PyO3,
    /// A child interpreter driven over stdio (feature `subprocess`).
    Subprocess,
    /// RustPython in this process (feature `rustpython`).
    RustPython,
}

impl Backend {
    /// The Cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::PyO3 => "pyo3",
            Backend::Subprocess => "subprocess",
            Backend::RustPython => "rustpython",
        }
    }
}

/// Everything a backend needs to start; filled in by `PyRunnerBuilder`
/// (and `PyPoolBuilder`, for its workers).
#[derive(Debug, Clone)]
pub(crate) struct RunnerConfig {
    pub backend: Backend,
    pub python: Option<PathBuf>,
    pub venv: Option<PathBuf>,
    pub startup: Option<String>,
    pub timeout: Option<Duration>,
    pub env: Vec<(OsString, OsString)>,
    pub env_clear: bool,
    pub current_dir: Option<PathBuf>,
    pub frame_limit: usize,
    /// A fresh child replays the runner's `run`, `run_file` and `set_venv`.
    pub replay: bool,
    /// How long a child may take from its start to its hello.
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub start_timeout: Duration,
    /// Where Python's uncaptured output goes instead of the terminal.
    #[cfg_attr(
        not(any(feature = "pyo3", feature = "subprocess", feature = "rustpython")),
        allow(dead_code)
    )]
    pub output: Option<crate::output::OutputSink>,
    /// Host functions, and the runner they are given (see `crate::host`).
    /// A builder's link is replaced by a fresh one for each runner built.
    pub host: Option<crate::host::HostSetup>,
    /// Subprocess: the most private memory a child may map, in bytes
    /// (`RLIMIT_DATA`, set before it runs anything).
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub memory_limit: Option<u64>,
    /// Subprocess: the command the child is started through (`ssh -T host`,
    /// `docker exec -i box`, `uv run ...`), `python` then naming the far
    /// side's interpreter.
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub launcher: Option<Vec<OsString>>,
    /// Subprocess, with a launcher: how long a link may be quiet before
    /// either side sends a heartbeat; one silent for three of these is
    /// dead.
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub heartbeat: Duration,
    /// Subprocess: what the child may do (see `crate::Sandbox`).
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub sandbox: Option<crate::sandbox::Sandbox>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            backend: Backend::PyO3,
            python: None,
            venv: None,
            startup: None,
            timeout: None,
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            frame_limit: DEFAULT_FRAME_LIMIT,
            replay: true,
            start_timeout: DEFAULT_START_TIMEOUT,
            output: None,
            host: None,
            memory_limit: None,
            launcher: None,
            heartbeat: DEFAULT_HEARTBEAT,
            sandbox: None,
        }
    }
}

/// A launched child's heartbeat interval, by default: well inside the idle
/// limits of the links it runs over (kubernetes drops an exec session idle
/// for about 5 minutes, many NATs and proxies a TCP flow idle for 1 to 5).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How long a child may take from its start to its hello, by default.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The smallest `max_frame_length` taken: the child's hello names its
/// interpreter's path, which may be up to about 4 KiB long.
pub(crate) const MIN_FRAME_LIMIT: usize = 8 << 10;

impl RunnerConfig {
    /// Settings that could only fail later, or in a misleading way, are
    /// refused before anything starts.
    pub(crate) fn check(&self) -> Result<(), PyRunnerError> {
        if let Some(host) = &self.host {
            host.table.check()?;
        }
        if self.backend != Backend::Subprocess {
            if self.memory_limit.is_some() {
                return Err(PyRunnerError::Unsupported(format!(
                    "memory_limit needs the Subprocess backend: the {:?} backend runs in \
                     this process, whose memory cannot be limited apart",
                    self.backend
                )));
            }
            if self.launcher.is_some() {
                return Err(PyRunnerError::Unsupported(format!(
                    "launcher needs the Subprocess backend: the {:?} backend runs Python in \
                     this process",
                    self.backend
                )));
            }
            if self.sandbox.is_some() {
                return Err(PyRunnerError::Unsupported(format!(
                    "sandbox needs the Subprocess backend: the {:?} backend runs Python in \
                     this process, which no sandbox can hold apart from it",
                    self.backend
                )));
            }
            return Ok(());
        }
        if let Some(prefix) = &self.launcher {
            if prefix.is_empty() || prefix[0].is_empty() {
                return Err(PyRunnerError::Startup(
                    "launcher: the prefix needs a program to run (say [\"ssh\", \"-T\", \"host\"])"
                        .into(),
                ));
            }
            let what = if self.sandbox.is_some() {
                Some("sandbox: the rules are the far side's to apply, where the worker runs")
            } else if self.memory_limit.is_some() {
                Some("memory_limit: a limit here would bind the launcher, not the far side's worker; use the far side's own limits")
            } else if self.current_dir.is_some() {
                Some("current_dir: the folder is on the far side; put a `cd` or `env -C` in the prefix")
            } else if self.venv.is_some() {
                Some("venv: the folder is on the far side; name its interpreter with python(\"/path/to/venv/bin/python\")")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(PyRunnerError::Unsupported(format!(
                    "{what} (with launcher {:?})",
                    prefix
                )));
            }
        }
        for (key, value) in &self.env {
            let key_bytes = key.as_encoded_bytes();
            if key_bytes.is_empty() {
                return Err(PyRunnerError::Startup(
                    "env: a variable needs a name, and \"\" was given".into(),
                ));
            }
            if key_bytes.contains(&b'=') || key_bytes.contains(&0) {
                return Err(PyRunnerError::Startup(format!(
                    "env: the variable name {key:?} holds '=' or a NUL byte, which no name may"
                )));
            }
            if value.as_encoded_bytes().contains(&0) {
                return Err(PyRunnerError::Startup(format!(
                    "env: the value of {key:?} holds a NUL byte"
                )));
            }
        }
        if self.frame_limit < MIN_FRAME_LIMIT {
            return Err(PyRunnerError::Startup(format!(
                "max_frame_length of {} bytes is below the least a child needs ({MIN_FRAME_LIMIT} bytes)",
                self.frame_limit
            )));
        }
        if let Some(dir) = &self.current_dir {
            if !dir.is_dir() {
                return Err(PyRunnerError::Startup(format!(
                    "current_dir {} is not a folder that exists",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}
