//! [`PyPoolBuilder`]: a pool's size and what its workers start from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use super::dispatch::ADMITTED_PER_WORKER;
use super::replay::ReplayLog;
use super::worker::{Slot, Worker};
use super::{Inner, PyPool};
use crate::builder::PyRunnerBuilder;
use crate::error::PyRunnerError;

/// Configures and starts a [`PyPool`]. Made by [`PyPool::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct PyPoolBuilder {
    /// What every worker's runner is built from.
    pub(super) runner: PyRunnerBuilder,
    pub(super) workers: usize,
    pub(super) max_calls: Option<u64>,
    pub(super) max_memory: Option<u64>,
    /// Workers of `add_workers`, one launcher prefix each.
    pub(super) added: Vec<Vec<std::ffi::OsString>>,
}

impl PyPoolBuilder {
    /// How many workers (child processes) this builder's own settings start;
    /// default: the number of cores. Zero is taken as one, unless
    /// [`add_workers`](Self::add_workers) gives the pool others.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// Run exactly this interpreter in every worker, as given (see
    /// [`PyRunnerBuilder::python`]).
    pub fn python(mut self, path: impl Into<PathBuf>) -> Self {
        self.runner = self.runner.python(path);
        self
    }

    /// Run the venv's own interpreter in every worker.
    pub fn venv(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runner = self.runner.venv(dir);
        self
    }

    /// Code every child runs first, before the pool's runs are replayed.
    /// If it raises, `build` fails with [`PyRunnerError::Startup`].
    pub fn startup(mut self, code: impl Into<String>) -> Self {
        self.runner = self.runner.startup(code);
        self
    }

    /// A limit for every command, counted from the moment it starts to run
    /// on its worker. A call past it is stopped, that worker's child is
    /// replaced, and the other workers go on.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.runner = self.runner.timeout(limit);
        self
    }

    /// Retire a worker after it answered this many calls. Its replacement
    /// is started first and takes over once ready, so no call waits for a
    /// start; the old child finishes what it was given, then ends. A
    /// replacement that fails to start, or to replay the pool's runs, is
    /// given up: the old worker serves on, and the next try comes after as
    /// many calls again.
    pub fn max_calls_per_worker(mut self, calls: u64) -> Self {
        self.max_calls = Some(calls.max(1));
        self
    }

    /// The most memory each child may take, in bytes; an allocation past
    /// it raises `MemoryError` in Python and the child serves on (see
    /// [`PyRunnerBuilder::memory_limit`]). Every child has it: those the
    /// pool's zygote forks, the replacement of a lost child, and a
    /// recycle's.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.runner = self.runner.memory_limit(bytes);
        self
    }

    /// Starts every worker's child through `prefix` (see
    /// [`PyRunnerBuilder::launcher`]); workers added with
    /// [`add_workers`](Self::add_workers) keep their own.
    pub fn launcher<S: Into<std::ffi::OsString>>(
        mut self,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        self.runner = self.runner.launcher(prefix);
        self
    }

    /// How often a launched worker's quiet link beats (see
    /// [`PyRunnerBuilder::heartbeat`]).
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.runner = self.runner.heartbeat(interval);
        self
    }

    /// Adds `n` workers whose children are started through `prefix` (see
    /// [`PyRunnerBuilder::launcher`]), beside the [`workers`](Self::workers)
    /// started as the rest of the builder says: one pool of local and
    /// remote workers. Dispatch, `run`'s replay, recycling and `map` treat
    /// them all alike; each replacement is started through its worker's
    /// prefix. May be given more than once.
    pub fn add_workers<S: Into<std::ffi::OsString>>(
        mut self,
        n: usize,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        let prefix: Vec<std::ffi::OsString> = prefix.into_iter().map(Into::into).collect();
        self.added.extend(std::iter::repeat_n(prefix, n));
        self
    }

    /// Runs every child in a [`Sandbox`](crate::Sandbox) (see
    /// [`PyRunnerBuilder::sandbox`]): those the pool's zygote forks (the
    /// zygote itself runs no user code), replacements and recycles, each
    /// with a scratch folder and a process bound of its own.
    pub fn sandbox(mut self, sandbox: crate::Sandbox) -> Self {
        self.runner = self.runner.sandbox(sandbox);
        self
    }

    /// Recycle a worker found holding more than this much resident memory
    /// (in bytes) after a call, as [`max_calls_per_worker`] recycles: its
    /// replacement is started first and takes over once ready, the old
    /// child finishes what it was given, and [`PyPool::stats`] counts it
    /// in `restarts`. No call fails for it.
    ///
    /// A worker is looked at after a call it answered, at most once every
    /// few milliseconds, so a worker may run over until its next call, and
    /// a burst of calls may go on a while past the limit. It measures the
    /// resident memory (Linux's `/proc/<pid>/statm`) of the worker process
    /// alone, not of the processes it started; without `/proc` it never
    /// recycles. To stop an allocation itself, see
    /// [`memory_limit`](Self::memory_limit).
    ///
    /// [`max_calls_per_worker`]: Self::max_calls_per_worker
    /// [`PyPool::stats`]: super::PyPool::stats
    pub fn max_memory_per_worker(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// Set an environment variable for every child.
    pub fn env(
        mut self,
        key: impl Into<std::ffi::OsString>,
        value: impl Into<std::ffi::OsString>,
    ) -> Self {
        self.runner = self.runner.env(key, value);
        self
    }

    /// Start the children with no inherited environment.
    pub fn env_clear(mut self) -> Self {
        self.runner = self.runner.env_clear();
        self
    }

    /// The children's working folder.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runner = self.runner.current_dir(dir);
        self
    }

    /// Hands every line a worker's Python writes outside captured calls to
    /// `f` (see [`PyRunnerBuilder::on_output`]).
    pub fn on_output(mut self, f: impl Fn(crate::OutputLine) + Send + Sync + 'static) -> Self {
        self.runner = self.runner.on_output(f);
        self
    }

    /// Gives every worker's Python a sync Rust function, replacements
    /// included (see [`PyRunnerBuilder::host_function`]). `f` is given the
    /// runner of the worker that called.
    pub fn host_function(
        mut self,
        name: impl Into<String>,
        f: impl Fn(crate::HostCall) -> Result<crate::Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.runner = self.runner.host_function(name, f);
        self
    }

    /// Gives every worker's Python an async Rust function (see
    /// [`PyRunnerBuilder::host_async_function`]).
    pub fn host_async_function<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(crate::HostCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<crate::Value, String>> + Send + 'static,
    {
        self.runner = self.runner.host_async_function(name, f);
        self
    }

    /// How long starting the pool may take until every worker's child has
    /// said hello (default 30 s): one limit for the whole of `build`, and
    /// for each fresh child after it (see
    /// [`PyRunnerBuilder::start_timeout`]).
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.runner = self.runner.start_timeout(limit);
        self
    }

    /// The largest frame accepted from a child, in bytes (default 64 MiB).
    pub fn max_frame_length(mut self, bytes: usize) -> Self {
        self.runner = self.runner.max_frame_length(bytes);
        self
    }

    /// Starts every worker at once and waits until all are ready; the first
    /// failure is returned (and the workers already started are ended).
    /// Every child must have said hello within the start timeout of the
    /// call (see [`start_timeout`](Self::start_timeout)). Synchronous:
    /// needs no tokio runtime.
    pub fn build(self) -> Result<PyPool, PyRunnerError> {
        self.runner.config().check()?;
        for prefix in &self.added {
            let mut config = self.runner.config().clone();
            config.launcher = Some(prefix.clone());
            config.check()?;
        }
        let start_timeout = self.runner.config().start_timeout;
        let deadline = Instant::now() + start_timeout;
        let pool: Arc<OnceLock<Weak<Inner>>> = Arc::default();
        let log = Arc::new(ReplayLog::default());
        // The workers' children are forks of one started interpreter, when
        // it starts; else each starts its own (see `subprocess::Zygote`).
        // Not for a launcher's workers: a fork is local.
        let local = if self.added.is_empty() {
            self.workers.max(1)
        } else {
            self.workers
        };
        let zygote = match self.runner.config().launcher {
            Some(_) => None,
            None if local == 0 => None,
            None => match crate::subprocess::start_zygote(self.runner.config()) {
                Ok(zygote) => Some(zygote),
                // It had all the time there is: the workers would have none.
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => None,
            },
        };
        let launchers: Vec<Option<Vec<std::ffi::OsString>>> = std::iter::repeat_n(None, local)
            .chain(self.added.iter().cloned().map(Some))
            .collect();
        let starts: Vec<_> = launchers
            .iter()
            .map(|launcher| {
                let mut config = self.runner.config().clone();
                let zygote = match launcher {
                    Some(prefix) => {
                        config.launcher = Some(prefix.clone());
                        None
                    }
                    None => zygote.clone(),
                };
                let (log, pool) = (log.clone(), pool.clone());
                thread::Builder::new()
                    .name("async_py-pool-start".into())
                    .spawn(move || Worker::start(&config, log, pool, zygote, Some(deadline)))
            })
            .collect();
        let mut workers = Vec::with_capacity(starts.len());
        let mut failure = None;
        for (start, launcher) in starts.into_iter().zip(launchers) {
            let started = match start {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(PyRunnerError::Startup("a worker's start panicked".into()))
                }),
                Err(err) => Err(PyRunnerError::Startup(format!(
                    "could not start a thread to start a worker: {err}"
                ))),
            };
            match started {
                Ok(worker) => workers.push((worker, launcher)),
                // A worker's own limit was what was left of the pool's.
                Err(PyRunnerError::Startup(why)) if Instant::now() >= deadline => {
                    failure = failure.or(Some(PyRunnerError::Startup(format!(
                        "the pool's workers did not start within its start timeout \
                         of {start_timeout:?}: {why}"
                    ))))
                }
                Err(err) => failure = failure.or(Some(err)),
            }
        }
        if let Some(err) = failure {
            for (worker, _) in workers {
                let _ = worker.runner.stop_sync();
            }
            return Err(err);
        }
        let count = workers.len();
        let inner = Arc::new(Inner {
            runner: self.runner,
            zygote: Mutex::new(zygote),
            log,
            slots: workers
                .into_iter()
                .map(|(worker, launcher)| Slot::new(worker, launcher))
                .collect(),
            admission: Semaphore::new(count * ADMITTED_PER_WORKER),
            broadcasts: Mutex::new(()),
            warm: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            max_calls: self.max_calls,
            max_memory: self.max_memory,
            pool,
            stopped: AtomicBool::new(false),
            retired: Mutex::default(),
            recycles: Arc::new(watch::Sender::new(0)),
        });
        let _ = inner.pool.set(Arc::downgrade(&inner));
        Ok(PyPool { inner })
    }
}
