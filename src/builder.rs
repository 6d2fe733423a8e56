//! Choosing a backend and configuring a runner before it starts.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::command::{user_limit, CommandQueue};
use crate::error::PyRunnerError;
use crate::runner::PyRunner;

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

/// Everything a backend needs to start; filled in by [`PyRunnerBuilder`].
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
    /// A pool's worker: when its first child must have said hello, the
    /// pool's one deadline for `build` (see `PyPoolBuilder::build`).
    #[cfg(feature = "subprocess")]
    pub first_start_by: Option<std::time::Instant>,
    /// Set for a pool's workers.
    #[cfg(feature = "subprocess")]
    pub pool_hooks: Option<crate::subprocess::PoolHooks>,
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
            #[cfg(feature = "subprocess")]
            first_start_by: None,
            #[cfg(feature = "subprocess")]
            pool_hooks: None,
        }
    }
}

/// How long a child may take from its start to its hello, by default.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The smallest `max_frame_length` taken: the child's hello names its
/// interpreter's path, which may be up to about 4 KiB long.
pub(crate) const MIN_FRAME_LIMIT: usize = 8 << 10;

impl RunnerConfig {
    /// Settings that could only fail later, or in a misleading way, are
    /// refused before anything starts.
    pub(crate) fn check(&self) -> Result<(), PyRunnerError> {
        if self.backend != Backend::Subprocess {
            return Ok(());
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

/// Configures and starts a [`PyRunner`]. Made by [`PyRunner::builder`].
///
/// ```
/// use std::time::Duration;
/// let runner = async_py::PyRunner::builder()
///     .pyo3()
///     .startup("import math")
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(runner.eval_sync("math.floor(2.5)")?, 2);
/// # Ok::<(), async_py::PyRunnerError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone, Default)]
pub struct PyRunnerBuilder {
    config: RunnerConfig,
}

impl PyRunnerBuilder {
    /// What was set so far.
    #[cfg(feature = "subprocess")]
    pub(crate) fn config(&self) -> &RunnerConfig {
        &self.config
    }

    pub(crate) fn new() -> Self {
        PyRunnerBuilder::default()
    }

    /// Makes the runner a pool's worker (see `subprocess::PoolHooks`).
    #[cfg(feature = "subprocess")]
    pub(crate) fn pool_hooks(mut self, hooks: crate::subprocess::PoolHooks) -> Self {
        self.config.pool_hooks = Some(hooks);
        self
    }

    /// Makes a pool's worker's first child say hello by `deadline`.
    #[cfg(feature = "subprocess")]
    pub(crate) fn first_start_by(mut self, deadline: std::time::Instant) -> Self {
        self.config.first_start_by = Some(deadline);
        self
    }

    /// CPython in this process (the default).
    pub fn pyo3(mut self) -> Self {
        self.config.backend = Backend::PyO3;
        self
    }

    /// A child interpreter, started from a venv's own `bin/python`.
    pub fn subprocess(mut self) -> Self {
        self.config.backend = Backend::Subprocess;
        self
    }

    /// RustPython in this process: no CPython at all (feature `rustpython`).
    pub fn rustpython(mut self) -> Self {
        self.config.backend = Backend::RustPython;
        self
    }

    /// Subprocess: run exactly this interpreter, as given, at every start of
    /// a child, even if it is a script: a wrapper's own set-up then runs for
    /// each child, as its author meant (a pyenv shim costs its shell and
    /// pyenv every time; name the interpreter itself to save that). An
    /// interpreter found instead (`$VIRTUAL_ENV`, `./.venv`, `python3` on
    /// `PATH`) that is a script is run once per process to ask which
    /// executable it runs, and children start that one.
    pub fn python(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.python = Some(path.into());
        self
    }

    /// Subprocess: run `dir/bin/python`. In-process backends: put the venv's
    /// site-packages on `sys.path` at start, as [`PyRunner::set_venv`] does.
    pub fn venv(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.venv = Some(dir.into());
        self
    }

    /// Code to run first, before any command (and again first in every fresh
    /// child, see [`replay`](Self::replay)). If it raises, `build` fails with
    /// [`PyRunnerError::Startup`].
    pub fn startup(mut self, code: impl Into<String>) -> Self {
        self.config.startup = Some(code.into());
        self
    }

    /// A limit for every command, counted from the moment it starts to run.
    /// `Duration::ZERO` times every command out without running it; a limit
    /// of over a century (`Duration::MAX`) is no limit.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.config.timeout = user_limit(limit);
        self
    }

    /// Subprocess: set an environment variable for the child. A name that
    /// is empty or holds `=` fails `build` with [`PyRunnerError::Startup`].
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.config.env.push((key.into(), value.into()));
        self
    }

    /// Subprocess: start the child with no inherited environment.
    pub fn env_clear(mut self) -> Self {
        self.config.env_clear = true;
        self.config.env.clear();
        self
    }

    /// Subprocess: the child's working folder.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.current_dir = Some(dir.into());
        self
    }

    /// Subprocess: whether a fresh child, started after a crash, a timeout or
    /// a broken stream, replays what the runner did (default `true`). It runs
    /// `startup`, then every `run`, `run_file` and `set_venv` that succeeded,
    /// in order, before the command that needed it, so the runner keeps its
    /// definitions (a pool does the same with its runs). Not replayed: a
    /// command that raised, one that killed its child or ran past its limit,
    /// and what calls and `eval` changed. A replayed command that fails is
    /// forgotten, and the command that needed the child gets
    /// [`PyRunnerError::Startup`] naming it; the next one runs. The
    /// remembered commands are kept for the runner's life.
    ///
    /// With `false` a fresh child runs only `startup`: globals, imports and
    /// `sys.path` changes of the dead child are gone.
    pub fn replay(mut self, replay: bool) -> Self {
        self.config.replay = replay;
        self
    }

    /// Subprocess: how long a child may take from its start until it says
    /// hello (default 30 s). Past it, `build` fails with
    /// [`PyRunnerError::Startup`] naming the limit; so does the command
    /// whose fresh child (after a crash or a timeout) is that late. It does
    /// not bound the `startup` code. A limit of over a century is no limit.
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.config.start_timeout = limit.min(crate::command::NO_LIMIT_PAST);
        self
    }

    /// Subprocess: the largest frame accepted from the child, in bytes
    /// (default 64 MiB, at least 8 KiB: less fails `build`). A larger reply is a `Protocol` error and the child
    /// is replaced; nothing of that size is allocated.
    pub fn max_frame_length(mut self, bytes: usize) -> Self {
        self.config.frame_limit = bytes;
        self
    }

    /// Starts the runner and waits until its interpreter is ready. Synchronous:
    /// needs no tokio runtime.
    pub fn build(self) -> Result<PyRunner, PyRunnerError> {
        let config = self.config;
        config.check()?;
        let queue = Arc::new(CommandQueue::new());
        match config.backend {
            #[cfg(feature = "pyo3")]
            Backend::PyO3 => crate::pyo3_backend::spawn(&config, queue.clone())?,
            #[cfg(feature = "subprocess")]
            Backend::Subprocess => crate::subprocess::spawn(&config, queue.clone())?,
            #[cfg(feature = "rustpython")]
            Backend::RustPython => crate::rustpython_backend::spawn(&config, queue.clone())?,
            #[allow(unreachable_patterns)] // every backend compiled in
            other => {
                return Err(PyRunnerError::Unsupported(format!(
                    "the {other:?} backend is not compiled in: enable the `{}` feature of async_py",
                    other.feature()
                )))
            }
        }
        Ok(PyRunner::from_parts(queue, config.backend, config.timeout))
    }
}
