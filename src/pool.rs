//! [`PyPool`]: many child interpreters behind one handle, for Python that
//! runs in parallel.
//!
//! Each worker is a subprocess runner of its own (its own child, supervisor
//! thread and fault handling). The pool adds what makes them one: calls go
//! to the least loaded worker, `run` reaches every worker and is replayed on
//! children started later, calls a lost child never started move to other
//! workers, and workers can be recycled after a number of calls.

use std::future::{poll_fn, Future};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{watch, Semaphore, TryAcquireError};

use crate::builder::PyRunnerBuilder;
use crate::command::{block_on, Job, Reply, Request};
use crate::error::PyRunnerError;
use crate::runner::PyRunner;
use crate::subprocess::{PoolHooks, ReplayLog, RunState, WorkerState, Zygote};

/// Calls admitted per worker at once, queued ones included; past that,
/// callers wait their turn (first come, first served) instead of piling up.
const ADMITTED_PER_WORKER: usize = 64;

/// A `map` keeps about this much of its work queued on the workers, going
/// by how fast its calls have finished so far: trivial calls go out in large
/// batches (at most as many per worker as are admitted), while slow ones
/// queue only a few, so callers that come during a long map wait behind
/// little of it. (10 000 trivial calls on 2 workers, when it came: about
/// 25k–50k items/s with a fixed 16 in flight per worker, about 60k–75k this
/// way; the README has the current figures.)
const MAP_QUEUED: Duration = Duration::from_millis(10);

/// The fewest calls of a `map` in flight per worker: one running, one next.
const MAP_WINDOW_MIN: usize = 2;

/// How often a retired worker is checked for calls still running on it.
const RETIRE_POLL: Duration = Duration::from_millis(2);

/// One worker as [`PyPool::stats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// The process id of the worker's current child.
    pub pid: u32,
    /// Calls this worker has answered (across the children it has had).
    pub calls: u64,
    /// Children started after its first: after a death, a timeout, a broken
    /// stream, or a recycle (see [`PyPoolBuilder::max_calls_per_worker`]).
    pub restarts: u64,
    /// Whether a call is running or waiting on it now.
    pub busy: bool,
}

/// Configures and starts a [`PyPool`]. Made by [`PyPool::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct PyPoolBuilder {
    /// What every worker's runner is built from.
    runner: PyRunnerBuilder,
    workers: usize,
    max_calls: Option<u64>,
}

impl PyPoolBuilder {
    /// How many workers (child processes); default: the number of cores.
    /// Zero is taken as one.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count.max(1);
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
        let start_timeout = self.runner.config().start_timeout;
        let deadline = Instant::now() + start_timeout;
        let pool: Arc<OnceLock<Weak<Inner>>> = Arc::default();
        let log = Arc::new(ReplayLog::default());
        // The workers' children are forks of one started interpreter, when
        // it starts; else each starts its own (see `subprocess::Zygote`).
        let zygote = match crate::subprocess::start_zygote(self.runner.config()) {
            Ok(zygote) => Some(zygote),
            // It had all the time there is: the workers would have none.
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => None,
        };
        let starts: Vec<_> = (0..self.workers)
            .map(|_| {
                let runner = self.runner.clone().first_start_by(deadline);
                let (log, pool, zygote) = (log.clone(), pool.clone(), zygote.clone());
                thread::Builder::new()
                    .name("async_py-pool-start".into())
                    .spawn(move || Worker::start(runner, log, pool, zygote))
            })
            .collect();
        let mut workers = Vec::with_capacity(starts.len());
        let mut failure = None;
        for start in starts {
            let started = match start {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(PyRunnerError::Startup("a worker's start panicked".into()))
                }),
                Err(err) => Err(PyRunnerError::Startup(format!(
                    "could not start a thread to start a worker: {err}"
                ))),
            };
            match started {
                Ok(worker) => workers.push(worker),
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
            for worker in workers {
                let _ = worker.runner.stop_sync();
            }
            return Err(err);
        }
        let count = workers.len();
        let inner = Arc::new(Inner {
            runner: self.runner,
            zygote: Mutex::new(zygote),
            log,
            slots: workers.into_iter().map(Slot::new).collect(),
            admission: Semaphore::new(count * ADMITTED_PER_WORKER),
            broadcasts: Mutex::new(()),
            warm: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            max_calls: self.max_calls,
            pool,
            stopped: AtomicBool::new(false),
            retired: Mutex::default(),
            recycles: Arc::new(watch::Sender::new(0)),
        });
        let _ = inner.pool.set(Arc::downgrade(&inner));
        Ok(PyPool { inner })
    }
}

/// A pool of child interpreters that run Python in parallel.
///
/// Cheap to clone, `Send + Sync`. `run` reaches every worker; `eval`,
/// `call_function` and `call_async_function` go to one worker, an idle one
/// if there is one, else the least loaded; `map` spreads many calls out.
/// Unlike a [`PyRunner`], commands from different callers are not ordered
/// with respect to each other: they run on different workers at once.
/// Every command has a blocking `_sync` twin.
///
/// ```no_run
/// # fn main() -> Result<(), async_py::PyRunnerError> {
/// let pool = async_py::PyPool::builder().workers(2).build()?;
/// pool.run_sync("def square(x):\n    return x * x")?;
/// let squares = pool.map_sync("square", (0..4).map(|x| vec![x.into()]).collect());
/// assert_eq!(squares.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [0, 1, 4, 9]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PyPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyPool")
            .field("workers", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    runner: PyRunnerBuilder,
    /// Forks the workers' children, if it started; taken (and ended) by `stop`.
    zygote: Mutex<Option<Arc<Zygote>>>,
    log: Arc<ReplayLog>,
    slots: Vec<Slot>,
    admission: Semaphore,
    /// Held while a run is logged and queued on every worker, so runs reach
    /// each worker in log order; never held across an await or while a
    /// child works, so a `_sync` twin blocking a runtime's thread never waits
    /// for a task that thread would run.
    broadcasts: Mutex<()>,
    /// The worker that answered last, where the search for an idle worker
    /// starts: its child has just worked and spins a moment for the next
    /// request, while an idle sibling's child sleeps and takes a wake-up
    /// (tens of microseconds here) to answer. With none idle, ties between
    /// the least loaded go to each in turn (`next`).
    warm: AtomicUsize,
    /// Where the search for the least loaded worker starts, in turn.
    next: AtomicUsize,
    max_calls: Option<u64>,
    /// This pool, for the workers' hand-back hooks.
    pool: Arc<OnceLock<Weak<Inner>>>,
    /// `stop` was called: no more runs, no more recycles.
    stopped: AtomicBool,
    /// Workers swapped out by a recycle that still finish their calls.
    retired: Mutex<Vec<Arc<Worker>>>,
    /// Recycles under way (their threads), which `stop` waits for: one may
    /// be starting a replacement that no list holds yet.
    recycles: Arc<watch::Sender<usize>>,
}

/// A place in the pool, held by one worker at a time (a recycled worker's
/// replacement takes its place).
struct Slot {
    worker: RwLock<Arc<Worker>>,
    /// A recycle's replacement catching up on the pool's runs: runs made
    /// meanwhile reach it too. Set and cleared under the broadcast lock.
    joining: Mutex<Option<Joining>>,
    /// Calls answered by the workers that held this place.
    calls: AtomicU64,
    /// Restarts of the workers that held this place before, and their recycles.
    past_restarts: AtomicU64,
}

struct Worker {
    runner: PyRunner,
    state: Arc<WorkerState>,
    /// Calls sent to it and not yet answered.
    load: AtomicUsize,
    /// Calls it answered, for recycling.
    calls: AtomicU64,
    /// Its replacement is being started; it takes no new calls once that
    /// replacement is in place.
    retiring: AtomicBool,
}

impl Worker {
    fn start(
        runner: PyRunnerBuilder,
        log: Arc<ReplayLog>,
        pool: Arc<OnceLock<Weak<Inner>>>,
        zygote: Option<Arc<Zygote>>,
    ) -> Result<Worker, PyRunnerError> {
        let state = Arc::new(WorkerState::default());
        let own = state.clone();
        let runner = runner
            .pool_hooks(PoolHooks {
                log,
                state: state.clone(),
                hand_back: Arc::new(move |job| match pool.get().and_then(Weak::upgrade) {
                    Some(inner) => inner.place_elsewhere(job, &own),
                    None => Some(job),
                }),
                zygote,
            })
            .build()?;
        Ok(Worker {
            runner,
            state,
            load: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            retiring: AtomicBool::new(false),
        })
    }

    /// Keeps a worker whose replacement could not be made: it serves on,
    /// and the next try comes after another `max_calls_per_worker` calls
    /// rather than with the next call.
    fn keep(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.retiring.store(false, Ordering::SeqCst);
    }

    /// How busy it looks to the dispatcher: a worker whose child is being
    /// replaced counts as full.
    fn weight(&self) -> usize {
        let load = self.load.load(Ordering::SeqCst);
        if self.state.restarting.load(Ordering::SeqCst) {
            load + ADMITTED_PER_WORKER
        } else {
            load
        }
    }
}

impl Slot {
    fn new(worker: Worker) -> Slot {
        Slot {
            worker: RwLock::new(Arc::new(worker)),
            joining: Mutex::new(None),
            calls: AtomicU64::new(0),
            past_restarts: AtomicU64::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Arc<Worker>> {
        self.worker.read().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Arc<Worker> {
        self.read().clone()
    }

    fn joining(&self) -> std::sync::MutexGuard<'_, Option<Joining>> {
        self.joining.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a recycle as under way until its thread is done with it.
struct Recycling(Arc<watch::Sender<usize>>);

impl Recycling {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|under_way| *under_way += 1);
        Recycling(count.clone())
    }
}

impl Drop for Recycling {
    fn drop(&mut self) {
        self.0.send_modify(|under_way| *under_way -= 1);
    }
}

/// A recycle's replacement while it catches up, and whether it will take
/// over: `Some(true)` once swapped in, `Some(false)` once given up.
#[derive(Clone)]
struct Joining {
    worker: Arc<Worker>,
    verdict: watch::Receiver<Option<bool>>,
}

/// The recycle's side of [`Joining::verdict`]: given up unless said
/// otherwise, on every way out.
struct Verdict(watch::Sender<Option<bool>>);

impl Verdict {
    fn give(&self, takes_over: bool) {
        self.0.send_replace(Some(takes_over));
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        if self.0.borrow().is_none() {
            self.give(false);
        }
    }
}

/// Counts a call against its worker until it is answered or dropped.
struct Load(Arc<Worker>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Inner {
    /// Ends every worker's child at once: each worker's handle, dropped
    /// after this, waits for its own child's end and output, and the
    /// children then end side by side rather than one after another.
    fn drop(&mut self) {
        let end = |worker: &Worker| drop(worker.runner.queue().close());
        for slot in &self.slots {
            end(&slot.worker.read().unwrap_or_else(|p| p.into_inner()));
            if let Some(joining) = slot.joining().as_ref() {
                end(&joining.worker);
            }
        }
        for worker in self.retired().iter() {
            end(worker);
        }
    }
}

impl Inner {
    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Worker>>> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broadcasts(&self) -> std::sync::MutexGuard<'_, ()> {
        self.broadcasts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a replacement that raised in logged run `run` must not serve:
    /// the run ran on every worker without raising. A run still in flight
    /// is waited for; one whose caller gave up on it never gets an outcome,
    /// and does not count.
    fn requires(&self, run: usize) -> bool {
        loop {
            match self.log.state(run) {
                RunState::Settled => return true,
                RunState::Blank | RunState::GivenUp => return false,
                RunState::Awaited if self.stopped.load(Ordering::SeqCst) => return false,
                RunState::Awaited => thread::sleep(RETIRE_POLL),
            }
        }
    }

    /// The worker for the next call, its load already counted: the first
    /// idle one from the warm worker on, else the least loaded.
    fn pick(&self) -> (usize, Load) {
        let count = self.slots.len();
        let weight = |index: usize| self.slots[index].read().weight();
        let warm = self.warm.load(Ordering::Relaxed) % count;
        let idle = (0..count)
            .map(|step| (warm + step) % count)
            .find(|&index| weight(index) == 0);
        let index = idle.unwrap_or_else(|| {
            // None idle: the least loaded, ties going to each in turn.
            let first = self.next.fetch_add(1, Ordering::Relaxed) % count;
            (0..count)
                .map(|step| (first + step) % count)
                .min_by_key(|&index| weight(index))
                .unwrap_or(first)
        });
        // Counted under the read lock, so a recycle that swaps the worker
        // out (under the write lock) sees every call sent to the old one.
        let guard = self.slots[index].read();
        guard.load.fetch_add(1, Ordering::SeqCst);
        (index, Load(guard.clone()))
    }

    /// A call that `from`'s lost child never started goes to the least
    /// loaded other worker; `Some` gives it back if none takes it.
    fn place_elsewhere(&self, job: Job, from: &Arc<WorkerState>) -> Option<Job> {
        let mut others: Vec<Arc<Worker>> = self
            .slots
            .iter()
            .map(Slot::current)
            .filter(|worker| !Arc::ptr_eq(&worker.state, from))
            .filter(|worker| !worker.state.restarting.load(Ordering::SeqCst))
            .filter(|worker| !worker.retiring.load(Ordering::SeqCst))
            .collect();
        others.sort_by_key(|worker| worker.weight());
        let mut job = job;
        for worker in others {
            match worker.runner.queue().push(job) {
                Ok(()) => return None,
                Err(refused) => job = refused,
            }
        }
        Some(job)
    }

    /// Counts an answered call; past the limit, starts the worker's recycle.
    fn answered(self: &Arc<Self>, index: usize, worker: &Arc<Worker>) {
        self.warm.store(index, Ordering::Relaxed);
        self.slots[index].calls.fetch_add(1, Ordering::SeqCst);
        let calls = worker.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let Some(limit) = self.max_calls else {
            return;
        };
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        if calls < limit || worker.retiring.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = Arc::downgrade(self);
        let old = worker.clone();
        let under_way = Recycling::new(&self.recycles);
        let started = thread::Builder::new()
            .name("async_py-pool-recycle".into())
            .spawn(move || {
                let _under_way = under_way;
                recycle(pool, index, old);
            });
        if started.is_err() {
            worker.retiring.store(false, Ordering::SeqCst);
        }
    }
}

/// Starts a replacement for the worker in place `index`, swaps it in once
/// ready and caught up with the pool's runs, then ends the old one after
/// the calls it was given.
fn recycle(pool: Weak<Inner>, index: usize, old: Arc<Worker>) {
    let Some(inner) = pool.upgrade() else {
        return;
    };
    let fresh = Worker::start(
        inner.runner.clone(),
        inner.log.clone(),
        inner.pool.clone(),
        inner
            .zygote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    );
    let fresh = match fresh {
        Ok(fresh) => Arc::new(fresh),
        Err(err) => {
            eprintln!("async_py: could not start a worker to recycle one, keeping the old: {err}");
            old.keep();
            return;
        }
    };
    let slot = &inner.slots[index];
    // Every run logged so far is queued on the fresh worker (those its child
    // ran at its start are answered at once), and it joins its place, so
    // runs made from here on reach it too, with their outcome. No lock is
    // held while its child works: a run waits for none of this.
    let (verdict, told) = watch::channel(None);
    let verdict = Verdict(verdict);
    let shares: Vec<_> = {
        let runs = inner.broadcasts();
        if inner.stopped.load(Ordering::SeqCst) {
            drop(runs);
            let _ = fresh.runner.stop_sync();
            return;
        }
        *slot.joining() = Some(Joining {
            worker: fresh.clone(),
            verdict: told,
        });
        inner
            .log
            .snapshot()
            .into_iter()
            .enumerate()
            .filter_map(|(run, code)| {
                let code = code?;
                let share = fresh
                    .runner
                    .queue_now(Request::Broadcast { code, index: run });
                Some((run, share))
            })
            .collect()
    };
    let mut lacks = None;
    for (run, share) in shares {
        if let Err(err) = block_on(share) {
            if inner.requires(run) {
                lacks = Some((run, err));
                break;
            }
        }
    }
    {
        let runs = inner.broadcasts();
        *slot.joining() = None;
        if inner.stopped.load(Ordering::SeqCst) {
            // `stop` took it from its place and ends it.
            return;
        }
        if let Some((run, err)) = lacks {
            // Retired until it has ended, so a `stop` now waits for it too.
            inner.retired().push(fresh.clone());
            drop(runs);
            verdict.give(false);
            eprintln!(
                "async_py: a worker's replacement raised in the pool's run number {}, \
                 which every worker ran; keeping the old: {err}",
                run + 1
            );
            old.keep();
            let _ = fresh.runner.stop_sync();
            inner
                .retired()
                .retain(|worker| !Arc::ptr_eq(worker, &fresh));
            return;
        }
        verdict.give(true);
        *slot.worker.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        inner.retired().push(old.clone());
        slot.past_restarts.fetch_add(
            old.state.restarts.load(Ordering::SeqCst) + 1,
            Ordering::SeqCst,
        );
    }
    drop(inner);
    while old.load.load(Ordering::SeqCst) > 0 {
        thread::sleep(RETIRE_POLL);
    }
    let _ = old.runner.stop_sync();
    if let Some(inner) = pool.upgrade() {
        inner.retired().retain(|worker| !Arc::ptr_eq(worker, &old));
    }
}

impl PyPool {
    /// Configures a pool: size, interpreter, venv, startup code, limits.
    pub fn builder() -> PyPoolBuilder {
        PyPoolBuilder {
            runner: PyRunner::builder().subprocess(),
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            max_calls: None,
        }
    }

    /// How many workers the pool has.
    pub fn workers(&self) -> usize {
        self.inner.slots.len()
    }

    /// Each worker's pid, calls answered, restarts and whether it is busy.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.inner
            .slots
            .iter()
            .map(|slot| {
                let worker = slot.current();
                WorkerStats {
                    pid: worker.state.pid.load(Ordering::SeqCst),
                    calls: slot.calls.load(Ordering::SeqCst),
                    restarts: slot.past_restarts.load(Ordering::SeqCst)
                        + worker.state.restarts.load(Ordering::SeqCst),
                    busy: worker.load.load(Ordering::SeqCst) > 0,
                }
            })
            .collect()
    }

    /// Runs Python statements on every worker, and on every child started
    /// later (after `startup`), so all hold the same definitions. The first
    /// error from any worker is returned; code that failed anywhere is not
    /// replayed on later children.
    pub async fn run(&self, code: &str) -> Result<(), PyRunnerError> {
        let (index, sends, verdicts, _awaited) = {
            let _runs = self.inner.broadcasts();
            if self.inner.stopped.load(Ordering::SeqCst) {
                return Err(PyRunnerError::Stopped);
            }
            let index = self.inner.log.push(code);
            // Queued on every worker (and every replacement catching up)
            // before the lock is let go: the next run lands behind this one
            // everywhere.
            let mut sends = Vec::new();
            let mut verdicts = Vec::new();
            for slot in &self.inner.slots {
                let joining = slot.joining().clone();
                let targets = std::iter::once((slot.current(), None))
                    .chain(joining.map(|joining| (joining.worker, Some(joining.verdict))));
                for (worker, verdict) in targets {
                    let request = Request::Broadcast {
                        code: code.to_owned(),
                        index,
                    };
                    sends.push(Box::pin(worker.runner.queue_now(request)) as BoxedCall<'_, Reply>);
                    verdicts.push(verdict);
                }
            }
            (index, sends, verdicts, RunAwaited(&self.inner, index))
        };
        let replies = join_in_order(sends, |_| usize::MAX).await;
        let mut failure = None;
        for (reply, verdict) in replies.into_iter().zip(verdicts) {
            let Err(err) = reply else {
                continue;
            };
            if let Some(mut verdict) = verdict {
                // A replacement that raised while it caught up counts only
                // if it takes over: one given up leaves no child behind.
                let takes_over = matches!(
                    verdict.wait_for(Option::is_some).await.as_deref(),
                    Ok(Some(true))
                );
                if !takes_over {
                    continue;
                }
            }
            failure = failure.or(Some(err));
        }
        match failure {
            Some(err) => {
                self.inner.log.blank(index);
                Err(err)
            }
            None => {
                self.inner.log.settle(index);
                Ok(())
            }
        }
    }

    /// Evaluates one expression on one worker.
    pub async fn eval(&self, expr: &str) -> Result<Value, PyRunnerError> {
        self.dispatch(Request::eval(expr), Admission::Wait).await
    }

    /// Calls a function by (dotted) name on one worker.
    pub async fn call_function(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        self.dispatch(Request::call(name, args)?, Admission::Wait)
            .await
    }

    /// Calls a function on one worker and awaits the coroutine it returns
    /// on that worker's event loop.
    pub async fn call_async_function(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        self.dispatch(Request::call_async(name, args)?, Admission::Wait)
            .await
    }

    /// Calls `name` once per argument list, spread over the workers; one
    /// result per input, in input order, each failure in its own slot.
    pub async fn map(&self, name: &str, inputs: Vec<Vec<Value>>) -> Vec<Reply> {
        self.map_admitted(name, inputs, Admission::Wait).await
    }

    async fn map_admitted(
        &self,
        name: &str,
        inputs: Vec<Vec<Value>>,
        admission: Admission,
    ) -> Vec<Reply> {
        let calls = inputs.into_iter().map(|args| {
            Box::pin(async move { self.dispatch(Request::call(name, args)?, admission).await })
                as BoxedCall<'_, Reply>
        });
        let workers = self.workers();
        let (least, most) = (workers * MAP_WINDOW_MIN, workers * ADMITTED_PER_WORKER);
        let started = Instant::now();
        join_in_order(calls, |finished| {
            let rate = finished as f64 / started.elapsed().as_secs_f64();
            ((rate * MAP_QUEUED.as_secs_f64()) as usize).clamp(least, most)
        })
        .await
    }

    /// Ends every worker once the calls sent before have been answered.
    /// Later commands give [`PyRunnerError::Stopped`]; stopping again is `Ok`.
    /// A worker's child that does not answer the stop is killed after a
    /// grace, as [`PyRunner::stop`] says.
    pub async fn stop(&self) -> Result<(), PyRunnerError> {
        self.inner.admission.close();
        // Runs queued before are ahead of the stop on every worker; later
        // ones are refused. Retired workers, and replacements still catching
        // up, are stopped too: their children end before `stop` returns.
        let workers: Vec<_> = {
            let _runs = self.inner.broadcasts();
            self.inner.stopped.store(true, Ordering::SeqCst);
            let slots = self.inner.slots.iter();
            let current = slots.clone().map(Slot::current);
            let joining = slots.filter_map(|slot| Some(slot.joining().as_ref()?.worker.clone()));
            let retired = self.inner.retired().clone();
            current.chain(joining).chain(retired).collect()
        };
        let stops = workers.into_iter().map(|worker| {
            Box::pin(async move { worker.runner.stop().await })
                as BoxedCall<'_, Result<(), PyRunnerError>>
        });
        let stopped = join_in_order(stops, |_| usize::MAX)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(drop);
        // A recycle under way sees `stopped` and ends its replacement,
        // which may not have been in any list above.
        let _ = self
            .inner
            .recycles
            .subscribe()
            .wait_for(|under_way| *under_way == 0)
            .await;
        // Its workers are reaped: the zygote ends too, on a thread of its
        // own, as ending it waits for its exit.
        let zygote = self
            .inner
            .zygote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(zygote) = zygote {
            let (ended, was_ended) = tokio::sync::oneshot::channel();
            let ending = thread::Builder::new()
                .name("async_py-zygote-end".into())
                .spawn(move || {
                    zygote.end();
                    let _ = ended.send(());
                });
            if ending.is_ok() {
                let _ = was_ended.await;
            }
        }
        stopped
    }

    async fn dispatch(&self, request: Request, admission: Admission) -> Reply {
        let _admitted = match admission {
            Admission::Wait => match self.inner.admission.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return Err(PyRunnerError::Stopped),
            },
            Admission::Skip => match self.inner.admission.try_acquire() {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::NoPermits) => None,
                Err(TryAcquireError::Closed) => return Err(PyRunnerError::Stopped),
            },
        };
        let (index, load) = self.inner.pick();
        let reply = load.0.runner.send(request).await;
        if !matches!(reply, Err(PyRunnerError::Stopped)) {
            self.inner.answered(index, &load.0);
        }
        reply
    }

    /// Blocking twin of [`run`](Self::run).
    pub fn run_sync(&self, code: &str) -> Result<(), PyRunnerError> {
        block_on_pool(self.run(code))
    }

    /// Blocking twin of [`eval`](Self::eval).
    pub fn eval_sync(&self, expr: &str) -> Result<Value, PyRunnerError> {
        block_on_pool(self.dispatch(Request::eval(expr), Admission::Skip))
    }

    /// Blocking twin of [`call_function`](Self::call_function).
    pub fn call_function_sync(&self, name: &str, args: Vec<Value>) -> Result<Value, PyRunnerError> {
        block_on_pool(async {
            self.dispatch(Request::call(name, args)?, Admission::Skip)
                .await
        })
    }

    /// Blocking twin of [`call_async_function`](Self::call_async_function).
    pub fn call_async_function_sync(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        block_on_pool(async {
            self.dispatch(Request::call_async(name, args)?, Admission::Skip)
                .await
        })
    }

    /// Blocking twin of [`map`](Self::map).
    pub fn map_sync(&self, name: &str, inputs: Vec<Vec<Value>>) -> Vec<Reply> {
        block_on_pool(self.map_admitted(name, inputs, Admission::Skip))
    }

    /// Blocking twin of [`stop`](Self::stop).
    pub fn stop_sync(&self) -> Result<(), PyRunnerError> {
        block_on_pool(self.stop())
    }
}

/// How a call gets its place among the calls admitted to the pool.
#[derive(Clone, Copy)]
enum Admission {
    /// Waits its turn for a place.
    Wait,
    /// Takes a place if one is free, else goes without: for the `_sync`
    /// twins. A twin called inside a tokio task blocks that task's thread,
    /// and the places may all be held by other tasks' calls that only that
    /// thread would poll again to give them back. Each blocked thread adds
    /// at most one call (or one `map`'s window) past the bound.
    Skip,
}

/// Marks a logged run given up if its caller drops it before its outcome
/// is recorded.
struct RunAwaited<'a>(&'a Inner, usize);

impl Drop for RunAwaited<'_> {
    fn drop(&mut self) {
        self.0.log.give_up(self.1);
    }
}

/// [`block_on`] for the pool's twins. The pool's futures may wait on tokio's
/// primitives (the zygote's end in `stop`), which count their polls against
/// the budget of the tokio task they run in and, once it is spent, ask to be
/// polled later; a twin called inside a task never hands back to the
/// runtime to refill it, so without this it would spin there.
fn block_on_pool<F: Future>(future: F) -> F::Output {
    block_on(tokio::task::unconstrained(future))
}

type BoxedCall<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs the futures with at most `window(finished so far)` in flight; their
/// outputs in input order.
///
/// Each future gets a waker of its own, and a poll of the whole polls only
/// the futures that were woken (and those just started). Polling every one
/// on every wake-up would make each pending call of a `map` take its
/// worker's driver's seat and spin for its reply whenever any other call
/// finished, and wake that worker's thread when it gave up: on two cores
/// those threads ran on the cores of the children doing the work.
async fn join_in_order<'a, T>(
    futures: impl IntoIterator<Item = BoxedCall<'a, T>>,
    mut window: impl FnMut(usize) -> usize,
) -> Vec<T> {
    let mut waiting = futures.into_iter().peekable();
    let woken = Arc::new(Woken::default());
    // By input index: the future and its waker while it runs; its length
    // is how many have started. A slot per input, as `done` and the inputs
    // have: a lookup by index costs less than a hash per poll, which a map
    // of trivial calls felt.
    let mut running: Vec<Option<Running<T>>> = Vec::new();
    let mut done: Vec<Option<T>> = Vec::new();
    let mut finished = 0;
    let mut to_poll = Vec::new();
    poll_fn(|cx| {
        woken.set_task(cx.waker());
        // Woken since the last poll; futures woken during this poll (one
        // that parked its worker's seat to let other tasks run first asks
        // for another poll at once) wait for the next, unless one finishes.
        woken.take_into(&mut to_poll);
        loop {
            let limit = window(finished);
            while running.len() - finished < limit {
                let Some(future) = waiting.next() else {
                    break;
                };
                let index = running.len();
                let note = Arc::new(FutureWaker {
                    index,
                    queued: AtomicBool::new(false),
                    woken: woken.clone(),
                });
                let waker = Waker::from(note.clone());
                running.push(Some(Running {
                    future,
                    note,
                    waker,
                }));
                done.push(None);
                to_poll.push(index);
            }
            let before = finished;
            for index in to_poll.drain(..) {
                let Some(run) = &mut running[index] else {
                    continue; // finished, and woken again since
                };
                // Cleared first, so that a wake-up during the poll counts.
                run.note.queued.swap(false, Ordering::AcqRel);
                let mut cx = Context::from_waker(&run.waker);
                if let Poll::Ready(output) = run.future.as_mut().poll(&mut cx) {
                    done[index] = Some(output);
                    running[index] = None;
                    finished += 1;
                }
            }
            if finished == running.len() && waiting.peek().is_none() {
                return Poll::Ready(());
            }
            if finished == before {
                return Poll::Pending;
            }
            woken.take_into(&mut to_poll);
        }
    })
    .await;
    done.into_iter()
        .map(|output| output.expect("every future ran to the end"))
        .collect()
}

/// A future of [`join_in_order`] that has yet to finish, with its waker.
struct Running<'a, T> {
    future: BoxedCall<'a, T>,
    note: Arc<FutureWaker>,
    waker: Waker,
}

/// The futures of one [`join_in_order`] that asked to be polled, and the
/// task that polls them.
#[derive(Default)]
struct Woken {
    indices: Mutex<Vec<usize>>,
    task: Mutex<Option<Waker>>,
}

impl Woken {
    fn indices(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.indices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_task(&self, waker: &Waker) {
        let mut task = self.task();
        if !task.as_ref().is_some_and(|task| task.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    /// Moves the indices woken so far to `into`; both keep their buffers.
    fn take_into(&self, into: &mut Vec<usize>) {
        into.append(&mut self.indices());
    }
}

/// The waker of one future in a [`join_in_order`]: notes its index, once
/// until it is polled, and wakes the task.
struct FutureWaker {
    index: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for FutureWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.woken.indices().push(self.index);
        }
        // Woken outside the lock: an executor may poll the task at once.
        let task = self.woken.task().clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that stays pending until its gate opens, counting its polls.
    /// With `bounce`, its first poll wakes itself and returns pending, as a
    /// call that parks its worker's seat does.
    struct Gate {
        open: AtomicBool,
        polls: AtomicUsize,
        waker: Mutex<Option<Waker>>,
        bounce: bool,
    }

    impl Gate {
        fn new(bounce: bool) -> Arc<Gate> {
            Arc::new(Gate {
                open: AtomicBool::new(false),
                polls: AtomicUsize::new(0),
                waker: Mutex::new(None),
                bounce,
            })
        }

        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }

        fn wait(self: Arc<Self>, output: usize) -> BoxedCall<'static, usize> {
            Box::pin(poll_fn(move |cx| {
                let polls = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
                if self.bounce && polls == 1 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                // Checked after the waker is stored: an opening in between
                // finds it, or is seen here.
                if self.open.load(Ordering::SeqCst) {
                    return Poll::Ready(output);
                }
                Poll::Pending
            }))
        }
    }

    /// Runs the join of the gates' futures on a current-thread runtime while
    /// `open` opens them; a join that never ends fails after 10 s.
    fn join_gates(
        gates: &[Arc<Gate>],
        window: usize,
        open: impl FnOnce(Vec<Arc<Gate>>) -> tokio::task::JoinHandle<()>,
    ) -> Vec<usize> {
        let futures: Vec<_> = gates
            .iter()
            .enumerate()
            .map(|(i, gate)| gate.clone().wait(i * 10))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let opener = open(gates.to_vec());
            let joined = join_in_order(futures, |_| window);
            let outputs = tokio::time::timeout(Duration::from_secs(10), joined)
                .await
                .expect("the join ends once every gate is open");
            opener.await.unwrap();
            outputs
        })
    }

    #[test]
    fn only_the_futures_woken_are_polled_again() {
        let gates: Vec<_> = (0..8).map(|_| Gate::new(false)).collect();
        let outputs = join_gates(&gates, usize::MAX, |gates| {
            tokio::spawn(async move {
                // Out of order, one per turn of the runtime.
                for index in [3, 0, 7, 1, 6, 2, 5, 4] {
                    tokio::task::yield_now().await;
                    gates[index].open();
                }
            })
        });
        assert_eq!(outputs, (0..8).map(|i| i * 10).collect::<Vec<_>>());
        for (index, gate) in gates.iter().enumerate() {
            // Once when started, once after its own wake-up.
            assert_eq!(gate.polls.load(Ordering::SeqCst), 2, "future {index}");
        }
    }

    #[test]
    fn no_more_than_the_window_runs_at_once() {
        let gates: Vec<_> = (0..6).map(|_| Gate::new(false)).collect();
        let most = Arc::new(AtomicUsize::new(0));
        let seen = most.clone();
        let outputs = join_gates(&gates, 2, move |gates| {
            tokio::spawn(async move {
                for index in [1, 0, 3, 2, 5, 4] {
                    // Waits for the join to start it.
                    while gates[index].polls.load(Ordering::SeqCst) == 0 {
                        tokio::task::yield_now().await;
                    }
                    let started = gates.iter().filter(|g| g.polls.load(Ordering::SeqCst) > 0);
                    let open = gates.iter().filter(|g| g.open.load(Ordering::SeqCst));
                    seen.fetch_max(started.count() - open.count(), Ordering::SeqCst);
                    gates[index].open();
                }
            })
        });
        assert_eq!(outputs, vec![0, 10, 20, 30, 40, 50]);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn futures_woken_from_other_threads_or_by_themselves_all_finish() {
        let gates: Vec<_> = (0..64).map(|i| Gate::new(i % 2 == 0)).collect();
        let outputs = join_gates(&gates, 16, |gates| {
            tokio::task::spawn_blocking(move || {
                // From another thread, in reverse: most wake-ups come while
                // the join runs or sleeps.
                for _ in 0..1000 {
                    for gate in gates.iter().rev() {
                        if gate.polls.load(Ordering::SeqCst) > 0 {
                            gate.open();
                        }
                    }
                    if gates.iter().all(|g| g.open.load(Ordering::SeqCst)) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            })
        });
        assert_eq!(outputs, (0..64).map(|i| i * 10).collect::<Vec<_>>());
    }
}
