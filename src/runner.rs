//! The handle: [`PyRunner`] and its commands.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::builder::PyRunnerBuilder;
use crate::call::{Call, Exec};
use crate::command::{block_on, user_limit, value_of, CommandQueue, Reply, Request, Submission};
use crate::config::Backend;
use crate::error::PyRunnerError;

/// A handle to one Python interpreter context: its own globals, its own
/// thread or child process, its own event loop.
///
/// Cheap to clone (an `Arc`), `Send + Sync`. Commands from every clone run
/// one at a time, in the order they were sent. Each command has an async form
/// and a blocking `_sync` twin; the twins need no runtime and are safe inside
/// one (they block the calling thread, not a runtime).
///
/// # Caveats
/// - A command is sent when its future is first polled. Dropping the future
///   before it runs takes it out of the queue; dropping it while it runs lets
///   it finish and discards the result, except a coroutine (of
///   `call_async_function`, or a [`call`](Self::call) whose function returned
///   one), which is cancelled: it gets `CancelledError` at its await point.
/// - Dropping the last handle ends the runner: queued commands are answered
///   with [`PyRunnerError::Stopped`], pending coroutines are cancelled, the
///   thread exits. It does not wait for a command that is running now. On
///   the subprocess backend the drop blocks until the child has ended (one
///   still running a command is killed after a 500 ms grace) and all it
///   wrote to stderr has been forwarded, as `stop()` does: a program may
///   exit right after it without losing the child's last lines.
#[derive(Clone)]
pub struct PyRunner {
    shared: Arc<Shared>,
    timeout: Option<Duration>,
}

/// See [`PyRunner::downgrade`].
#[derive(Clone)]
pub(crate) struct WeakRunner {
    shared: std::sync::Weak<Shared>,
    timeout: Option<Duration>,
    backend: Backend,
}

impl WeakRunner {
    /// The runner, or one whose commands return `Stopped` if it is gone.
    pub fn upgrade(&self) -> PyRunner {
        match self.shared.upgrade() {
            Some(shared) => PyRunner {
                shared,
                timeout: self.timeout,
            },
            None => PyRunner::gone(self.backend),
        }
    }
}

struct Shared {
    queue: Arc<CommandQueue>,
    backend: Backend,
    /// Set when [`PyRunner::new`] could not start Python: every command returns it.
    failed: Option<PyRunnerError>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.queue.close());
        self.queue.wait_for_end();
    }
}

impl std::fmt::Debug for PyRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRunner")
            .field("backend", &self.shared.backend)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for PyRunner {
    fn default() -> Self {
        PyRunner::new()
    }
}

impl PyRunner {
    /// A runner on the in-process CPython backend.
    ///
    /// This never panics: if Python cannot start, every command of the
    /// returned runner gives the [`PyRunnerError::Startup`] error. Use
    /// [`PyRunner::builder`] to get that error from `build()` instead.
    pub fn new() -> PyRunner {
        PyRunner::builder().build().unwrap_or_else(|err| {
            let queue = Arc::new(CommandQueue::new());
            drop(queue.close());
            PyRunner {
                shared: Arc::new(Shared {
                    queue,
                    backend: Backend::PyO3,
                    failed: Some(err),
                }),
                timeout: None,
            }
        })
    }

    /// Configures a runner: backend, interpreter, venv, startup code, limits.
    pub fn builder() -> PyRunnerBuilder {
        PyRunnerBuilder::new()
    }

    pub(crate) fn from_parts(
        queue: Arc<CommandQueue>,
        backend: Backend,
        timeout: Option<Duration>,
    ) -> PyRunner {
        PyRunner {
            shared: Arc::new(Shared {
                queue,
                backend,
                failed: None,
            }),
            timeout,
        }
    }

    /// A handle that does not keep the runner alive (see `host::RunnerLink`).
    pub(crate) fn downgrade(&self) -> WeakRunner {
        WeakRunner {
            shared: Arc::downgrade(&self.shared),
            timeout: self.timeout,
            backend: self.shared.backend,
        }
    }

    /// A handle whose commands all return `Stopped`: a host function's
    /// runner once every handle of it is gone.
    pub(crate) fn gone(backend: Backend) -> PyRunner {
        let queue = Arc::new(CommandQueue::new());
        drop(queue.close());
        PyRunner {
            shared: Arc::new(Shared {
                queue,
                backend,
                failed: Some(PyRunnerError::Stopped),
            }),
            timeout: None,
        }
    }

    /// A handle to the same runner whose commands have this limit (see
    /// [`PyRunnerBuilder::timeout`]; `stop` is never limited). Cannot fail.
    pub fn with_timeout(mut self, limit: Duration) -> PyRunner {
        self.timeout = user_limit(limit);
        self
    }

    /// Which backend this runner uses. Cannot fail.
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// The queue every clone sends to.
    #[cfg(feature = "subprocess")]
    pub(crate) fn queue(&self) -> &Arc<CommandQueue> {
        &self.shared.queue
    }

    pub(crate) async fn send(&self, request: Request) -> Reply {
        self.send_limited(request, self.timeout).await
    }

    /// [`send`](Self::send) with this limit instead of the handle's.
    pub(crate) async fn send_limited(&self, request: Request, limit: Option<Duration>) -> Reply {
        self.submission(request, limit)?.await
    }

    /// The future that sends `request` with this limit, unpolled.
    pub(crate) fn submission(
        &self,
        request: Request,
        limit: Option<Duration>,
    ) -> Result<Submission, PyRunnerError> {
        if let Some(err) = &self.shared.failed {
            return Err(err.clone());
        }
        Ok(Submission::new(self.shared.queue.clone(), request, limit))
    }

    /// The limit of this handle's commands.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.timeout
    }

    /// [`send`](Self::send), with `follow` attached to the job (see
    /// `Job::follow`).
    #[cfg(feature = "subprocess")]
    pub(crate) async fn send_following(
        &self,
        request: Request,
        limit: Option<Duration>,
        follow: crate::command::Follow,
    ) -> Reply {
        if let Some(err) = &self.shared.failed {
            return Err(err.clone());
        }
        Submission::following(self.shared.queue.clone(), request, limit, follow).await
    }

    /// Queues the request at once (see [`Submission::queued`]); the reply
    /// comes through the returned future.
    #[cfg(feature = "subprocess")]
    pub(crate) fn queue_now(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Reply> + Send + 'static {
        let queued = match &self.shared.failed {
            Some(err) => Err(err.clone()),
            None => Ok(Submission::queued(
                self.shared.queue.clone(),
                request,
                self.timeout,
            )),
        };
        async move { queued?.await }
    }

    /// Runs Python statements in the runner's globals.
    pub async fn run(&self, code: &str) -> Result<(), PyRunnerError> {
        self.send(Request::Run {
            code: code.to_owned(),
        })
        .await
        .map(drop)
    }

    /// `run` with options: a per-command limit (`.timeout(d)`), finished by
    /// `.await` or the blocking `.wait()`.
    ///
    /// ```no_run
    /// # async fn demo(runner: async_py::PyRunner) -> Result<(), async_py::PyRunnerError> {
    /// use std::time::Duration;
    /// runner.exec("import json").timeout(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub fn exec(&self, code: &str) -> Exec<'_> {
        Exec::new(self, code)
    }

    /// Starts a call of the function `name` (dotted, as in
    /// [`call_function`](Self::call_function)): arguments of any serde
    /// type, keyword arguments, a limit for this call and a typed result.
    /// See [`Call`].
    pub fn call(&self, name: &str) -> Call<'_> {
        Call::on_runner(self, name)
    }

    /// Runs a Python file in the runner's globals, with the file's folder
    /// first on `sys.path`.
    pub async fn run_file(&self, path: impl AsRef<Path>) -> Result<(), PyRunnerError> {
        let path = path.as_ref().to_path_buf();
        self.send(Request::RunFile { path }).await.map(drop)
    }

    /// Evaluates one expression and returns its value.
    pub async fn eval(&self, expr: &str) -> Result<Value, PyRunnerError> {
        value_of(self.send(Request::eval(expr)).await)
    }

    /// Reads a global, or an attribute path below one (`"config.db.port"`).
    pub async fn read_variable(&self, name: &str) -> Result<Value, PyRunnerError> {
        value_of(
            self.send(Request::ReadVariable {
                name: name.to_owned(),
            })
            .await,
        )
    }

    /// Calls a function by (dotted) name. An `async def` function returns its
    /// coroutine unawaited, turned into a string; use
    /// [`call_async_function`](Self::call_async_function) for those.
    pub async fn call_function(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        value_of(self.send(Request::call(name, args)?).await)
    }

    /// Calls a function and awaits the coroutine it returns on the runner's
    /// event loop. Calls overlap at their await points. A function that
    /// returns something that is not awaitable has its result returned as is.
    pub async fn call_async_function(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        value_of(self.send(Request::call_async(name, args)?).await)
    }

    /// Puts a venv's site-packages, and the paths its `.pth` files name, first
    /// on `sys.path`. It does not change the interpreter.
    pub async fn set_venv(&self, dir: impl AsRef<Path>) -> Result<(), PyRunnerError> {
        let dir = dir.as_ref().to_path_buf();
        self.send(Request::SetVenv { dir }).await.map(drop)
    }

    /// Ends the runner once the commands sent before it have run. Later
    /// commands give [`PyRunnerError::Stopped`]; stopping again is `Ok`.
    ///
    /// A child that does not answer the stop within 500 ms of getting to
    /// it (stopped by a signal, wedged in C code, not reading its input) is
    /// killed with its process group; either way `stop` returns `Ok` once
    /// the child is reaped.
    pub async fn stop(&self) -> Result<(), PyRunnerError> {
        // A runner that never started has nothing to stop.
        if self.shared.failed.is_some() {
            return Ok(());
        }
        // Not bounded by the handle's limit: a stop always ends the runner,
        // and the backend takes care that it does so in bounded time.
        let stopping = Submission::new(self.shared.queue.clone(), Request::Stop, None);
        match stopping.await {
            Ok(_) | Err(PyRunnerError::Stopped) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Blocking twin of [`run`](Self::run).
    pub fn run_sync(&self, code: &str) -> Result<(), PyRunnerError> {
        block_on(self.run(code))
    }

    /// Blocking twin of [`run_file`](Self::run_file).
    pub fn run_file_sync(&self, path: impl AsRef<Path>) -> Result<(), PyRunnerError> {
        block_on(self.run_file(path))
    }

    /// Blocking twin of [`eval`](Self::eval).
    pub fn eval_sync(&self, expr: &str) -> Result<Value, PyRunnerError> {
        block_on(self.eval(expr))
    }

    /// Blocking twin of [`read_variable`](Self::read_variable).
    pub fn read_variable_sync(&self, name: &str) -> Result<Value, PyRunnerError> {
        block_on(self.read_variable(name))
    }

    /// Blocking twin of [`call_function`](Self::call_function).
    pub fn call_function_sync(&self, name: &str, args: Vec<Value>) -> Result<Value, PyRunnerError> {
        block_on(self.call_function(name, args))
    }

    /// Blocking twin of [`call_async_function`](Self::call_async_function).
    pub fn call_async_function_sync(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        block_on(self.call_async_function(name, args))
    }

    /// Blocking twin of [`set_venv`](Self::set_venv).
    pub fn set_venv_sync(&self, dir: impl AsRef<Path>) -> Result<(), PyRunnerError> {
        block_on(self.set_venv(dir))
    }

    /// Blocking twin of [`stop`](Self::stop).
    pub fn stop_sync(&self) -> Result<(), PyRunnerError> {
        block_on(self.stop())
    }
}
