//! Choosing a backend and configuring a runner before it starts.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::command::{user_limit, CommandQueue};
use crate::config::{Backend, RunnerConfig};
use crate::error::PyRunnerError;
use crate::runner::PyRunner;

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

    /// Hands every line Python writes to stdout or stderr, outside a
    /// command whose output is captured, to `f` instead of the terminal
    /// (see [`OutputLine`](crate::OutputLine) for what goes where, and in
    /// which order). `f` runs on a thread of the runner's:
    /// it should return quickly, and must not wait for this runner's commands.
    pub fn on_output(mut self, f: impl Fn(crate::OutputLine) + Send + Sync + 'static) -> Self {
        self.config.output = Some(crate::output::OutputSink(Arc::new(f)));
        self
    }

    /// Gives Python a sync Rust function to call as
    /// `import async_py; async_py.host.NAME(*args, **kwargs)` (see
    /// [`HostCall`](crate::HostCall) for what `f` is given). `Ok` is
    /// returned to Python by the value table; `Err(message)`, and a panic
    /// of `f`, raise `async_py.HostError(message)`. `f` runs on the thread
    /// that runs the calling Python (the runner's own thread in-process; a
    /// thread of the runner's supervisor for a child): Python waits while
    /// it runs, so it should not block for long. It may send commands to
    /// the runner that called it ([`HostCall::runner`](crate::HostCall::runner));
    /// they run before it returns, under the calling command's limit and
    /// their own. One past its own limit is stopped alone (`f` hears
    /// [`PyRunnerError::Timeout`] and the calling command goes on; on the
    /// subprocess backend without its reply ring, where the child cannot
    /// tell which command a signal is for, the child is replaced and the
    /// calling command fails too). Commands that need what the runner
    /// serves only between commands are refused, with
    /// [`PyRunnerError::Unsupported`] or an error, rather than left
    /// waiting: a stream on every backend, and on the subprocess backend
    /// also a coroutine, a call whose result must be awaited, and `stop`.
    ///
    /// A name that Python cannot write after `async_py.host.` (not an
    /// identifier, a keyword, or starting with `_`), or one given twice,
    /// fails `build` with [`PyRunnerError::Startup`].
    ///
    /// # Caveats
    /// - A nested command runs within the limit of the command that called
    ///   the host function (its own limit is not kept apart); past that
    ///   limit, nested commands fail. One that needs the runner's loop or
    ///   stream machinery (a coroutine, an awaitable result, a stream) or
    ///   `stop` is `Unsupported` there.
    /// - Only the runner that called is served this way. A host function of
    ///   runner A that waits for runner B, whose Python calls a host
    ///   function that waits for A, waits forever; so does one whose
    ///   commands are sent from another thread it waits for.
    /// - In-process, a thread that Python starts itself (`threading.Thread`,
    ///   `loop.run_in_executor`) does not see the runner's `async_py.host`
    ///   unless handed it (`asyncio.to_thread` does see it). A sync host
    ///   function called from a coroutine holds the runner's loop while it
    ///   runs: that coroutine's `Timeout` comes when it returns.
    /// - Through a child, an async host function awaited on a loop of the
    ///   command's own (`asyncio.run` inside it) is waited for as a sync one
    ///   is, and commands its future sends to the runner wait for that
    ///   command: they run once it ends, or at its limit.
    /// - A handle from [`HostCall::runner`](crate::HostCall::runner) kept
    ///   by a pending async host function keeps its runner alive until the
    ///   function ends.
    pub fn host_function(
        mut self,
        name: impl Into<String>,
        f: impl Fn(crate::HostCall) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        crate::host::HostSetup::register(&mut self.config.host, |table| {
            table.add_sync(name.into(), f)
        });
        self
    }

    /// Gives Python an async Rust function: `async_py.host.NAME` is a
    /// coroutine function, awaited on the runner's event loop while other
    /// coroutines go on. The future runs on a tokio runtime of async_py's
    /// own (so it runs whether or not the caller has a runtime); when the
    /// command that awaits it is cancelled or times out, the future is
    /// dropped. Otherwise as [`host_function`](Self::host_function).
    ///
    /// The RustPython backend runs no event loop of the runner's: there it
    /// is awaited by a loop the command's own code runs
    /// (`asyncio.run(...)`), and the commands the future sends to its
    /// runner are run by that loop while it waits.
    pub fn host_async_function<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(crate::HostCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
    {
        crate::host::HostSetup::register(&mut self.config.host, |table| {
            table.add_async(name.into(), f)
        });
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

    /// Subprocess: the most memory the child may take, in bytes. Past it an
    /// allocation fails inside Python with `MemoryError`, which user code
    /// may catch; the child lives on and serves the next command.
    ///
    /// It is the kernel's own limit on a process's private memory
    /// (`RLIMIT_DATA`: the heap and private writable mappings, thread
    /// stacks included; not the interpreter's code and shared libraries,
    /// nor memory reserved but never made writable), set for the child
    /// before it runs anything, soft and hard alike, so its code cannot
    /// raise it. Every child of the runner has it: the first, and each
    /// that replaces a lost one; the processes a child starts inherit it,
    /// each on its own account. Interpreter start-up takes some of it: a
    /// limit of a few MiB fails `build` with [`PyRunnerError::Startup`].
    ///
    /// # Caveats
    /// A C extension that does not check for a failed allocation may crash
    /// its child instead: the command is answered
    /// [`PyRunnerError::WorkerDied`] and a fresh child takes over, as after
    /// any crash. The limit is enforced on Linux (4.7 and later); where the
    /// kernel does not count `mmap` against `RLIMIT_DATA`, large allocations
    /// escape it.
    ///
    /// On the PyO3 and RustPython backends, which run in this process,
    /// `build` returns [`PyRunnerError::Unsupported`].
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.config.memory_limit = Some(bytes);
        self
    }

    /// Subprocess: starts the child through `prefix`, a command that gives
    /// a Python elsewhere with stdin and stdout: `["ssh", "-T", "host"]`,
    /// `["docker", "exec", "-i", "box"]`, `["kubectl", "exec", "-i", "pod",
    /// "--"]`, `["uv", "run", "--no-project", "--with", "numpy"]`. The child
    /// runs `prefix... python -u -c <loader>`, with no shell of this
    /// process's in between; [`python`](Self::python) names the far side's
    /// interpreter (default `python3`). Only stdin and stdout cross: the
    /// worker's source, and the variables [`env`](Self::env) sets, are
    /// sent over stdin after the start, so the far side needs a Python 3.8
    /// or later and nothing else. For ssh the rest of the line is quoted
    /// for the far side's shell, which ssh joins its arguments into.
    ///
    /// A launcher's child has no reply ring and is never forked by a pool's
    /// zygote. No signal crosses the link: the worker interrupts a command
    /// past its limit itself (its `finally` blocks run), ends its own
    /// process group if it does not stop, and ends it too when its stdin
    /// closes, whatever it was running; a fresh child replays what the
    /// runner ran, as after any death. Heartbeats watch the link (see
    /// [`heartbeat`](Self::heartbeat)).
    ///
    /// # Caveats
    /// `venv`, `memory_limit`, `sandbox` and `current_dir` are the far
    /// side's to give: with a launcher they are
    /// [`PyRunnerError::Unsupported`]. Variables set with `env` reach the
    /// worker once its interpreter runs, so those the interpreter reads at
    /// its start (`PYTHONPATH`, `PYTHONHASHSEED`) do not act; put them in
    /// the prefix (`["ssh", "-T", "host", "PYTHONPATH=/x"]`, `["env",
    /// "PYTHONPATH=/x"]`). A prefix is taken to join its arguments into a
    /// shell line, and gets them quoted, when its program is `autossh` or
    /// one of its words is `ssh` (`sshpass -e ssh host` too); another
    /// launcher that does so needs its own `sh -c` quoting. A pool's
    /// `max_memory_per_worker` measures a local process, so it never
    /// recycles a launched worker.
    pub fn launcher<S: Into<std::ffi::OsString>>(
        mut self,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        self.config.launcher = Some(prefix.into_iter().map(Into::into).collect());
        self
    }

    /// Subprocess, with a [`launcher`](Self::launcher): how long the link may
    /// be quiet before either side sends a heartbeat (default 10 s). It
    /// keeps an idle link open, and a link silent for three heartbeats is
    /// dead (thirty while a command runs: the child beats from a thread,
    /// which a C call holding the GIL holds up too): the command in flight
    /// fails with [`PyRunnerError::WorkerDied`] and a fresh child is
    /// started, as after any death. Taken between 10 ms and a day.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.config.heartbeat =
            interval.clamp(Duration::from_millis(10), Duration::from_secs(24 * 3600));
        self
    }

    /// Subprocess: runs the child in a [`Sandbox`](crate::Sandbox), for code
    /// you do not trust. Every child of the runner enters it before any
    /// user code runs, the replacement of a lost one too; `startup` code
    /// runs inside it. The child's environment is cleared: only what
    /// [`env`](Self::env) sets is there, with `TMPDIR` and `HOME` its
    /// scratch folder unless `env` sets them. The scratch folder is its
    /// working folder ([`current_dir`](Self::current_dir) only decides
    /// where `./.venv` is looked for). The interpreter is resolved first
    /// (a bare name on `PATH`, a version manager's shim to the executable
    /// it runs), as a cleared environment could not find it.
    ///
    /// `build` fails with [`PyRunnerError::Startup`] naming what is missing
    /// if this kernel or this process cannot give a rule; on the PyO3 and
    /// RustPython backends it returns [`PyRunnerError::Unsupported`].
    pub fn sandbox(mut self, sandbox: crate::Sandbox) -> Self {
        self.config.sandbox = Some(sandbox);
        self
    }

    /// Starts the runner and waits until its interpreter is ready. Synchronous:
    /// needs no tokio runtime.
    pub fn build(self) -> Result<PyRunner, PyRunnerError> {
        let mut config = self.config;
        config.check()?;
        // Each runner built is linked to its own host functions' runner.
        config.host = config.host.as_ref().map(|host| host.for_another_runner());
        let queue = Arc::new(CommandQueue::new());
        // The handle exists, and its host functions know it, before the
        // backend starts: startup code may call a host function that sends
        // commands to its runner. Dropped on a failed start, it closes the
        // queue.
        let runner = PyRunner::from_parts(queue.clone(), config.backend, config.timeout);
        if let Some(host) = &config.host {
            host.link.set(&runner);
        }
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
        Ok(runner)
    }
}
